"""Guidance plug-ins: turn a denoiser and an observation into a conditional denoiser."""

from diffinv.guidance.base import Guidance, Unconditional, make_guidance

__all__ = ["Guidance", "Unconditional", "make_guidance"]
