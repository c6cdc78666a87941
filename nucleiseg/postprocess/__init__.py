"""Post-processing on NumPy arrays, independent of the network: instances and per-nucleus features."""
