"""Tests of trainer/fit/."""
