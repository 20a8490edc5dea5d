"""Tests of inject."""
