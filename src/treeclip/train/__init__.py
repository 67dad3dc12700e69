"""Training: config, distributed environment, optimizer and schedule, objectives, loop, checkpoints."""
