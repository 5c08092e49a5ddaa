"""Model plane: the teacher, the distilled student, pruning and quantization, the training loop and metrics."""
