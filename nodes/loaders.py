"""Loader nodes: Z-Image DiT, Qwen3 text encoder, Flux VAE, from ComfyUI's model folders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..zimage_core.adapters.patching import PatchedDiT
from ..zimage_core.model.dit_loader import WEIGHT_DTYPES, load_dit
from ..zimage_core.model.text_encoder import TextEncoder, load_text_encoder
from ..zimage_core.model.vae import FluxVAE, load_vae
from ..zimage_core.weights.offload import (
    MEMORY_PRESETS,
    blocks_to_keep,
    check_memory_preset,
    enable_block_offload,
)
from . import host

TE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(eq=False)
class TextEncoderModel:
    """ZIMAGE_TEXT_ENCODER: the loaded Qwen3 encoder and the ComfyUI ModelPatcher managing it (None standalone)."""

    encoder: TextEncoder
    patcher: Any = None
    name: str = ""

    def load(self, memory_required: int = 0) -> TextEncoder:
        """Put the encoder on its load device (ComfyUI may evict other models) and return it."""
        host.load_to_device([self.patcher], memory_required)
        self.encoder.device = host.module_device(self.encoder.model)
        return self.encoder


@dataclass(eq=False)
class VAEModel:
    """ZIMAGE_VAE: the loaded Flux VAE and its ModelPatcher (None standalone)."""

    vae: FluxVAE
    patcher: Any = None
    name: str = ""

    def load(self, memory_required: int = 0) -> FluxVAE:
        host.load_to_device([self.patcher], memory_required)
        return self.vae


def load_dit_model(path, weight_dtype: str = "auto", memory: str = "auto") -> PatchedDiT:
    """Load a DiT on the offload device with the compute dtype of the load device, wrapped for ComfyUI.

    On a GPU the weights stay memory-mapped until ComfyUI moves them; on the CPU they are read into
    ordinary memory (faster matmuls than file-backed pages). A memory preset that does not fit the whole
    DiT on the GPU turns on block streaming, and ComfyUI then manages only the part kept on the GPU.
    """
    check_memory_preset(memory)
    load_dev, offload_dev = host.devices("dit")
    dit = load_dit(path, weight_dtype, offload_dev, compute_device=load_dev)
    managed = dit
    keep = blocks_to_keep(dit, memory, host.total_memory(load_dev)) if load_dev.type == "cuda" else None
    if keep is not None:
        managed = enable_block_offload(dit, keep, load_dev).resident()
    return PatchedDiT(dit, (), host=host.manage(managed, "dit"))


class ZImageDiTLoader:
    DESCRIPTION = ("Loads a Z-Image / Z-Image-Turbo diffusion transformer (S3-DiT) from models/diffusion_models "
                   "(ComfyUI single file, bf16/fp8/scaled fp8, or a GGUF file Q8_0 ... Q2_K kept quantized in memory) or a "
                   "diffusers model folder in models/diffusers.")
    CATEGORY = "Z-Image/loaders"
    RETURN_TYPES = ("ZIMAGE_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The Z-Image DiT, for ZImageSampler (and LoRA / adaLN nodes of this pack).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit_name": (host.model_names("diffusion_models"), {
                "tooltip": "The DiT weights: a file in models/diffusion_models (e.g. z_image_turbo_bf16.safetensors, "
                           "or a .gguf from models/diffusion_models or models/unet) or a diffusers folder in models/diffusers (shown as diffusers/<folder>)."}),
            "weight_dtype": (["auto", *WEIGHT_DTYPES], {
                "default": "auto",
                "tooltip": "Storage dtype of the weights. auto keeps the file's dtype (fp32 files become bf16 on a "
                           "GPU); fp8 halves memory at a small quality cost. GGUF weights always stay quantized."}),
        }, "optional": {
            "memory": (list(MEMORY_PRESETS), {
                "default": "auto",
                "tooltip": "GPU memory preset. auto: keep the whole DiT on the GPU when it fits, else stream blocks; "
                           "high: always whole; 12GB / 8GB / 6GB: keep only some transformer blocks on the GPU and "
                           "stream the rest from pinned CPU memory (slower, much less VRAM). No effect on the CPU."}),
        }}

    def load(self, dit_name, weight_dtype="auto", memory="auto"):
        return (load_dit_model(host.resolve("diffusion_models", dit_name), weight_dtype, memory),)


class ZImageTextEncoderLoader:
    DESCRIPTION = ("Loads the Qwen3-4B text encoder of Z-Image from models/text_encoders (qwen_3_4b.safetensors, "
                   "fp8, a llama.cpp .gguf, a text_encoder folder) or a diffusers folder in models/diffusers, with its "
                   "tokenizer. The weights keep their stored dtype; ComfyUI offloads the encoder when the DiT needs "
                   "the memory.")
    CATEGORY = "Z-Image/loaders"
    RETURN_TYPES = ("ZIMAGE_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The Qwen3 text encoder, for ZImageTextEncode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (host.model_names("text_encoders"), {
                "tooltip": "The Qwen3 weights: a file in models/text_encoders (e.g. qwen_3_4b.safetensors, or a "
                           "llama.cpp .gguf from models/text_encoders or models/clip), a Hugging Face text_encoder "
                           "folder there, or a diffusers folder in models/diffusers."}),
            "dtype": (["auto", *TE_DTYPES], {
                "default": "auto",
                "tooltip": "Compute dtype. auto: ComfyUI's text-encoder dtype on a GPU (usually bf16), fp32 on the CPU. "
                           "The weights stay in the file's dtype (bf16, fp8, GGUF; memory-mapped on the CPU) and are "
                           "cast one layer at a time, so a bf16 Qwen3-4B needs 8 GB, not 16."}),
            "device": (["default", "cpu"], {
                "default": "default",
                "tooltip": "default: ComfyUI's text-encoder device (the GPU when it fits); cpu: always run on the CPU, "
                           "saving GPU memory for the DiT (slower encoding)."}),
        }}

    def load(self, text_encoder_name, dtype="auto", device="default"):
        path = host.resolve("text_encoders", text_encoder_name)
        force_cpu = device == "cpu"
        load_dev, offload_dev = host.devices("text_encoder", force_cpu)
        dt = TE_DTYPES[dtype] if dtype != "auto" else host.text_encoder_dtype(load_dev)
        te = load_text_encoder(path, dtype=dt, device=offload_dev, fallback_dirs=host.tokenizer_fallback_dirs(path))
        return (TextEncoderModel(te, host.manage(te.model, "text_encoder", force_cpu), text_encoder_name),)


class ZImageVAELoader:
    DESCRIPTION = ("Loads the Flux VAE (ae.safetensors) used by Z-Image from models/vae, or the vae of a diffusers "
                   "folder in models/diffusers.")
    CATEGORY = "Z-Image/loaders"
    RETURN_TYPES = ("ZIMAGE_VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The Flux VAE, for ZImageVAEDecode / ZImageVAEEncode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (host.model_names("vae"), {
                "tooltip": "The Flux VAE: a file in models/vae (e.g. ae.safetensors) or a diffusers folder in "
                           "models/diffusers."}),
        }}

    def load(self, vae_name):
        path = host.resolve("vae", vae_name)
        load_dev, offload_dev = host.devices("vae")
        vae = load_vae(path, dtype=host.vae_dtype(load_dev), device=offload_dev)
        return (VAEModel(vae, host.manage(vae, "vae"), vae_name),)


NODE_CLASS_MAPPINGS = {
    "ZImageDiTLoader": ZImageDiTLoader,
    "ZImageTextEncoderLoader": ZImageTextEncoderLoader,
    "ZImageVAELoader": ZImageVAELoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ZImageDiTLoader": "Z-Image DiT Loader",
    "ZImageTextEncoderLoader": "Z-Image Text Encoder Loader",
    "ZImageVAELoader": "Z-Image VAE Loader",
}
