"""Tests of trainer/diagnostics/."""
