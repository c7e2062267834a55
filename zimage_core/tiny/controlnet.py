"""Tiny random Z-Image ControlNet Union files of each released variant, for the tiny DiT (TINY_DIT).

Written in the released layouts: the VideoX-Fun single file (diffusers key names, only the branch's own
`control_*` tensors) and a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..adapters.controlnet import ControlNetConfig, ZImageControlNet
from ..model.transformer import DiTConfig
from .dit import TINY_DIT

# name -> (our variant, control_in_dim, control layers); the released files have 6 / 15 / 15 / 3 layers over 30.
# "tile" is the 2.1 layout trained on blurred/low-resolution control images (VideoX-Fun runs it with its 2.1
# config); "inpaint" is a 2.1-layout file meant to be used with its inpaint input (the 33-channel files' extra
# 17 channels: keep mask and masked-image latent). Both differ from 2.1 only in their weights.
TINY_VARIANTS = {
    "1.0": ("plain", 16, 2),
    "2.0": ("layers", 33, 2),
    "2.1": ("refiner", 33, 2),
    "lite": ("refiner", 33, 1),
    "tile": ("refiner", 33, 2),
    "inpaint": ("refiner", 33, 2),
}
DIFFUSERS_MODE = {"plain": None, "layers": "control_layers", "refiner": "control_noise_refiner"}


def controlnet_config(variant: str, dit: DiTConfig = TINY_DIT) -> ControlNetConfig:
    kind, in_dim, n = TINY_VARIANTS[variant]
    return ControlNetConfig(dim=dit.dim, n_heads=dit.n_heads, ffn_dim=dit.ffn_dim, control_in_dim=in_dim,
                            n_control_layers=n, variant=kind, n_refiner_layers=dit.n_refiner_layers)


def random_controlnet_state(cfg: ControlNetConfig, seed: int = 0,
                            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in diffusers/VideoX-Fun names (q/k/v split), norms near 1, fan-in scaled matrices
    (the released projections are trained, not zero, so the hints are not zero either); stored as `dtype`
    tensor by tensor (a 3840-wide file in bf16 never holds an fp32 copy)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ZImageControlNet(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if "norm" in name:
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) * (0.5 / shape[-1] ** 0.5)
        t = t.to(dtype)
        if name.endswith(".attention.qkv.weight"):
            base = name[: -len(".attention.qkv.weight")]
            for part, w in zip(("to_q", "to_k", "to_v"), t.chunk(3)):
                out[f"{base}.attention.{part}.weight"] = w.contiguous()
            continue
        for a, b in ((".attention.out.", ".attention.to_out.0."), (".attention.q_norm.", ".attention.norm_q."),
                     (".attention.k_norm.", ".attention.norm_k.")):
            name = name.replace(a, b)
        out[name] = t.contiguous()
    if cfg.variant == "layers":  # 2.0 files ship an untrained, all-zero control_noise_refiner
        ref = random_controlnet_state(
            ControlNetConfig(**{**cfg.__dict__, "variant": "refiner"}), seed, dtype)
        out.update({k: torch.zeros_like(v) for k, v in ref.items() if k.startswith("control_noise_refiner.")})
    return out


def diffusers_config(cfg: ControlNetConfig, n_dit_layers: int) -> dict:
    return {
        "_class_name": "ZImageControlNetModel",
        "control_layers_places": cfg.places(n_dit_layers),
        "control_refiner_layers_places": list(range(cfg.n_refiner_layers)),
        "control_in_dim": cfg.control_in_dim, "add_control_noise_refiner": DIFFUSERS_MODE[cfg.variant],
        "all_patch_size": [2], "all_f_patch_size": [1], "dim": cfg.dim, "n_refiner_layers": cfg.n_refiner_layers,
        "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_heads, "norm_eps": 1e-5, "qk_norm": True,
    }


def write_tiny_controlnets(out_dir: Path, seed: int = 0, dit: DiTConfig = TINY_DIT) -> dict[str, Path]:
    """`controlnet_tiny_<variant>.safetensors` (VideoX-Fun single file) and `controlnet_tiny_<variant>/`
    (diffusers folder) for each variant; returns {variant: file, variant + '/diffusers': folder}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, variant in enumerate(TINY_VARIANTS):
        cfg = controlnet_config(variant, dit)
        state = random_controlnet_state(cfg, seed + i)
        single = out_dir / f"controlnet_tiny_{variant}.safetensors"
        save_file(state, str(single))
        folder = out_dir / f"controlnet_tiny_{variant}"
        folder.mkdir(exist_ok=True)
        if cfg.variant == "layers":  # diffusers drops the unused refiner of 2.0
            state = {k: v for k, v in state.items() if not k.startswith("control_noise_refiner.")}
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
        (folder / "config.json").write_text(json.dumps(diffusers_config(cfg, dit.n_layers), indent=1))
        paths[variant], paths[variant + "/diffusers"] = single, folder
    return paths
