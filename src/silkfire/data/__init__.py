"""Data sets as published: readers of the released files (``published``)."""
