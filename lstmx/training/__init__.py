"""Training: the loop, data, optimizers, checkpoints, the run log and folder, distribution."""
