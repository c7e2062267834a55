"""A tiny random Flux-shaped VAE (16 latent channels, 8x down-sampling) in both real file formats."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.latent import LATENT_CHANNELS, SCALING_FACTOR, SHIFT_FACTOR
from ..model.vae import FluxVAE, VAEConfig, bfl_to_diffusers

TINY_VAE = VAEConfig(channels=(32, 32, 64, 64), num_res_blocks=1, z_channels=LATENT_CHANNELS)


def random_vae(cfg: VAEConfig = TINY_VAE, seed: int = 0) -> FluxVAE:
    """A FluxVAE with random weights scaled so that activations stay O(1) (outputs are far from zero)."""
    g = torch.Generator().manual_seed(seed)
    model = FluxVAE(cfg)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if p.ndim == 4:  # conv: unit-variance outputs for unit-variance inputs
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:  # biases
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval().requires_grad_(False)


def diffusers_config(cfg: VAEConfig) -> dict:
    n = len(cfg.channels)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "block_out_channels": list(cfg.channels),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "force_upcast": True,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "latent_channels": cfg.z_channels,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_add_attention": True,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": SCALING_FACTOR,
        "shift_factor": SHIFT_FACTOR,
        "use_post_quant_conv": cfg.post_quant_conv,
        "use_quant_conv": cfg.quant_conv,
    }


def write_tiny_vae(out_dir: Path, seed: int = 0, cfg: VAEConfig = TINY_VAE) -> dict[str, Path]:
    """Write the same random weights as `out_dir/ae.safetensors` (BFL names) and `out_dir/vae/` (diffusers
    `AutoencoderKL` folder: config.json + diffusion_pytorch_model.safetensors). Returns {'bfl', 'diffusers'}."""
    out_dir = Path(out_dir)
    sd = {k: v.contiguous() for k, v in random_vae(cfg, seed).state_dict().items()}
    bfl = out_dir / "ae.safetensors"
    folder = out_dir / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(bfl))
    save_file(
        {k: v.contiguous() for k, v in bfl_to_diffusers(sd, len(cfg.channels)).items()},
        str(folder / "diffusion_pytorch_model.safetensors"),
    )
    (folder / "config.json").write_text(json.dumps(diffusers_config(cfg), indent=2) + "\n")
    return {"bfl": bfl, "diffusers": folder}
