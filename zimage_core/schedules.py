"""Noise-level (sigma) schedules for flow matching; sigma = 1 is pure noise, 0 the clean image."""

from __future__ import annotations

import torch

from .errors import InputError


def shift_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor:
    """The time shift of the Z-Image scheduler: sigma = shift * s / (1 + (shift - 1) * s)."""
    return shift * s / (1 + (shift - 1) * s)


def flow_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """`steps + 1` float32 sigmas, from 1 down to 0: shifted linspace(1, 1/steps, steps), then 0.

    8 steps, shift 3: 1, .9545, .9, .8333, .75, .6429, .5, .3, 0 (the reference Turbo schedule).
    """
    if steps < 1:
        raise InputError(f"steps must be at least 1 (got {steps}).")
    if shift <= 0:
        raise InputError(f"shift must be positive (got {shift}).")
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    return torch.cat([shift_sigmas(s, shift), torch.zeros(1)])


def denoise_sigmas(sigmas: torch.Tensor, denoise: float) -> torch.Tensor:
    """The tail of a schedule that image-to-image runs for a `denoise` strength in (0, 1].

    Same rule as diffusers' `strength`: of N steps, the last N - int(N - N * denoise) are run, so
    denoise 0.6 with 8 steps starts at the 4th sigma (0.8333) and runs 5 steps.
    """
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1] (got {denoise}).")
    n = len(sigmas) - 1
    return sigmas[int(n - n * denoise):]  # at least one step remains since denoise > 0


def parse_sigmas(text: str) -> torch.Tensor:
    """A custom schedule written as comma-separated numbers, decreasing, ending at 0 (appended if missing)."""
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"custom sigmas '{text}' must be comma-separated numbers, e.g. '1, 0.9, 0.75, 0.5, 0.3'.") from None
    return check_sigmas(torch.tensor(values, dtype=torch.float32))


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = sigmas.float().flatten()
    if len(sigmas) and sigmas[-1] != 0:
        sigmas = torch.cat([sigmas, torch.zeros(1)])
    if len(sigmas) < 2 or sigmas[0] > 1 or (sigmas[1:] > sigmas[:-1]).any() or (sigmas < 0).any():
        raise InputError(
            f"sigmas {[round(v, 4) for v in sigmas.tolist()]} must decrease from at most 1 to 0 with at least one step."
        )
    return sigmas
