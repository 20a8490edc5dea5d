"""Tests of wrapper."""
