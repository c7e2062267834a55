"""Quantized DiTs in a real ComfyUI with ComfyUI-GGUF installed: our loader lists the .gguf files and its
image equals ComfyUI-GGUF's UnetLoaderGGUF + native KSampler on the same file (<= 1/255); a comfy_quant fp8
file through ComfyUI's own UNETLoader + KSampler equals ours the same way, and so does one with nvfp4 and mxfp8
layers.

ComfyUI detects Z-Image only at dim 3840 (and builds 2 + 2 refiner blocks), so the file is a full-width
random DiT with one main layer, its big matrices random Q8_0 blocks (~1 GB). Both graphs share our text
encoder (the tiny one: cap_feat_dim is read from the file) and VAE decode, so only the DiT path differs.
The server is the session's (tests/conftest.py), which loads ComfyUI-GGUF beside our pack
(tests/setup-host.sh puts it there).
"""
import numpy as np
import pytest
from PIL import Image

PROMPT = "a red fox in the snow at sunrise"


@pytest.fixture(scope="module")
def server(comfyui_host, tiny, tmp_path_factory):
    from zimage_core.tiny.quantized import write_random_gguf_dit
    from zimage_core.model.transformer import DiTConfig

    host = comfyui_host
    assert "UnetLoaderGGUF" in host.object_info(), "ComfyUI-GGUF is not loaded: run tests/setup-host.sh"
    d = tmp_path_factory.mktemp("gguf_host")
    cfg = DiTConfig(dim=3840, n_layers=1, n_refiner_layers=2, n_heads=30, ffn_dim=10240, cap_feat_dim=64)
    dit = write_random_gguf_dit(d / "z_image_wide-Q8_0.gguf", cfg, "Q8_0", seed=1)
    cq = _write_comfy_quant(d / "z_image_wide_fp8_comfy_quant.safetensors", cfg, lambda layer: "float8_e4m3fn")
    # the main layer's feed-forward matrices nvfp4, its attention matrices mxfp8, the refiners bf16: both packed
    # formats and plain layers in one file (mixed precision; fewer quantized layers keep the file quick to write)
    fp4 = _write_comfy_quant(d / "z_image_wide_nvfp4_mxfp8.safetensors", cfg, lambda layer: None if not layer.startswith(
        "layers.") else "nvfp4" if ".feed_forward." in layer else "mxfp8")
    host.put_model("diffusion_models", "z_image_wide-Q8_0.gguf", dit)
    host.put_model("diffusion_models", "z_image_wide_fp8_comfy_quant.safetensors", cq)
    host.put_model("diffusion_models", "z_image_wide_nvfp4_mxfp8.safetensors", fp4)
    host.put_model("text_encoders", "qwen_3_4b_tiny.safetensors", tiny["text_encoder"])
    host.put_model("text_encoders", "tokenizer", tiny["tokenizer"])
    host.put_model("vae", "ae_tiny.safetensors", tiny["vae"])
    yield host
    for name in ("z_image_wide-Q8_0.gguf", "z_image_wide_fp8_comfy_quant.safetensors",
                 "z_image_wide_nvfp4_mxfp8.safetensors"):
        host.remove_model("diffusion_models", name)
    host.free()  # the ~1 GB wide models leave the shared server's memory


def _write_comfy_quant(path, cfg, fmt_of):
    """A random DiT whose block matrices are comfy_quant layers of format `fmt_of(layer)` (None: bf16), stored as ComfyUI
    stores them: float8 (weight + per-tensor weight_scale), nvfp4 (packed E2M1 weight, fp8 block weight_scale
    in the tiled layout, per-tensor weight_scale_2; quantized by comfy-kitchen) or mxfp8 (fp8 weight, E8M0
    block weight_scale as uint8)."""
    import json

    import torch
    from safetensors.torch import save_file

    from zimage_core.model.transformer import ZImageDiT

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZImageDiT(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(2)
    sd = {}
    for name, shape in shapes.items():
        t = (1 + 0.1 * torch.randn(shape, generator=g)) if "norm" in name else (
            torch.randn(shape, generator=g) * (0.5 / shape[-1] ** 0.5))
        layer = name[: -len(".weight")]
        fmt = fmt_of(layer) if name.endswith(".weight") and len(shape) == 2 and layer.startswith(
            ("layers.", "noise_refiner.", "context_refiner.")) else None
        if fmt is not None:
            if fmt == "nvfp4":
                import comfy_kitchen as ck

                scale = (t.abs().amax() / (448 * 6)).float()
                sd[name], sd[layer + ".weight_scale"] = ck.quantize_nvfp4(t, scale, pad_16x=False)
                sd[layer + ".weight_scale_2"] = scale
            elif fmt == "mxfp8":
                import comfy_kitchen as ck

                sd[name], block_scale = ck.quantize_mxfp8(t, pad_32x=False)
                sd[layer + ".weight_scale"] = block_scale.view(torch.uint8)
            else:
                scale = (t.abs().amax() / 448).float()
                sd[name] = (t / scale).to(torch.float8_e4m3fn)
                sd[layer + ".weight_scale"] = scale
            sd[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
        else:
            sd[name] = t.to(torch.bfloat16)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _ours_vs_native(server, name, native_loader, seed, steps=1):
    """One graph: our loader + ZImageSampler and `native_loader` (+ native KSampler) on the same file, sharing our
    text encoder, latent and VAE decode; returns (ours, native) as 8-bit pixel arrays."""
    g = {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": name, "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": "qwen_3_4b_tiny.safetensors", "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": "ae_tiny.safetensors"}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "ZImageSampler",
              "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": seed, "steps": steps,
                         "cfg": 1.0, "shift": 3.0, "denoise": 1.0}},
        "7": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "ours_quant"}},
        "11": native_loader,
        "12": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "16": {"class_type": "KSampler",
               "inputs": {"model": ["11", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                          "scheduler": "simple", "positive": ["4", 0], "negative": ["12", 0],
                          "latent_image": ["5", 0], "denoise": 1.0}},
        "17": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["16", 0]}},
        "18": {"class_type": "SaveImage", "inputs": {"images": ["17", 0], "filename_prefix": "native_quant"}},
    }
    entry = server.run(g, timeout=900)
    return _png(server, entry, "8"), _png(server, entry, "18")


def _png(server, entry, node):
    files = server.output_files(entry, node)
    assert len(files) == 1, entry.get("outputs")
    return np.asarray(Image.open(files[0]).convert("RGB")).astype(np.int16)


def test_gguf_files_are_listed_and_our_image_equals_comfyui_gguf_with_native_sampling(server):
    info = server.object_info()
    assert "UnetLoaderGGUF" in info, server.log_tail()
    name = "z_image_wide-Q8_0.gguf"
    assert name in info["ZImageDiTLoader"]["input"]["required"]["dit_name"][0]
    # one full-width DiT evaluation per implementation (~20 s each on 2 CPU cores)
    ours, native = _ours_vs_native(server, name, {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": name}}, 5)
    assert native.std() > 5
    assert np.abs(ours - native).max() <= 1


def test_comfy_quant_fp8_file_native_unet_loader_equals_ours(server):
    name = "z_image_wide_fp8_comfy_quant.safetensors"
    ours, native = _ours_vs_native(
        server, name, {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}, 9)
    assert native.std() > 5
    assert np.abs(ours - native).max() <= 1


def test_nvfp4_and_mxfp8_comfy_quant_file_native_unet_loader_equals_ours(server):
    """On the CPU ComfyUI's mixed-precision ops cannot compute in nvfp4/mxfp8 (supports_nvfp4_compute and
    supports_mxfp8_compute need an NVIDIA GPU of compute capability 10+), so they dequantize those layers with
    comfy-kitchen and multiply in full precision: the same arithmetic ours does."""
    name = "z_image_wide_nvfp4_mxfp8.safetensors"
    ours, native = _ours_vs_native(
        server, name, {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}, 11)
    assert native.std() > 5
    assert np.abs(ours - native).max() <= 1
