"""Training engine: the fit loop, optimizers and schedules, checkpoints, precision."""
