"""Experiment tracking (MLflow) and reporting."""
