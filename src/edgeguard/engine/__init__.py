"""Training engine: loops, checkpoints, seeding, distributed runs."""
