"""Silkfire."""
