"""Silkfire: models."""
