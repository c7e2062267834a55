"""Flow-matching sampling with optional CFG, image-to-image start and inpainting mask.

`sample_euler` is the reference Turbo sampler (velocity Euler steps); `sample` runs any method of
`samplers.SAMPLERS` through a `Denoiser` (x0 of the DiT with guidance, per-step controls and the mask).

Everything here is in model space (see `latent.py`) and float32; the DiT is reached only through
`ZImageDiT.velocity`, which owns the time/prediction convention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..model.transformer import Context, ZImageDiT

# callback(step, total_steps, x, x0_estimate); may raise to interrupt (ComfyUI's Cancel does).
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class Guidance:
    """Classifier-free guidance for the non-distilled model.

    cfg: the standard guidance weight (v = v_neg + cfg * (v_pos - v_neg)); 1.0 is a single pass.
    truncation: steps whose model time t = 1 - sigma exceeds this run without CFG (1.0 = never).
    normalization: if > 0, the guided prediction's norm is capped at this multiple of the positive one's.
    """

    negative: Context
    cfg: float = 1.0
    truncation: float = 1.0
    normalization: float = 0.0

    def active(self, sigma: float) -> bool:
        return self.cfg != 1.0 and (1.0 - sigma) <= self.truncation

    def combine(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        pred = pos + (self.cfg - 1.0) * (pos - neg)
        if self.normalization > 0:
            dims = tuple(range(1, pos.ndim))
            pos_norm = torch.linalg.vector_norm(pos, dim=dims, keepdim=True)
            new_norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
            limit = pos_norm * self.normalization
            pred = torch.where(new_norm > limit, pred * (limit / new_norm), pred)
        return pred


def initial_latent(noise: torch.Tensor, sigma0: float, latent_image: torch.Tensor | None) -> torch.Tensor:
    """x at the first sigma: sigma * noise + (1 - sigma) * image (image = 0 for text-to-image)."""
    if latent_image is None:
        return noise * sigma0
    return sigma0 * noise + (1.0 - sigma0) * latent_image


@torch.no_grad()
def sample_euler(
    model: ZImageDiT,
    noise: torch.Tensor,
    context: Context,
    sigmas: torch.Tensor,
    guidance: Guidance | None = None,
    latent_image: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    step_controls: Callable[[int, float, int], dict] | None = None,
) -> torch.Tensor:
    """Denoise from `sigmas[0]` to `sigmas[-1]` with Euler steps x <- x + (sigma_next - sigma) * v.

    noise, latent_image: [B, 16, h, w] model-space float32; noise_mask: [B or 1, 1, h, w] in 0..1,
    1 = regenerate, 0 = keep latent_image (re-noised to each step's level, clean at the end).
    step_controls(step, sigma, n_steps) -> extra `ZImageDiT.forward` kwargs for that step (adaLN controls);
    a "context" entry (a Context, or a callable positive_context -> Context) replaces the positive
    context for that step only (conditioning variance); the negative context is never replaced. A "nag"
    entry (NAG) acts on the positive half of a CFG batch only.
    """
    if noise_mask is not None and latent_image is None:
        raise InputError("an inpainting mask needs the input image latent to keep the unmasked area.")
    device = model.x_pad_token.device
    sig = sigmas.tolist()
    noise = noise.to(device, torch.float32)
    image = None if latent_image is None else latent_image.to(device, torch.float32)
    mask = None if noise_mask is None else noise_mask.to(device, torch.float32)
    B = noise.shape[0]
    x = initial_latent(noise, sig[0], image)
    steps = len(sig) - 1
    for i in range(steps):
        s, s_next = sig[i], sig[i + 1]
        sigma = torch.full((B,), s, device=device)
        controls = dict(step_controls(i, s, steps)) if step_controls is not None else {}
        pos = controls.pop("context", None)
        pos = context if pos is None else (pos(context) if callable(pos) else pos)
        if guidance is not None and guidance.active(s):
            ctx = (pos.repeat(B) if len(pos) == 1 else pos) + (
                guidance.negative.repeat(B) if len(guidance.negative) == 1 else guidance.negative)
            if controls.get("nag") is not None:  # NAG guides the positive prediction only
                controls["nag"] = controls["nag"].positive_half(B)
            v_pos, v_neg = model.velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, **controls).chunk(2)
            v = guidance.combine(v_pos, v_neg)
        else:
            v = model.velocity(x, sigma, pos, **controls)
        x0 = x - s * v
        x = x + (s_next - s) * v
        if mask is not None:
            x = mask * x + (1.0 - mask) * initial_latent(noise, s_next, image)
        if callback is not None:
            callback(i, steps, x, x0)
    return x


class Denoiser:
    """x0(x, sigma) of the DiT: guidance, per-step controls and the inpainting mask applied.

    The mask follows ComfyUI's rule: before the model the kept area is set to the image noised to sigma
    (sigma * noise + (1 - sigma) * image), after it the kept area's x0 is the image itself.
    """

    def __init__(self, model: ZImageDiT, context: Context, guidance: Guidance | None, n_steps: int,
                 step_controls: Callable[[int, float, int], dict] | None, noise: torch.Tensor,
                 image: torch.Tensor | None, mask: torch.Tensor | None):
        self.model, self.context, self.guidance, self.n_steps = model, context, guidance, n_steps
        self.step_controls, self.noise, self.image, self.mask = step_controls, noise, image, mask

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        s = float(sigma)
        if self.mask is not None:
            x = self.mask * x + (1.0 - self.mask) * initial_latent(self.noise, s, self.image)
        B = x.shape[0]
        sig = torch.full((B,), s, device=x.device)
        controls = dict(self.step_controls(step, s, self.n_steps)) if self.step_controls is not None else {}
        pos = controls.pop("context", None)
        pos = self.context if pos is None else (pos(self.context) if callable(pos) else pos)
        g = self.guidance
        if g is not None and g.active(s):
            ctx = (pos.repeat(B) if len(pos) == 1 else pos) + (
                g.negative.repeat(B) if len(g.negative) == 1 else g.negative)
            v_pos, v_neg = self.model.velocity(torch.cat([x, x]), torch.cat([sig, sig]), ctx, **controls).chunk(2)
            v = g.combine(v_pos, v_neg)
        else:
            v = self.model.velocity(x, sig, pos, **controls)
        x0 = x - sigma.to(x.device) * v
        if self.mask is not None:
            x0 = self.mask * x0 + (1.0 - self.mask) * self.image
        return x0


@torch.no_grad()
def sample(
    model: ZImageDiT,
    noise: torch.Tensor,
    context: Context,
    sigmas: torch.Tensor,
    sampler: str = "euler",
    seed: int | None = None,
    shift: float = 3.0,
    guidance: Guidance | None = None,
    latent_image: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    step_controls: Callable[[int, float, int], dict] | None = None,
) -> torch.Tensor:
    """Denoise from `sigmas[0]` to `sigmas[-1]` with the sampler named `sampler` (see `samplers.SAMPLERS`).

    seed: the seed of the stochastic samplers' noise (ancestral / SDE), the same meaning as ComfyUI's KSampler
    seed; shift: the schedule's time shift (SDE samplers start at its sigma of time 1 - 1e-4 rather than 1).
    The other arguments are those of `sample_euler`; "euler" runs `sample_euler` itself.
    """
    from .samplers import SAMPLERS, SHIFT_AWARE, Noise

    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler '{sampler}'; choose one of: {', '.join(SAMPLERS)}.")
    if sampler == "euler":
        return sample_euler(model, noise, context, sigmas, guidance, latent_image, noise_mask, callback,
                            step_controls)
    if noise_mask is not None and latent_image is None:
        raise InputError("an inpainting mask needs the input image latent to keep the unmasked area.")
    device = model.x_pad_token.device
    sigmas = sigmas.float().cpu()
    noise = noise.to(device, torch.float32)
    image = None if latent_image is None else latent_image.to(device, torch.float32)
    mask = None if noise_mask is None else noise_mask.to(device, torch.float32)
    steps = len(sigmas) - 1
    denoise = Denoiser(model, context, guidance, steps, step_controls, noise, image, mask)
    x = initial_latent(noise, float(sigmas[0]), image)

    def on_step(i, x_i, x0):
        if callback is not None:
            callback(i, steps, x_i, x0)

    kwargs = {"shift": shift} if sampler in SHIFT_AWARE else {}
    return SAMPLERS[sampler](denoise, x, sigmas, Noise(x, sigmas, seed), on_step, **kwargs)
