"""Training: recipe configs, losses, the accelerate loop, schedules and checkpoints."""
