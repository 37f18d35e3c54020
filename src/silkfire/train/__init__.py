"""Silkfire: train."""
