"""Tests of bundle."""
