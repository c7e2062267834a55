"""ZImageSampler's sampler_name / scheduler inside a real ComfyUI server: ComfyUI's own samplers and schedulers
run on our DiT through the host adapter, and agree with the core's samplers run standalone (same seed).

Not compared: native KSampler on UNETLoader's MODEL; ComfyUI builds a Z-Image MODEL only from a real-size
(dim 3840) DiT, so the tiny file cannot load natively (see test_comfyui_integration.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

PROMPT = "a lighthouse on a cliff"


@pytest.fixture(scope="module")
def server(comfyui_host, tiny):
    """The session's ComfyUI server with the tiny models."""
    comfyui_host.put_model("diffusion_models", "z_image_tiny.safetensors", tiny["dit"])
    comfyui_host.put_model("text_encoders", "qwen_3_4b_tiny.safetensors", tiny["text_encoder"])
    comfyui_host.put_model("text_encoders", "tokenizer", tiny["tokenizer"])
    comfyui_host.put_model("vae", "ae_tiny.safetensors", tiny["vae"])
    return comfyui_host, tiny


def _graph(sampler_name, scheduler, seed=42, steps=4):
    return {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": "z_image_tiny.safetensors", "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": "qwen_3_4b_tiny.safetensors", "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": "ae_tiny.safetensors"}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "ZImageEmptyLatent",
              "inputs": {"resolution": "custom", "width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "ZImageSampler",
              "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": seed, "steps": steps,
                         "cfg": 1.0, "shift": 3.0, "denoise": 1.0, "sampler_name": sampler_name,
                         "scheduler": scheduler}},
        "7": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"s_{sampler_name}"}},
    }


def test_sampler_lists_are_ksamplers_plus_the_zimage_schedule(server):
    host, _ = server
    info = host.object_info()
    ours = info["ZImageSampler"]["input"]["optional"]
    native = info["KSampler"]["input"]["required"]
    assert ours["sampler_name"][0] == native["sampler_name"][0]
    assert ours["scheduler"][0] == ["zimage"] + native["scheduler"][0]


@pytest.mark.parametrize("sampler_name,scheduler", [("res_multistep", "simple"), ("dpmpp_2m_sde", "karras"),
                                                    ("uni_pc", "beta")])
def test_comfyui_sampler_on_our_dit_matches_the_core_sampler(server, sampler_name, scheduler):
    host, paths = server
    entry = host.run(_graph(sampler_name, scheduler))
    (png,) = host.output_files(entry, "8")
    got = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)

    from zimage_core.pipeline import ZImagePipeline

    pipe = ZImagePipeline.from_files(paths["dit"], paths["diffusers"], paths["vae"])
    ref = pipe.generate(PROMPT, width=64, height=48, steps=4, seed=42, sampler=sampler_name, scheduler=scheduler)
    ref = (ref[0].numpy() * 255).round().astype(np.int16)  # SaveImage: clip(255 * x) then uint8
    diff = np.abs(got - ref).max()
    print(f"server {sampler_name}/{scheduler} vs core: max pixel difference {diff}/255")
    assert diff <= 1
