"""Silkfire: tracking."""
