"""Diffusion core: schedules, denoisers, networks, training and checkpoints."""
