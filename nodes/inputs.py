"""Input specs several nodes share."""

from __future__ import annotations


def fraction(default: float, tip: str) -> tuple:
    """A FLOAT widget in 0..1 (a part of the schedule), step 0.01."""
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tip})
