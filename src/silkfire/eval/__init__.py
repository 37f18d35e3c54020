"""Silkfire: eval."""
