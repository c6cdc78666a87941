"""Whole-slide images: read window by window, find the tissue, segment its nuclei, write what QuPath opens."""
