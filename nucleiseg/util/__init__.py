"""Plumbing any layer may use: project errors, locks, atomic writing, the console, progress, the network probe,
per-device defaults and how many jobs a machine runs at once. Imports nothing else of nucleiseg."""
