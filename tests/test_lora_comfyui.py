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
