"""ZImageSampler: flow-matching sampling (any KSampler sampler/scheduler) of a LATENT with the Z-Image DiT, with ComfyUI's seed, denoise,
noise_mask and batch_index semantics, progress previews and Cancel."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..zimage_core.errors import InputError
from ..zimage_core.model.latent import (
    LATENT_CHANNELS,
    SPATIAL_MULTIPLE,
    VAE_SCALE_FACTOR,
    to_model_space,
    to_vae_space,
)
from ..zimage_core.sampling.loop import Denoiser, Guidance, sample, sample_euler
from ..zimage_core.sampling.samplers import SAMPLERS
from ..zimage_core.sampling.schedules import (
    DEFAULT_SCHEDULER,
    SCHEDULERS,
    check_sigmas,
    flow_sigmas,
    scheduler_sigmas,
)
from . import host

log = logging.getLogger("zimage_nodes")
MAX_SEED = 0xFFFFFFFFFFFFFFFF


# --------------------------------------------------------------------------------------------- schedules

def comfy_denoise_sigmas(steps: int, shift: float, denoise: float) -> torch.Tensor:
    """The schedule of ComfyUI's KSampler for a denoise strength: `steps` steps taken from the tail of a longer
    schedule, flow_sigmas(int(steps / denoise), shift)[-(steps + 1):]. denoise 1 is the plain schedule."""
    if steps < 1:
        raise InputError(f"steps must be at least 1 (got {steps}).")
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1] (got {denoise}); 0 would not change the latent at all.")
    if denoise >= 1.0:
        return flow_sigmas(steps, shift)
    total = int(steps / denoise)
    return flow_sigmas(total, shift)[-(steps + 1):]


# ----------------------------------------------------------------------------------------------- inputs

def check_latent(latent, what: str = "latent") -> torch.Tensor:
    """The LATENT's samples, refused when they cannot be a Z-Image (Flux VAE) latent."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise InputError(f"{what}: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}.")
    s = latent["samples"]
    if s.ndim != 4:
        raise InputError(f"{what}: samples of shape {tuple(s.shape)}; Z-Image needs an image latent [B, 16, H/8, W/8].")
    if s.shape[1] != LATENT_CHANNELS:
        raise InputError(
            f"{what} has {s.shape[1]} channels, but Z-Image uses the 16-channel Flux VAE latent. A {s.shape[1]}-channel "
            f"latent comes from another model family (4 = SD1.5/SDXL): start from ZImageEmptyLatent or "
            f"EmptySD3LatentImage, or encode with ZImageVAEEncode / the Flux VAE (ae.safetensors).")
    h, w = s.shape[-2:]
    m = SPATIAL_MULTIPLE // VAE_SCALE_FACTOR
    if h % m or w % m:
        raise InputError(
            f"{what} is {w * VAE_SCALE_FACTOR}x{h * VAE_SCALE_FACTOR} pixels ({w}x{h} latent cells); Z-Image needs "
            f"width and height that are multiples of {SPATIAL_MULTIPLE} (an even latent size). Crop or resize the "
            f"image to e.g. {w // m * SPATIAL_MULTIPLE}x{h // m * SPATIAL_MULTIPLE}.")
    return s


def prepare_noise(shape, seed: int, batch_index=None) -> torch.Tensor:
    """ComfyUI's seed semantics: CPU float32 normal noise from a generator seeded with `seed`; with `batch_index`
    (a latent taken from a bigger batch) each image gets the noise it had at its index in that batch."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    if batch_index is None:
        return torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    inds = [int(i) for i in batch_index]
    if len(inds) != shape[0]:
        raise InputError(f"latent batch_index has {len(inds)} entries for a batch of {shape[0]}.")
    per = {}
    for i in range(max(inds) + 1):
        n = torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32)
        if i in inds:
            per[i] = n
    return torch.cat([per[i] for i in inds])


def prepare_mask(mask: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """noise_mask [B,1,H,W] / [B,H,W] / [H,W] at pixel or latent size -> [batch, 1, h, w] float32 (bilinear)."""
    m = mask.float().cpu()
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 4:
        m = m[:, :1]
    elif m.ndim == 3:
        m = m[:, None]
    else:
        raise InputError(f"noise_mask of shape {tuple(mask.shape)}; expected [B, H, W] or [B, 1, H, W].")
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    if len(m) < batch:
        m = m.repeat((batch + len(m) - 1) // len(m), 1, 1, 1)
    m = m[:batch].clamp(0, 1)
    if not m.any():
        log.warning("Z-Image sampler: the noise_mask is empty (all 0), so nothing is repainted and the output is "
                    "the input latent. A LoadImage MASK comes from the image's alpha channel: paint the area to "
                    "change in the mask editor, or use an image with transparency.")
    return m


def conditioning_features(cond, what: str) -> list[torch.Tensor]:
    """CONDITIONING -> list of (L, hidden) features, one per batch row of its first entry.

    Only the first entry is used (ConditioningCombine / area conditioning are not supported by this sampler);
    more entries are ignored with a warning. Positions where `attention_mask` is 0 (padding) are dropped."""
    if not isinstance(cond, (list, tuple)) or not cond or not isinstance(cond[0], (list, tuple)):
        raise InputError(f"{what}: expected a CONDITIONING (from ZImageTextEncode or CLIPTextEncode).")
    if len(cond) > 1:
        log.warning("Z-Image sampler: %s has %d conditioning entries; only the first is used "
                    "(combine prompts in the text instead).", what, len(cond))
    t, extra = cond[0][0], (cond[0][1] if len(cond[0]) > 1 else {}) or {}
    if not torch.is_tensor(t):
        raise InputError(f"{what}: the conditioning holds no tensor.")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"{what}: conditioning of shape {tuple(t.shape)}; expected [1, L, hidden].")
    mask = extra.get("attention_mask")
    out = []
    for i in range(t.shape[0]):
        f = t[i]
        if mask is not None and torch.is_tensor(mask):
            row = mask[min(i, mask.shape[0] - 1)] if mask.ndim == 2 else mask
            if row.shape[-1] == f.shape[0]:
                f = f[row.bool().to(f.device)]
        if len(f) == 0:
            raise InputError(f"{what}: the conditioning has no valid tokens.")
        out.append(f.float())
    return out


def _memory_estimate(dit, samples: torch.Tensor, n_ctx: int, cfg: bool) -> int:
    b, _, h, w = samples.shape
    tokens = (h // 2) * (w // 2) + n_ctx + 64
    per = tokens * dit.cfg.dim * 4 * 24  # activations of one block in fp32 with attention, generous
    streamer = getattr(dit, "block_streamer", None)
    slots = 2 * streamer.slot_bytes if streamer is not None else 0  # block offloading's two device slots
    return int(b * (2 if cfg else 1) * per) + slots


def _comfy_sampler(model, name, noise, context, sigmas, seed, shift, guidance, latent_image, noise_mask, callback,
                   step_controls):
    """ComfyUI's own sampler `name` through the host adapter, on our DiT's x0 (guidance and step controls
    included; ComfyUI applies the inpainting mask). A step's controls are those of the schedule step whose
    interval holds the evaluated sigma."""
    device = host.module_device(model)
    noise = noise.to(device, torch.float32)
    image = None if latent_image is None else latent_image.to(device, torch.float32)
    mask = None if noise_mask is None else noise_mask.to(device, torch.float32)
    n = len(sigmas) - 1
    den = Denoiser(model, context, guidance, n, step_controls, noise, None, None)

    def x0_fn(x, sigma):
        s = sigma.reshape(-1)[0].float().cpu()
        step = min(max(int((sigmas >= s).sum()) - 1, 0), n - 1)
        return den(x.float(), s, step)

    return host.run_sampler(name, x0_fn, noise, sigmas.clone(), int(seed), shift, image, mask,
                            lambda i, x, x0: callback(i, n, x, x0))


# ------------------------------------------------------------------------------------------------ node

class ZImageSampler:
    DESCRIPTION = ("Samples a LATENT with the Z-Image DiT (flow-matching Euler by default; any of KSampler's "
                   "samplers and schedulers). Turbo: 8 steps, cfg 1, shift 3. "
                   "Base: ~25-50 steps, cfg 3-5 with a negative. denoise < 1 (image-to-image), a noise_mask "
                   "(inpainting) and a custom SIGMAS schedule work as with KSampler; the seed gives the same "
                   "noise as KSampler.")
    CATEGORY = "Z-Image/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised latent (Flux VAE space), for ZImageVAEDecode or VAEDecode.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dit": ("ZIMAGE_DIT", {"tooltip": "The DiT from ZImageDiTLoader (optionally through LoRA/adaLN nodes)."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt, from ZImageTextEncode or a lumina2 CLIPTextEncode."}),
                "latent": ("LATENT", {"tooltip": "The starting latent: ZImageEmptyLatent / EmptySD3LatentImage for "
                                                 "text-to-image, or an encoded image (with denoise < 1)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "The noise seed, e.g. 42; the same seed gives the same noise as KSampler."}),
                "steps": ("INT", {"default": 8, "min": 1, "max": 10000,
                                  "tooltip": "Number of sampling steps: 8 for Turbo, 25-50 for Base."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance: 1.0 for Turbo (one pass, no negative); "
                                             "3-5 for Base (needs a negative)."}),
                "shift": ("FLOAT", {"default": 3.0, "min": 0.01, "max": 100.0, "step": 0.1,
                                    "tooltip": "Time shift of the schedule (3.0 is Z-Image's); higher spends more "
                                               "steps at high noise."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "How much of the latent is regenerated: 1.0 for text-to-image, "
                                                 "e.g. 0.6 for image-to-image (KSampler's rule)."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt, used only when cfg != 1, e.g. "
                                                         "ConditioningZeroOut of the positive or a ZImageTextEncode."}),
                "sigmas": ("SIGMAS", {"tooltip": "A custom noise schedule (e.g. from BasicScheduler); overrides "
                                                 "steps, shift and denoise."}),
                "cfg_truncation": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                             "tooltip": "Steps past this fraction of the schedule (model time "
                                                        "1 - sigma) run without CFG; 1.0 = CFG on every step."}),
                "cfg_normalization": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                                "tooltip": "If > 0, caps the guided prediction's norm at this "
                                                           "multiple of the positive one's (e.g. 1.0); 0 = off."}),
                "sampler_name": (host.sampler_names(list(SAMPLERS)), {
                    "default": "euler",
                    "tooltip": "The sampling method: euler (Z-Image's reference sampler) or any of KSampler's, e.g. "
                               "res_multistep or dpmpp_2m_sde; inside ComfyUI its own implementations run, with "
                               "the same seed meaning the same noise (ancestral/SDE noise included)."}),
                "scheduler": (host.scheduler_names(list(SCHEDULERS), DEFAULT_SCHEDULER), {
                    "default": DEFAULT_SCHEDULER,
                    "tooltip": "The noise schedule: zimage (the reference Turbo schedule, shifted by 'shift') or "
                               "one of KSampler's (simple, karras, beta, ...) for this model at 'shift'."}),
            },
        }

    def sample(self, dit, positive, latent, seed, steps=8, cfg=1.0, shift=3.0, denoise=1.0, negative=None,
               sigmas=None, cfg_truncation=1.0, cfg_normalization=0.0, sampler_name="euler",
               scheduler=DEFAULT_SCHEDULER):
        samples = check_latent(latent)
        samplers = host.sampler_names(list(SAMPLERS))
        schedulers = host.scheduler_names(list(SCHEDULERS), DEFAULT_SCHEDULER)
        if sampler_name not in samplers:
            raise InputError(f"ZImageSampler: unknown sampler_name '{sampler_name}'; choose one of: "
                             f"{', '.join(samplers)}.")
        if scheduler not in schedulers:
            raise InputError(f"ZImageSampler: unknown scheduler '{scheduler}'; choose one of: {', '.join(schedulers)}.")
        if sigmas is not None:
            sig = check_sigmas(torch.as_tensor(sigmas).detach().float().cpu())
        elif scheduler == DEFAULT_SCHEDULER:
            sig = comfy_denoise_sigmas(int(steps), float(shift), float(denoise))
        elif host.IN_COMFYUI:
            sig = host.calculate_sigmas(scheduler, int(steps), float(shift), float(denoise), sampler_name)
        else:
            sig = scheduler_sigmas(scheduler, int(steps), float(shift), float(denoise), sampler_name)
        use_cfg = cfg != 1.0
        if use_cfg and negative is None:
            raise InputError(
                f"cfg is {cfg} but no negative is connected. Connect a negative (e.g. ConditioningZeroOut of the "
                f"positive, or a ZImageTextEncode of a negative prompt), or set cfg to 1.0 (Turbo).")
        pos_feats = conditioning_features(positive, "positive")
        neg_feats = conditioning_features(negative, "negative") if use_cfg else None

        B = samples.shape[0]
        noise = prepare_noise(samples.shape, seed, latent.get("batch_index"))
        mask = latent.get("noise_mask")
        noise_mask = prepare_mask(mask, B, tuple(samples.shape[-2:])) if mask is not None else None
        # A pure-noise start ignores the latent (exactly what KSampler computes: 1 * noise + 0 * latent).
        latent_image = None
        if noise_mask is not None or float(sig[0]) < 1.0:
            latent_image = to_model_space(samples.float().cpu())

        model = dit.dit
        n_ctx = max(len(f) for f in pos_feats + (neg_feats or []))
        host.release_bridged(model)
        host.load_to_device(dit.hosts(), _memory_estimate(model, samples, n_ctx, use_cfg))
        host.check_interrupt()
        pbar = host.progress(len(sig) - 1, host.module_device(model))

        def callback(i, total, x, x0):
            pbar.update(i + 1, x0)

        with dit.applied():
            context = model.encode_context(pos_feats)
            guidance = None
            if use_cfg:
                guidance = Guidance(model.encode_context(neg_feats), float(cfg), float(cfg_truncation),
                                    float(cfg_normalization))
            for what, ctx in (("positive", context), ("negative", guidance.negative if guidance else None)):
                if ctx is not None and len(ctx) not in (1, B):
                    raise InputError(f"{what} conditioning has a batch of {len(ctx)} for a latent batch of {B}.")
            if sampler_name == "euler" and scheduler == DEFAULT_SCHEDULER:  # the reference Turbo sampler
                x = sample_euler(model, noise, context, sig, guidance, latent_image, noise_mask, callback,
                                 step_controls=dit.step_controls)
            elif host.IN_COMFYUI:
                x = _comfy_sampler(model, sampler_name, noise, context, sig, seed, float(shift), guidance,
                                   latent_image, noise_mask, callback, dit.step_controls)
            else:
                x = sample(model, noise, context, sig, sampler_name, seed, float(shift), guidance, latent_image,
                           noise_mask, callback, dit.step_controls)
        out = dict(latent)
        out["samples"] = to_vae_space(x.float()).to(host.intermediate_device())
        return (out,)


NODE_CLASS_MAPPINGS = {"ZImageSampler": ZImageSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageSampler": "Z-Image Sampler"}
