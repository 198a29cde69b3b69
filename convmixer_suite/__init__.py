"""Shared code behind the convmixer_*.py scripts and test/ wrappers."""
