"""diffinv: posterior sampling for scientific inverse problems with diffusion priors."""

__version__ = "0.1.0"
