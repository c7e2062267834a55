"""Every adapter kind against ComfyUI's own loader, in process: our LoRA node + our sampler on our DiT versus
`LoraLoaderModelOnly` (comfy.sd.load_lora_for_models) + KSampler on ComfyUI's own NextDiT holding the same
weights (the model UNETLoader builds; fixtures of test_model_bridge.py).

Where ComfyUI 0.18.1 deliberately or accidentally computes something else, the difference is asserted
exactly instead (README, "LoRA"): DoRA on the output axis (ComfyUI divides by ||W||, the trainers by
||W + dW||), OFT's strength (ComfyUI applies it twice: W + s^2 (R^T - I) W) and `.set_weight` (ComfyUI
ignores the strength).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_model_bridge import (  # noqa: F401  (bridge: the fixture; comfy: imported there from COMFYUI_PATH)
    CFG,
    LATENT,
    bridge,
    comfy,
    cond,
    ksample,
    native_model,
    our_sampler,
)

D = CFG.dim
FF = 682  # the feed-forward width of this DiT


def _r(g, *shape, s=0.1):
    return torch.randn(*shape, generator=g) * s


def _file(kind: str, state: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A small adapter file of one kind, on split q/k/v rows and plain Linears, in the key styles LyCORIS,
    SimpleTuner and ComfyUI write."""
    sd = {}
    if kind == "lora":
        for k, o, i in (("lycoris_layers_0_attention_to_k", D, D), ("diffusion_model.layers.1.feed_forward.w2", D, FF)):
            sd |= {f"{k}.lora_down.weight": _r(g, 4, i), f"{k}.lora_up.weight": _r(g, o, 4), f"{k}.alpha": torch.tensor(2.0)}
    elif kind == "loha":
        for k, o, i in (("lycoris_layers_0_attention_to_v", D, D), ("diffusion_model.layers.1.feed_forward.w1", FF, D)):
            sd |= {f"{k}.hada_w1_a": _r(g, o, 3, s=0.3), f"{k}.hada_w1_b": _r(g, 3, i, s=0.3),
                   f"{k}.hada_w2_a": _r(g, o, 3, s=0.3), f"{k}.hada_w2_b": _r(g, 3, i, s=0.3),
                   f"{k}.alpha": torch.tensor(1.5)}
    elif kind == "lokr":
        k = "lycoris_layers_0_attention_to_out_0"
        sd |= {f"{k}.lokr_w1_a": _r(g, 16, 2, s=0.5), f"{k}.lokr_w1_b": _r(g, 2, 16, s=0.5),
               f"{k}.lokr_w2": _r(g, 16, 16, s=0.2), f"{k}.alpha": torch.tensor(1.0)}
        k = "diffusion_model.layers.1.feed_forward.w3"  # 682 = 2 * 341 rows, 256 = 16 * 16 columns
        sd |= {f"{k}.lokr_w1": _r(g, 2, 16, s=0.5), f"{k}.lokr_w2": _r(g, 341, 16, s=0.2)}
    elif kind == "glora":
        for k, o, i in (("lycoris_layers_0_attention_to_q", D, D), ("diffusion_model.layers.1.feed_forward.w2", D, FF)):
            sd |= {f"{k}.a1.weight": _r(g, i, 3, s=0.3), f"{k}.a2.weight": _r(g, 3, i, s=0.3),
                   f"{k}.b1.weight": _r(g, o, 3), f"{k}.b2.weight": _r(g, 3, i), f"{k}.alpha": torch.tensor(1.5)}
    elif kind == "oft":
        k = "diffusion_model.layers.0.attention.out"
        sd |= {f"{k}.oft_blocks": _r(g, 4, 64, 64, s=0.05), f"{k}.alpha": torch.tensor(0.0)}
    elif kind == "boft":
        k = "lycoris_layers_1_attention_to_out_0"
        sd |= {f"{k}.oft_blocks": _r(g, 2, 64, 4, 4, s=0.2), f"{k}.rescale": 1 + _r(g, D, 1),
               f"{k}.alpha": torch.tensor(0.0)}
    elif kind == "full":
        sd["diffusion_model.layers.0.attention.out.diff"] = _r(g, D, D, s=0.02)
        sd["diffusion_model.layers.1.adaLN_modulation.0.diff_b"] = _r(g, 4 * D)
    elif kind == "set_weight":
        w = state["layers.1.feed_forward.w1.weight"]
        sd["diffusion_model.layers.1.feed_forward.w1.set_weight"] = w + _r(g, *w.shape, s=0.02)
    elif kind in ("dora_in", "dora_out"):
        k = "diffusion_model.layers.1.feed_forward.w2"
        w = state["layers.1.feed_forward.w2.weight"]
        mag = (w.norm(dim=0, keepdim=True) if kind == "dora_in" else w.norm(dim=1, keepdim=True)) * 1.2
        sd |= {f"{k}.lora_down.weight": _r(g, 4, FF), f"{k}.lora_up.weight": _r(g, D, 4), f"{k}.alpha": torch.tensor(4.0),
               f"{k}.dora_scale": mag}
    elif kind == "mixed":  # LoRA on attention + LoHa on the FFN + a bias diff
        sd |= _file("lora", state, g) | _file("loha", state, g)
        sd["diffusion_model.layers.0.adaLN_modulation.0.diff_b"] = _r(g, 4 * D)
    return sd


def _images(b, f, strength, comfy_strength=None):
    """(ours, ComfyUI's, plain) latents for the adapter file `f`."""
    lora_node = b["mod"]("nodes.lora").ZImageLoraLoader()
    (with_lora,) = lora_node.apply(b["patched"], str(f), strength)
    assert with_lora.patches[-1].report.unused == []
    latent = LATENT[:1]
    ours = our_sampler(b, with_lora, cond(1), latent)
    plain = our_sampler(b, b["patched"], cond(1), latent)
    native, _ = comfy.sd.load_lora_for_models(native_model(b), None, comfy.utils.load_torch_file(str(f)),
                                              strength if comfy_strength is None else comfy_strength, 0)
    return ours, ksample(native, cond(1), latent), plain


def _close(a, b):
    return (a - b).abs().max() <= 1e-3 * b.abs().max()


@pytest.mark.parametrize("kind,strength", [("lora", 0.8), ("loha", 0.8), ("lokr", 0.8), ("glora", 0.8), ("oft", 1.0),
                                           ("boft", 1.0), ("full", 0.8), ("set_weight", 1.0), ("dora_in", 0.8),
                                           ("mixed", 0.7)])
def test_our_lora_node_equals_lora_loader_model_only_on_the_native_model(bridge, tmp_path, kind, strength):  # noqa: F811
    f = tmp_path / f"{kind}.safetensors"
    save_file(_file(kind, bridge["state"], torch.Generator().manual_seed(31)), str(f))
    ours, native, plain = _images(bridge, f, strength)
    assert (ours - plain).abs().max() > 1e-2, "the adapter changes the image"
    assert _close(ours, native)


def test_dora_on_the_output_axis_differs_from_comfyui_exactly_by_its_norm_of_w(bridge, tmp_path):  # noqa: F811
    state = bridge["state"]
    sd = _file("dora_out", state, torch.Generator().manual_seed(31))
    save_file(sd, str(tmp_path / "dora.safetensors"))
    ours, native, _ = _images(bridge, tmp_path / "dora.safetensors", 1.0)
    assert not _close(ours, native)
    # ComfyUI's weight_decompose: W' = m * (W + dW) / ||W|| per output row. Given as a .set_weight, our loader
    # reproduces ComfyUI's image, so the difference is that norm alone.
    k = "diffusion_model.layers.1.feed_forward.w2"
    w = state["layers.1.feed_forward.w2.weight"].float()
    dw = sd[f"{k}.lora_up.weight"] @ sd[f"{k}.lora_down.weight"] * (4.0 / 4)
    comfy_w = sd[f"{k}.dora_scale"] * (w + dw) / (w.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps)
    save_file({f"{k}.set_weight": comfy_w}, str(tmp_path / "comfy_dora.safetensors"))
    as_comfy, _, _ = _images(bridge, tmp_path / "comfy_dora.safetensors", 1.0)
    assert _close(as_comfy, native)


def test_comfyui_applies_the_oft_strength_twice(bridge, tmp_path):  # noqa: F811
    f = tmp_path / "oft.safetensors"
    save_file(_file("oft", bridge["state"], torch.Generator().manual_seed(31)), str(f))
    ours_s2, native_s, _ = _images(bridge, f, 0.6 ** 2, comfy_strength=0.6)  # W + s^2 (R^T - I) W in ComfyUI
    assert _close(ours_s2, native_s)
    ours_s, _, _ = _images(bridge, f, 0.6)
    assert not _close(ours_s, native_s)


# ---------------------------------------------------------------------------------------- the real server

WIDE = {"dim": 3840, "n_layers": 1, "n_refiner_layers": 2, "n_heads": 30, "ffn_dim": 10240, "cap_feat_dim": 64}


def _wide_mixed_file(g: torch.Generator) -> dict[str, torch.Tensor]:
    """One file mixing every kind ComfyUI applies, on the 3840-wide DiT's main layer (a kind per module)."""
    d, f, L = 3840, 10240, "layers.0"
    sd = {}
    for p in "qkv":  # LoRA on the split q/k/v rows (diffusers names)
        k = f"transformer.{L}.attention.to_{p}"
        sd |= {f"{k}.lora_A.weight": _r(g, 8, d, s=d ** -0.5), f"{k}.lora_B.weight": _r(g, d, 8, s=0.05)}
    k = f"lycoris_{L.replace('.', '_')}_feed_forward_w1"  # LoHa
    sd |= {f"{k}.hada_w1_a": _r(g, f, 2, s=0.2), f"{k}.hada_w1_b": _r(g, 2, d, s=d ** -0.5),
           f"{k}.hada_w2_a": _r(g, f, 2, s=0.2), f"{k}.hada_w2_b": _r(g, 2, d, s=d ** -0.5), f"{k}.alpha": torch.tensor(2.0)}
    k = f"diffusion_model.{L}.feed_forward.w3"  # GLoRA
    sd |= {f"{k}.a1.weight": _r(g, d, 2, s=0.1), f"{k}.a2.weight": _r(g, 2, d, s=0.1), f"{k}.b1.weight": _r(g, f, 2, s=0.05),
           f"{k}.b2.weight": _r(g, 2, d, s=d ** -0.5), f"{k}.alpha": torch.tensor(2.0)}
    k = f"diffusion_model.{L}.feed_forward.w2"  # OFT with a norm constraint
    sd |= {f"{k}.oft_blocks": _r(g, 30, 128, 128, s=0.01), f"{k}.alpha": torch.tensor(1.0)}
    k = f"lycoris_{L.replace('.', '_')}_attention_to_out_0"  # BOFT
    sd |= {f"{k}.oft_blocks": _r(g, 2, 960, 4, 4, s=0.1), f"{k}.alpha": torch.tensor(0.0)}
    k = "diffusion_model.noise_refiner.0.attention.out"  # LoKr: 3840 = 16 * 240
    sd |= {f"{k}.lokr_w1": _r(g, 16, 16, s=0.3), f"{k}.lokr_w2_a": _r(g, 240, 2, s=0.1),
           f"{k}.lokr_w2_b": _r(g, 2, 240, s=0.1), f"{k}.alpha": torch.tensor(2.0)}
    sd[f"diffusion_model.{L}.adaLN_modulation.0.diff_b"] = _r(g, 4 * d, s=0.05)  # bias diff
    sd["diffusion_model.context_refiner.0.attention.out.diff"] = _r(g, d, d, s=0.2 / d ** 0.5)  # full diff
    return sd


def test_a_mixed_kind_file_in_the_real_server_equals_lora_loader_model_only_on_unet_loader(comfyui_host, tiny,
                                                                                           tmp_path_factory):
    """Our DiT loader + LoRA node + sampler versus UNETLoader + LoraLoaderModelOnly + KSampler, one graph, same
    file, same text encoder / latent / VAE decode: 8-bit pixels within 1."""
    import numpy as np
    from PIL import Image

    from zimage_core.adapters.lora import load_lora
    from zimage_core.tiny.dit import random_dit_state
    from zimage_core.model.transformer import DiTConfig

    host = comfyui_host
    d = tmp_path_factory.mktemp("lora_host")
    cfg = DiTConfig(**WIDE)
    dit_file, lora_file = d / "z_image_wide_bf16.safetensors", d / "z_image_wide_mixed_kinds.safetensors"
    save_file(random_dit_state(cfg, seed=4, dtype=torch.bfloat16), str(dit_file))
    save_file(_wide_mixed_file(torch.Generator().manual_seed(5)), str(lora_file))
    patch = load_lora(lora_file, cfg)
    assert patch.report.unused == []
    assert {"LoHa", "GLoRA", "OFT", "BOFT", "LoKr", "bias diff", "full diff"} <= patch.report.styles
    host.put_model("diffusion_models", dit_file.name, dit_file)
    host.put_model("loras", lora_file.name, lora_file)
    host.put_model("text_encoders", "qwen_3_4b_tiny.safetensors", tiny["text_encoder"])
    host.put_model("text_encoders", "tokenizer", tiny["tokenizer"])
    host.put_model("vae", "ae_tiny.safetensors", tiny["vae"])
    seed, prompt = 7, "a red fox in the snow at sunrise"
    g = {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": dit_file.name, "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": "qwen_3_4b_tiny.safetensors", "dtype": "auto", "device": "default"}},
        "3": {"class_type": "ZImageVAELoader", "inputs": {"vae_name": "ae_tiny.safetensors"}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": prompt}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "ZImageLoraLoader", "inputs": {"dit": ["1", 0], "lora_name": lora_file.name, "strength": 1.0}},
        "7": {"class_type": "ZImageSampler",
              "inputs": {"dit": ["6", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": seed, "steps": 1,
                         "cfg": 1.0, "shift": 3.0, "denoise": 1.0}},
        "8": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ours_lora"}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": dit_file.name, "weight_dtype": "default"}},
        "12": {"class_type": "LoraLoaderModelOnly",
               "inputs": {"model": ["11", 0], "lora_name": lora_file.name, "strength_model": 1.0}},
        "13": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "14": {"class_type": "KSampler",
               "inputs": {"model": ["12", 0], "seed": seed, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                          "scheduler": "simple", "positive": ["4", 0], "negative": ["13", 0],
                          "latent_image": ["5", 0], "denoise": 1.0}},
        "15": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["14", 0]}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "native_lora"}},
        # the same graph without the adapters, to see they matter
        "17": {"class_type": "ZImageSampler",
               "inputs": {"dit": ["1", 0], "positive": ["4", 0], "latent": ["5", 0], "seed": seed, "steps": 1,
                          "cfg": 1.0, "shift": 3.0, "denoise": 1.0}},
        "18": {"class_type": "ZImageVAEDecode", "inputs": {"vae": ["3", 0], "latent": ["17", 0]}},
        "19": {"class_type": "SaveImage", "inputs": {"images": ["18", 0], "filename_prefix": "plain"}},
    }
    try:
        entry = host.run(g, timeout=900)
        ours, native, plain = (np.asarray(Image.open(host.output_files(entry, n)[0]).convert("RGB")).astype(np.int16)
                               for n in ("9", "16", "19"))
        assert "lora key not loaded" not in host.log_tail()
    finally:
        host.remove_model("diffusion_models", dit_file.name)
        host.free()
    assert native.std() > 5
    assert np.abs(ours - plain).max() > 10, "the adapters change the picture"
    assert np.abs(ours - native).max() <= 1
