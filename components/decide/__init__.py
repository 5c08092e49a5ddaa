"""Decide plane: evaluation measures, gates judge, the registry decides; outcome and reports say what happened."""
