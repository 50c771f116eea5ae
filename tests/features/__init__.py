"""Tests of trainer/features/."""
