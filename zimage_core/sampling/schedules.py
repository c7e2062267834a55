"""Noise-level (sigma) schedules for flow matching; sigma = 1 is pure noise, 0 the clean image."""

from __future__ import annotations

import math

import torch

from ..errors import InputError


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


# ----------------------------------------------------------------------------- named schedulers
#
# Besides Z-Image's own schedule ("zimage": `flow_sigmas`), the schedulers of ComfyUI's KSampler, computed the
# way ComfyUI computes them for this model (ModelSamplingAuraFlow: a discrete flow model whose 1000-entry sigma
# table is the shifted timesteps t = 1/1000 .. 1, with timestep = sigma), so a scheduler name and step count
# give the same sigmas here as in ComfyUI.

TABLE_SIZE = 1000


def sigma_table(shift: float) -> torch.Tensor:
    """The model's discrete sigmas, ascending: shift_sigmas(t, shift) for t = 1/1000, 2/1000, ..., 1 (float32)."""
    t = torch.arange(1, TABLE_SIZE + 1, 1) / TABLE_SIZE
    return t if shift == 1.0 else shift_sigmas(t, shift)


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros([1])])


def simple_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Evenly spaced entries of the table, from the top."""
    table = sigma_table(shift)
    stride = len(table) / steps
    return torch.tensor([float(table[-(1 + int(i * stride))]) for i in range(steps)] + [0.0])


def normal_sigmas(steps: int, shift: float, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced between the table's ends, each mapped through the shift (k-diffusion's
    'normal'; `sgm`: steps + 1 points with the last dropped, SGM's uniform spacing)."""
    table = sigma_table(shift)
    start, end = table[-1], table[0]  # timestep = sigma for this model
    if sgm:
        ts = torch.linspace(start, end, steps + 1)[:-1]
    else:
        ts = torch.linspace(start, end, steps)
    return torch.tensor([float(shift_sigmas(t, shift)) for t in ts] + [0.0])


def beta_sigmas(steps: int, shift: float, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Table entries at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024, arXiv:2407.12173);
    repeated entries are dropped."""
    import numpy as np
    from scipy.stats import beta as beta_dist  # the regularised incomplete beta inverse

    table = sigma_table(shift)
    ts = np.rint(beta_dist.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * (len(table) - 1))
    out, last = [], None
    for t in ts:
        if t != last:
            out.append(float(table[int(t)]))
        last = t
    return torch.tensor(out + [0.0])


def karras_sigmas(steps: int, shift: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): sigmas evenly spaced in sigma^(1/rho) between the table's ends."""
    table = sigma_table(shift)
    lo, hi = float(table[0]) ** (1 / rho), float(table[-1]) ** (1 / rho)
    ramp = torch.linspace(0, 1, steps)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma between the table's ends."""
    table = sigma_table(shift)
    return _append_zero(torch.linspace(math.log(float(table[-1])), math.log(float(table[0])), steps).exp())


def linear_quadratic_sigmas(steps: int, shift: float, threshold: float = 0.025) -> torch.Tensor:
    """Mochi's schedule: the first half of the steps linear down to 1 - threshold, the rest quadratic to 0."""
    if steps == 1:
        sched = [1.0, 0.0]
    else:
        lin = steps // 2
        noise_lin = [i * threshold / lin for i in range(lin)]
        diff = lin - threshold * steps
        quad = steps - lin
        qa = diff / (lin * quad ** 2)
        qb = threshold / lin - 2 * diff / (quad ** 2)
        qc = qa * (lin ** 2)
        sched = [1.0 - v for v in noise_lin + [qa * i ** 2 + qb * i + qc for i in range(lin, steps)] + [1.0]]
    return torch.tensor(sched, dtype=torch.float32) * sigma_table(shift)[-1]


def ddim_uniform_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Every (1000 // steps)-th table entry from the second, ascending, reversed, with 0 at the end."""
    table = sigma_table(shift)
    out = [0.0]
    stride = max(len(table) // steps, 1)
    for i in range(1, len(table), stride):
        out.append(float(table[i]))
    return torch.tensor(out[::-1])


def kl_optimal_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The KL-optimal schedule: evenly spaced in arctan(sigma) between the table's ends."""
    table = sigma_table(shift)
    w = torch.arange(steps, dtype=torch.float).div_(steps - 1)
    out = w.new_zeros(steps + 1)
    out[:-1] = (w * math.atan(float(table[0])) + (1 - w) * math.atan(float(table[-1]))).tan_()
    return out


SCHEDULERS = {
    "zimage": flow_sigmas,  # Z-Image's reference schedule (the Turbo one): shifted linspace(1, 1/steps)
    "simple": simple_sigmas,
    "sgm_uniform": lambda steps, shift: normal_sigmas(steps, shift, sgm=True),
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "ddim_uniform": ddim_uniform_sigmas,
    "beta": beta_sigmas,
    "normal": normal_sigmas,
    "linear_quadratic": linear_quadratic_sigmas,
    "kl_optimal": kl_optimal_sigmas,
}
DEFAULT_SCHEDULER = "zimage"
# samplers that ComfyUI's KSampler runs on a schedule of steps + 1 with the second-to-last sigma dropped
DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}


def scheduler_sigmas(name: str, steps: int, shift: float = 3.0, denoise: float = 1.0, sampler: str = "") -> torch.Tensor:
    """The schedule `name` for `steps` steps at a time shift, as KSampler builds it: for denoise < 1 the last
    steps + 1 sigmas of the schedule of int(steps / denoise) steps."""
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULERS)}.")
    if steps < 1:
        raise InputError(f"steps must be at least 1 (got {steps}).")
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1] (got {denoise}); 0 would not change the latent at all.")
    if shift <= 0:
        raise InputError(f"shift must be positive (got {shift}).")

    def build(n):
        if sampler in DISCARD_PENULTIMATE:
            s = SCHEDULERS[name](n + 1, shift)
            return torch.cat([s[:-2], s[-1:]])
        return SCHEDULERS[name](n, shift)

    if denoise > 0.9999:
        return build(steps).float()
    return build(int(steps / denoise))[-(steps + 1):].float()
