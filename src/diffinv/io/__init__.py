"""Readers and writers of the real data formats, and the zarr store helpers."""
