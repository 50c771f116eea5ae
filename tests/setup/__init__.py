"""Tests of the setup steps (scripts/) and of train and publish as steps."""
