"""Silkfire: quality."""
