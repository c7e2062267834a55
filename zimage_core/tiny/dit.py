"""Small random Z-Image DiTs in the real file layouts (ComfyUI single file, sharded diffusers folder)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.dit_loader import native_to_diffusers
from ..model.transformer import DiTConfig, ZImageDiT

TINY_DIT = DiTConfig(dim=64, n_layers=2, n_refiner_layers=2, n_heads=4, ffn_dim=170, cap_feat_dim=64)


def random_dit_state(cfg: DiTConfig, seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with activations of a sensible size (norm weights near 1, fan-in scaled matrices).
    `device`/`dtype`: where they are drawn and how they are stored (the full-size GPU check draws 6B values
    on the GPU in bf16; the defaults give the CPU tensors the tests have always used)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ZImageDiT(cfg).state_dict().items()}
    g = torch.Generator(device).manual_seed(seed)
    return {name: random_dit_tensor(name, shape, g, device).to(dtype).contiguous() for name, shape in shapes.items()}


def random_dit_tensor(name: str, shape, g: torch.Generator, device: str | torch.device = "cpu") -> torch.Tensor:
    """One fp32 tensor of `random_dit_state` (also drawn alone, e.g. to stream a full-size file to disk)."""
    if "norm" in name:
        return 1 + 0.1 * torch.randn(shape, generator=g, device=device)
    if len(shape) == 2 and "pad_token" not in name:
        return torch.randn(shape, generator=g, device=device) * (0.5 / shape[1] ** 0.5)
    return 0.1 * torch.randn(shape, generator=g, device=device)


def diffusers_config(cfg: DiTConfig) -> dict:
    return {
        "_class_name": "ZImageTransformer2DModel",
        "all_patch_size": [cfg.patch_size], "all_f_patch_size": [1], "in_channels": cfg.in_channels,
        "dim": cfg.dim, "n_layers": cfg.n_layers, "n_refiner_layers": cfg.n_refiner_layers,
        "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_heads, "norm_eps": cfg.norm_eps, "qk_norm": True,
        "cap_feat_dim": cfg.cap_feat_dim, "rope_theta": cfg.rope_theta, "t_scale": 1000.0,
        "axes_dims": list(cfg.axes_dims), "axes_lens": [1536, 512, 512],
    }


def write_diffusers_folder(state: dict[str, torch.Tensor], cfg: DiTConfig, folder: Path, shards: int = 2) -> Path:
    """`transformer/` layout: config.json + sharded diffusion_pytorch_model-0000i-of-0000n.safetensors + index."""
    folder.mkdir(parents=True, exist_ok=True)
    dsd = native_to_diffusers(state)
    keys = sorted(dsd)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: dsd[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in dsd.values())
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(diffusers_config(cfg), indent=1))
    return folder


def write_tiny_dit(out_dir: Path, cfg: DiTConfig = TINY_DIT, seed: int = 0) -> dict[str, Path]:
    """Writes `z_image_tiny.safetensors` (ComfyUI layout) and `transformer/` (diffusers layout), same weights."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = random_dit_state(cfg, seed)
    single = out_dir / "z_image_tiny.safetensors"
    save_file(state, str(single))
    return {"native": single, "diffusers": write_diffusers_folder(state, cfg, out_dir / "transformer")}
