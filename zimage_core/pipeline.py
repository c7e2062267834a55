"""Prompt to image: text encoder -> DiT sampling -> Flux VAE, the same picture as the reference pipeline.

Seeds mean the same starting noise as ComfyUI's KSampler and diffusers with a CPU generator:
`torch.randn([B, 16, H/8, W/8], generator=torch.Generator("cpu").manual_seed(seed))`.
Images are float32 [B, H, W, 3] in 0..1 on the CPU (ComfyUI's IMAGE layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .adapters.controlnet import ControlImage, ControlPatch
from .errors import InputError
from .model.dit_loader import load_dit
from .model.latent import (
    LATENT_CHANNELS,
    SPATIAL_MULTIPLE,
    VAE_SCALE_FACTOR,
    to_model_space,
    to_vae_space,
)
from .model.text_encoder import TextEncoder, load_text_encoder
from .model.transformer import ZImageDiT
from .model.vae import FluxVAE, load_vae
from .sampling.loop import Guidance, StepCallback, sample
from .sampling.schedules import (
    DEFAULT_SCHEDULER,
    check_sigmas,
    denoise_sigmas,
    flow_sigmas,
    scheduler_sigmas,
)
from .weights.offload import (
    blocks_to_keep,
    check_memory_preset,
    enable_block_offload,
    free_memory,
    module_bytes,
)


def check_size(width: int, height: int) -> None:
    """Width and height must be multiples of 16 (VAE x8 times patch 2); suggest the nearest valid sizes."""
    bad = [(n, v) for n, v in (("width", width), ("height", height)) if v % SPATIAL_MULTIPLE or v <= 0]
    if bad:
        hints = "; ".join(
            f"{n} {v}: use {max(SPATIAL_MULTIPLE, v // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE)} or "
            f"{(v // SPATIAL_MULTIPLE + 1) * SPATIAL_MULTIPLE}" for n, v in bad)
        raise InputError(f"width and height must be positive multiples of {SPATIAL_MULTIPLE} ({hints}).")


def to_pixels(image: torch.Tensor) -> torch.Tensor:
    """VAE output [B, 3, H, W] in -1..1 -> IMAGE [B, H, W, 3] float32 0..1 on the CPU."""
    return (image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def from_pixels(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3] 0..1 -> VAE input [B, 3, H, W] in -1..1."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise InputError(f"image of shape {tuple(image.shape)}; expected [B, H, W, 3] with values in 0..1.")
    return image[..., :3].permute(0, 3, 1, 2).float() * 2 - 1


def decode(vae: FluxVAE, latent_raw: torch.Tensor, tiled: bool | None = None, free: int | None = None) -> torch.Tensor:
    """VAE-raw latent -> IMAGE. `tiled=None` (auto) decodes in tiles only when the untiled decode would not
    fit in `free` bytes (default: what the VAE's device has free now); tiling is seamless-ish but not exact."""
    if tiled is None:
        free = free_memory(vae.device) if free is None else free
        tiled = free is not None and vae.decode_bytes(tuple(latent_raw.shape)) > free
    return to_pixels(vae.decode_tiled(latent_raw) if tiled else vae.decode(latent_raw))


@dataclass
class ZImagePipeline:
    dit: ZImageDiT
    text_encoder: TextEncoder
    vae: FluxVAE
    offload_text_encoder: bool = False  # keep the text encoder on the CPU except while it encodes

    @classmethod
    def from_files(cls, dit: str | Path, text_encoder: str | Path, vae: str | Path, tokenizer: str | Path | None = None,
                   weight_dtype: str = "auto", device: str = "cpu", memory: str = "auto") -> ZImagePipeline:
        """Load the three models. On a GPU, `memory` (a preset of offload.MEMORY_PRESETS) may keep only part
        of the DiT on the GPU and stream the rest (see offload.py); on the CPU it has no effect."""
        check_memory_preset(memory)
        device = torch.device(device)
        keep = None
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            model = load_dit(dit, weight_dtype, "cpu", compute_device=device)
            keep = blocks_to_keep(model, memory, total)
            if keep is None:
                model.to(device)
            else:
                enable_block_offload(model, keep, device).resident().to(device)
        else:
            model = load_dit(dit, weight_dtype, device)
        te = load_text_encoder(text_encoder, torch.bfloat16 if device.type == "cuda" else torch.float32,
                               "cpu" if keep is not None else device, tokenizer)
        # with a streamed DiT the GPU is short: the text encoder waits on the CPU between prompts
        return cls(model, te, load_vae(vae, device=device), offload_text_encoder=keep is not None)

    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """Caption features of each prompt. An offloaded text encoder (low-memory presets) waits on the CPU,
        visits the GPU for the encoding when it fits in the free memory (else encodes on the CPU) and goes
        back to the CPU right after, so the DiT has the GPU to itself while sampling."""
        te = self.text_encoder
        if not self.offload_text_encoder:
            return te.encode(prompts)
        gpu = self.dit.x_pad_token.device
        if torch.cuda.mem_get_info(gpu)[0] < module_bytes(te.model) * 1.2:
            return te.encode(prompts)
        cpu = te.device
        te.model.to(gpu)
        te.device = gpu
        try:
            return te.encode(prompts)
        finally:
            te.model.to(cpu)
            te.device = cpu
            torch.cuda.empty_cache()

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        width: int = 1024,
        height: int = 1024,
        steps: int = 8,
        cfg: float = 1.0,
        shift: float = 3.0,
        seed: int = 0,
        batch: int = 1,
        sigmas: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        denoise: float = 1.0,
        mask: torch.Tensor | None = None,
        cfg_truncation: float = 1.0,
        cfg_normalization: float = 0.0,
        callback: StepCallback | None = None,
        tiled_decode: bool | None = None,
        sampler: str = "euler",
        scheduler: str = DEFAULT_SCHEDULER,
        controls: list[ControlImage] | None = None,
    ) -> torch.Tensor:
        """Text (and optionally an image and mask) to IMAGE [batch, height, width, 3].

        image: IMAGE [1 or batch, H, W, 3] 0..1 for image-to-image (`denoise` < 1) or inpainting;
        it is resized to width x height. mask: [1 or batch, H, W] 0..1, 1 = regenerate.
        Image-to-image draws the VAE encoder's sample and then the noise from the seed's generator,
        exactly as diffusers' Z-Image img2img/inpaint pipelines do.
        sampler / scheduler: names from `samplers.SAMPLERS` / `schedules.SCHEDULERS`; the default scheduler
        "zimage" is the reference schedule (denoise as diffusers' strength), the others are ComfyUI's
        (denoise as KSampler's).
        controls: ControlNets with their control images (see controlnet.ControlImage); their hints add up.
        """
        check_size(width, height)
        if batch < 1:
            raise InputError(f"batch must be at least 1 (got {batch}).")
        if mask is not None and image is None:
            raise InputError("a mask needs an input image (inpainting keeps the unmasked part of that image).")
        if denoise < 1.0 and image is None:
            raise InputError(f"denoise {denoise} < 1 needs an input image to start from.")
        if sigmas is None and scheduler != DEFAULT_SCHEDULER:
            sig = scheduler_sigmas(scheduler, steps, shift, denoise, sampler)
        else:
            sig = check_sigmas(sigmas) if sigmas is not None else flow_sigmas(steps, shift)
            if denoise < 1.0:
                sig = denoise_sigmas(sig, denoise)

        dit = self.dit
        pos = dit.encode_context(self.encode_prompts([prompt]))
        guidance = None
        if cfg != 1.0:
            neg = dit.encode_context(self.encode_prompts([negative_prompt or ""]))
            guidance = Guidance(neg, cfg, cfg_truncation, cfg_normalization)

        g = torch.Generator("cpu").manual_seed(int(seed))
        latent_image = noise_mask = None
        if image is not None:
            pixels = from_pixels(image)
            if pixels.shape[-2:] != (height, width):
                pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True).clamp(-1, 1)
            raw = self.vae.encode(pixels.to(self.vae.device), generator=g)
            latent_image = to_model_space(raw).float().cpu()
            latent_image = latent_image.repeat(batch // len(latent_image), 1, 1, 1) if len(latent_image) < batch else latent_image
            if mask is not None:
                m = mask.float().reshape(-1, 1, *mask.shape[-2:])
                noise_mask = F.interpolate(m, size=latent_image.shape[-2:], mode="nearest")
        shape = (batch, LATENT_CHANNELS, height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR)
        noise = torch.randn(shape, generator=g, dtype=torch.float32)

        step_controls = None
        if controls:
            patch = ControlPatch([c.to_control(self.vae) for c in controls])
            patch.install(dit)
            step_controls = patch.step_controls
        x = sample(dit, noise, pos, sig, sampler, seed, shift, guidance, latent_image, noise_mask, callback,
                   step_controls=step_controls)
        return decode(self.vae, to_vae_space(x).to(self.vae.device), tiled_decode)
