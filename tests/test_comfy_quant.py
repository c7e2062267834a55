"""ComfyUI's comfy_quant mixed-precision files (fp8 e4m3fn/e5m2 with weight_scale, nvfp4 group 16, mxfp8
group 32): dequantization equal to comfy-kitchen's eager implementation bit for bit, DiT outputs equal to the
same weights in plain fp32, nvfp4/mxfp8 kept packed, missing scales named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.model.dit_loader import load_dit
from zimage_core.errors import CheckpointError
from zimage_core.weights.offload import enable_block_offload
from zimage_core.weights.quant import ComfyQuantWeight
from zimage_core.tiny.dit import random_dit_state
from zimage_core.model.transformer import DiTConfig

ck = pytest.importorskip("comfy_kitchen")
eager = pytest.importorskip("comfy_kitchen.backends.eager.quantization")

CFG = DiTConfig(dim=128, n_layers=1, n_refiner_layers=1, n_heads=2, ffn_dim=256, cap_feat_dim=64)
FORMATS = ("float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8")


class _Layer:
    def __init__(self, **scales):
        self.__dict__.update(scales)


def quantize(w: torch.Tensor, fmt: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({weight, weight_scale[, weight_scale_2]} as ComfyUI stores them, comfy-kitchen's eager dequantization)."""
    if fmt.startswith("float8"):
        dt = getattr(torch, fmt)
        scale = (w.abs().amax() / torch.finfo(dt).max).float()
        q = (w / scale).to(dt)
        return {"weight": q, "weight_scale": scale}, eager.dequantize_per_tensor_fp8(q, scale, torch.float32)
    if fmt == "nvfp4":
        scale = (w.abs().amax() / (448 * 6)).float()
        q, bs = ck.quantize_nvfp4(w, scale, pad_16x=False)
        return ({"weight": q, "weight_scale": bs, "weight_scale_2": scale},
                eager.dequantize_nvfp4(q, scale, bs, torch.float32))
    q, bs = ck.quantize_mxfp8(w, pad_32x=False)
    return {"weight": q, "weight_scale": bs.view(torch.uint8)}, eager.dequantize_mxfp8(q, bs, torch.float32)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_bytes_dequantize_bit_for_bit_like_comfy_kitchen(fmt, dtype):
    g = torch.Generator().manual_seed(0)
    rows, cols = 3840, 3840
    if fmt == "nvfp4":
        q = torch.randint(0, 256, (rows, cols // 2), generator=g, dtype=torch.uint8)
        bs = (torch.rand(rows * cols // 16, generator=g) * 400).to(torch.float8_e4m3fn).reshape(rows, cols // 16)
        s2 = torch.tensor(0.37)
        ref = eager.dequantize_nvfp4(q, s2, bs, dtype)
        got = ComfyQuantWeight(fmt, (rows, cols)).dequantize(q, dtype, _Layer(weight_scale=bs, weight_scale_2=s2))
    else:
        q = torch.randn(rows, cols, generator=g).mul(40).to(torch.float8_e4m3fn)
        bs = torch.randint(100, 150, (rows, cols // 32), generator=g, dtype=torch.uint8)
        ref = eager.dequantize_mxfp8(q, bs.view(torch.float8_e8m0fnu), dtype)
        got = ComfyQuantWeight(fmt, (rows, cols)).dequantize(q, dtype, _Layer(weight_scale=bs))
    assert torch.isfinite(ref).all()
    assert torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       ref.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


def write_comfy_quant(path, fmt_of, metadata_style=False, drop=None):
    """A native-layout DiT with the main Linear layers in comfy_quant formats; returns the dequantized state."""
    state = random_dit_state(CFG, seed=4)
    out, dense, layers = {}, {}, {}
    for name, w in state.items():
        layer = name[: -len(".weight")]
        fmt = fmt_of(layer) if name.endswith(".weight") and w.ndim == 2 and layer.startswith(
            ("layers.", "noise_refiner.", "context_refiner.")) else None
        if fmt is None:
            out[name] = dense[name] = w
            continue
        stored, dense[name] = quantize(w, fmt)
        for k, v in stored.items():
            out[f"{layer}.{k}"] = v
        layers[layer] = {"format": fmt}
        if not metadata_style:
            out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    if drop:
        del out[drop]
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if metadata_style else None
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in out.items()}, str(path), metadata=meta)
    return dense


def inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 8, 10, generator=g)], [torch.randn(9, 64, generator=g)], torch.tensor([0.6])


@torch.no_grad()
@pytest.mark.parametrize("metadata_style", [False, True])
def test_mixed_comfy_quant_dit_equals_the_dequantized_weights_in_fp32(tmp_path, metadata_style):
    def fmt_of(layer):  # every format in the same file, a different one per layer kind
        kinds = {"qkv": 0, "out": 1, "w1": 2, "w2": 3, "w3": 2, "0": 0}
        return FORMATS[kinds[layer.rsplit(".", 1)[1]]]

    dense = write_comfy_quant(tmp_path / "cq.safetensors", fmt_of, metadata_style)
    save_file(dense, str(tmp_path / "dense.safetensors"))
    q, d = load_dit(tmp_path / "cq.safetensors"), load_dit(tmp_path / "dense.safetensors", "fp32")
    w1 = q.layers[0].feed_forward.w1
    assert w1.quant.format == "nvfp4" and w1.weight.dtype == torch.uint8 and w1.weight.size() == (256, 64)
    assert w1.weight.shape == (256, 128)  # the layer's shape, as ComfyUI's quantized tensors answer
    assert q.layers[0].feed_forward.w2.weight.dtype == torch.float8_e4m3fn  # mxfp8 data kept as stored
    assert q.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn and q.layers[0].attention.qkv.scale_weight is not None
    xs, caps, t = inputs()
    for a, b in zip(q(xs, t, caps), d(xs, t, caps)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # block streaming moves the packed bytes and their scales
    streamer = enable_block_offload(q, 0, "cpu")
    got = q(xs, t, caps)
    assert streamer.fetches > 0
    for a, b in zip(got, d(xs, t, caps)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_missing_scale_names_the_file_layer_and_scale(tmp_path):
    write_comfy_quant(tmp_path / "noscale.safetensors", lambda layer: "nvfp4",
                      drop="layers.0.feed_forward.w1.weight_scale_2")
    with pytest.raises(CheckpointError, match=r"noscale\.safetensors: comfy_quant layer 'layers\.0\.feed_forward\.w1' "
                                              r"\(nvfp4\) needs layers\.0\.feed_forward\.w1\.weight_scale_2"):
        load_dit(tmp_path / "noscale.safetensors")


def test_an_unknown_format_is_named(tmp_path):
    write_comfy_quant(tmp_path / "int4.safetensors", lambda layer: "float8_e4m3fn")
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "int4.safetensors"))
    sd["model.diffusion_model.layers.0.attention.out.comfy_quant"] = torch.tensor(list(b'{"format": "int4_awq"}'), dtype=torch.uint8)
    save_file(sd, str(tmp_path / "int4.safetensors"))
    with pytest.raises(CheckpointError, match=r"int4\.safetensors: layer 'layers\.0\.attention\.out' has comfy_quant format 'int4_awq'"):
        load_dit(tmp_path / "int4.safetensors")


@torch.no_grad()
def test_a_missing_fp8_weight_scale_is_named_and_a_model_loaded_before_stays_usable(tmp_path):
    write_comfy_quant(tmp_path / "good.safetensors", lambda layer: "float8_e4m3fn")
    good = load_dit(tmp_path / "good.safetensors")
    x, caps, t = inputs()
    before = good(x, t, caps)[0]
    write_comfy_quant(tmp_path / "nofp8scale.safetensors", lambda layer: "float8_e4m3fn",
                      drop="layers.0.attention.qkv.weight_scale")
    with pytest.raises(CheckpointError, match=r"nofp8scale\.safetensors: comfy_quant layer 'layers\.0\.attention\.qkv' "
                                              r"\(float8_e4m3fn\) needs layers\.0\.attention\.qkv\.weight_scale"):
        load_dit(tmp_path / "nofp8scale.safetensors")
    assert torch.equal(good(x, t, caps)[0], before)
