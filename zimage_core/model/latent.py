"""The Flux latent space, in one place.

Public latents (pipeline API, ComfyUI LATENT) are in the VAE's raw space: what the VAE encoder gives
and the decoder takes. The DiT and the sampler work in the normalised "model space". The two
constants and the two conversions below are the only place where that mapping is written.
"""

import torch

LATENT_CHANNELS = 16
VAE_SCALE_FACTOR = 8  # pixels per latent cell
SPATIAL_MULTIPLE = 16  # VAE x8 times the DiT patch size 2
SCALING_FACTOR = 0.3611
SHIFT_FACTOR = 0.1159


def to_model_space(raw: torch.Tensor) -> torch.Tensor:
    """VAE-raw latent -> model-space latent: (x - shift) * scale."""
    return (raw - SHIFT_FACTOR) * SCALING_FACTOR


def to_vae_space(z: torch.Tensor) -> torch.Tensor:
    """Model-space latent -> VAE-raw latent: z / scale + shift (divide first, then add)."""
    return z / SCALING_FACTOR + SHIFT_FACTOR
