"""Data plane: a night's interactions are ingested, validated, turned into features and the training graph."""
