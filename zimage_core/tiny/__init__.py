"""Small random Z-Image models in the real file formats, for smoke tests without 20 GB of downloads.

`make_tiny(out)` writes a ComfyUI-style models folder and a diffusers-format model folder:

    out/diffusion_models/z_image_tiny.safetensors    ComfyUI single-file DiT
    out/text_encoders/qwen_3_4b_tiny.safetensors      ComfyUI single-file Qwen3
    out/vae/ae_tiny.safetensors                       BFL Flux VAE
    out/tokenizer/                                    Qwen-style tokenizer for the single-file encoder
    out/Z-Image-Tiny/                                 diffusers layout: transformer/ text_encoder/ tokenizer/ vae/ scheduler/
    out/model_patches/controlnet_tiny_<v>.safetensors ControlNet Union files, v = 1.0, 2.0, 2.1, lite, tile, inpaint (VideoX-Fun
                                                      layout), and controlnet_tiny_<v>/ (diffusers folders)
    out/loras/z_image_tiny_<kind>.safetensors         one adapter file per kind: lora, dora, loha, lokr, glora,
                                                      oft, boft, diff (trainers' key styles; see tiny/adapters.py)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .adapters import write_tiny_adapters
from .controlnet import write_tiny_controlnets
from .dit import write_tiny_dit
from .text_encoder import write_tiny_text_encoder
from .vae import write_tiny_vae

DIFFUSERS_NAME = "Z-Image-Tiny"


def tiny_paths(out: Path) -> dict[str, Path]:
    out = Path(out)
    return {
        "dit": out / "diffusion_models" / "z_image_tiny.safetensors",
        "text_encoder": out / "text_encoders" / "qwen_3_4b_tiny.safetensors",
        "vae": out / "vae" / "ae_tiny.safetensors",
        "tokenizer": out / "tokenizer",
        "diffusers": out / DIFFUSERS_NAME,
        "controlnets": out / "model_patches",
        "loras": out / "loras",
    }


def write_diffusers_index(model: Path) -> None:
    """The diffusers model folder's `model_index.json` and Turbo `scheduler/` config (shift 3)."""
    (model / "scheduler").mkdir(parents=True, exist_ok=True)
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": False}, indent=1))
    (model / "model_index.json").write_text(json.dumps({
        "_class_name": "ZImagePipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=1))


def make_tiny(out: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny model set (idempotent: an existing complete set is kept)."""
    paths = tiny_paths(out)
    if all(p.exists() for p in paths.values()):
        return paths
    model = paths["diffusers"]
    dit = write_tiny_dit(model, seed=seed)
    te = write_tiny_text_encoder(model, seed=seed)
    vae = write_tiny_vae(model, seed=seed)
    write_diffusers_index(model)
    for key, written in (("dit", dit["native"]), ("text_encoder", te["single_file"]), ("vae", vae["bfl"])):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(written), paths[key])
    shutil.copytree(model / "tokenizer", paths["tokenizer"], dirs_exist_ok=True)
    write_tiny_controlnets(paths["controlnets"], seed=seed)
    write_tiny_adapters(paths["loras"], seed=seed)
    return paths
