"""Inference: safe checkpoint loading, tiled prediction, speed measurement, exports."""
