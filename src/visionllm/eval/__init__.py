"""Metrics through the standard tools, and evaluation runners."""
