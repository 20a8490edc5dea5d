"""Tests of tekton."""
