"""Metrics: pixel-level (torchmetrics) and, later, instance-level."""
