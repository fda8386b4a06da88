"""Generators that write demo inputs in the real file formats."""
