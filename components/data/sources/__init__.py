"""Data sources: synthetic logs, replay of timestamped public datasets, the LightGCN split format."""
