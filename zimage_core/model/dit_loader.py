"""Loading a Z-Image DiT from any file layout users have, into `ZImageDiT`.

Formats (detected from the keys):
- ComfyUI / original single file: `x_embedder`, fused `attention.qkv`, `attention.out`, `q_norm`/`k_norm`,
  `final_layer`; optionally prefixed `model.diffusion_model.` / `diffusion_model.`;
- diffusers: `all_x_embedder.2-1`, `to_q`/`to_k`/`to_v`, `to_out.0`, `norm_q`/`norm_k`,
  `all_final_layer.2-1`; a folder (`transformer/` or a whole model folder), sharded with an index, or one file.
Stored dtypes fp32/bf16/fp16/fp8 (e4m3fn, e5m2, ComfyUI scaled fp8 with per-tensor `scale_weight`).
- ComfyUI mixed precision (`<layer>.comfy_quant` JSON + `weight_scale` [+ `weight_scale_2`], or the
  `_quantization_metadata` header): float8_e4m3fn/e5m2 layers take the scaled-fp8 path, nvfp4/mxfp8 layers
  stay packed with their scales as layer parameters (dequantized per forward as comfy-kitchen does).
- GGUF (`general.architecture` lumina2, ComfyUI-GGUF's converter: the native key names): the Linear
  weights stay quantized (packed bytes, see `quant`) and are dequantized per layer on every forward;
  quantized tensors that are not Linear weights (the pad tokens) are dequantized once at load.

Sizes are inferred from shapes; the model is built on the meta device and its parameters are assigned
from memory-mapped tensors (converted one tensor at a time when the storage dtype changes), so peak
RAM stays near one copy of the weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..weights.checkpoint import WeightSource, identify, strip_prefix, wrong_model_error
from ..weights.ops import Linear
from ..weights.quant import (
    COMFY_QUANT_FORMATS,
    ComfyQuantWeight,
    PackedParameter,
    QuantizedTensor,
)
from .transformer import DiTConfig, ZImageDiT

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
WEIGHT_DTYPES = {
    "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
# Parameters kept in high precision when the bulk is stored as fp8 (small and precision sensitive).
_HIGH_PRECISION = re.compile(r"^(x_embedder|t_embedder|cap_embedder|final_layer|x_pad_token|cap_pad_token)|norm")

# diffusers name <-> ComfyUI/original name (the fused qkv is handled separately)
_RENAMES = [
    ("all_x_embedder.2-1.", "x_embedder."),
    ("all_final_layer.2-1.", "final_layer."),
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
]
_QKV = (".attention.to_q.weight", ".attention.to_k.weight", ".attention.to_v.weight")


def diffusers_to_native_name(key: str) -> str:
    for a, b in _RENAMES:
        key = key.replace(a, b)
    return key


def native_to_diffusers_name(key: str) -> str:
    for a, b in _RENAMES:
        key = key.replace(b, a)
    return key


def native_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A native (ComfyUI-layout) state dict in diffusers names, qkv split into to_q/to_k/to_v."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".attention.qkv.weight"):
            base = k[: -len(".attention.qkv.weight")]
            for name, part in zip(_QKV, v.chunk(3, dim=0)):
                out[base + name] = part
        else:
            out[native_to_diffusers_name(k)] = v
    return out


@dataclass
class _Plan:
    """How to produce each native parameter from the source tensors."""

    sources: dict[str, Callable[[], torch.Tensor]]
    shapes: dict[str, tuple[int, ...]]
    scales: dict[str, torch.Tensor]  # native weight name -> fp8 scale_weight
    fmt: str
    prefix: str
    mixed: bool = False  # per-layer storage formats (GGUF, comfy_quant): `auto` keeps every tensor as stored


def _plan(src: WeightSource) -> _Plan:
    keys = src.keys()
    ident = identify(keys, lambda k: src.shape(k))
    if ident.kind != "zimage_dit":
        raise wrong_model_error(src, "a Z-Image DiT (e.g. z_image_turbo_bf16.safetensors)", ident)
    prefix = strip_prefix([k for k in keys if k != "scaled_fp8"])
    names = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    fmt = "diffusers" if any(k.startswith("all_x_embedder.") or k.endswith(_QKV[0]) for k in names) else "native"
    # per-tensor fp8 scales; scale_input / scaled_fp8 only matter for fp8 matmuls, which we do not use
    scales = {n[: -len("scale_weight")] + "weight": src.get(k).float() for n, k in names.items() if n.endswith(".scale_weight")}
    packed = {}  # weight name -> (format, {scale name: tensor}) of nvfp4 / mxfp8 layers
    comfy_quant = _comfy_quant_layers(src, names)
    for layer, conf in comfy_quant.items():
        fmt = conf.get("format")
        if fmt not in COMFY_QUANT_FORMATS:
            raise CheckpointError(f"{src.describe()}: layer '{layer}' has comfy_quant format {fmt!r}; supported: "
                                  f"{', '.join(COMFY_QUANT_FORMATS)}.")
        needed = ("weight_scale", "weight_scale_2") if fmt == "nvfp4" else ("weight_scale",)
        missing = [f"{layer}.{n}" for n in needed if f"{layer}.{n}" not in names]
        if missing or f"{layer}.weight" not in names:
            raise CheckpointError(f"{src.describe()}: comfy_quant layer '{layer}' ({fmt}) needs "
                                  f"{', '.join(missing or [layer + '.weight'])}, not in the file.")
        if fmt.startswith("float8"):  # per-tensor fp8: the scaled-fp8 path (weight.to(dtype) * scale.to(dtype))
            scales[f"{layer}.weight"] = src.get(names[f"{layer}.weight_scale"]).float()
        else:
            packed[f"{layer}.weight"] = (fmt, {n: src.get(names[f"{layer}.{n}"]) for n in needed})
    tensors = {n: k for n, k in names.items() if not n.endswith(
        (".scale_weight", ".scale_input", ".input_scale", ".comfy_quant", ".weight_scale", ".weight_scale_2"))}
    tensors.pop("scaled_fp8", None)

    def dequantised(name: str) -> torch.Tensor:
        t = src.get(tensors[name])
        if isinstance(t, QuantizedTensor):
            return t.dequantize()
        return t.float() * scales[name] if name in scales else t

    sources, shapes, native_scales = {}, {}, {}
    for name, key in tensors.items():
        if name.endswith(_QKV[1:]):
            continue
        if name.endswith(_QKV[0]):  # diffusers q/k/v -> one fused qkv, rows q | k | v
            base = name[: -len(_QKV[0])]
            parts = [base + q for q in _QKV]
            missing = [p for p in parts if p not in tensors]
            if missing:
                raise CheckpointError(f"{src.describe()}: fused attention needs {', '.join(missing)}, not in the file.")
            native = base + ".attention.qkv.weight"
            sources[native] = lambda parts=parts: torch.cat([dequantised(p) for p in parts])
            s = [src.shape(tensors[p]) for p in parts]
            shapes[native] = (sum(x[0] for x in s), *s[0][1:])
            continue
        native = diffusers_to_native_name(name)
        sources[native] = lambda key=key: src.get(key)
        shapes[native] = src.shape(key)
        if name in packed:
            fmt, layer_scales = packed[name]
            rows, cols = shapes[native]
            shapes[native] = (rows, cols * 2 if fmt == "nvfp4" else cols)  # nvfp4: two values per byte
            f, sc = ComfyQuantWeight(fmt, shapes[native]), tuple(layer_scales.items())
            sources[native] = lambda key=key, f=f, sc=sc: QuantizedTensor(src.get(key), f, sc)
        if name in scales:
            native_scales[native] = scales[name]
    mixed = bool(comfy_quant) or not isinstance(src, WeightSource)
    return _Plan(sources, shapes, native_scales, fmt, prefix, mixed)


def _comfy_quant_layers(src, names: dict[str, str]) -> dict[str, dict]:
    """{layer: comfy_quant config} from `<layer>.comfy_quant` tensors (uint8 JSON) or the file's
    `_quantization_metadata` (both as ComfyUI writes them)."""
    layers = {}
    for n, k in names.items():
        if n.endswith(".comfy_quant"):
            try:
                layers[n[: -len(".comfy_quant")]] = json.loads(bytes(src.get(k).tolist()))
            except ValueError as e:
                raise CheckpointError(f"{src.describe()}: '{k}' is not valid comfy_quant JSON ({e}).") from None
    meta = getattr(src, "metadata", {}).get("_quantization_metadata")
    if meta:
        try:
            for layer, conf in json.loads(meta).get("layers", {}).items():
                layers.setdefault(layer[len(strip_prefix([layer])):], conf)
        except (ValueError, AttributeError) as e:
            raise CheckpointError(f"{src.describe()}: unreadable _quantization_metadata ({e}).") from None
    return layers


def infer_config(shapes: dict[str, tuple[int, ...]], where: str = "checkpoint") -> DiTConfig:
    """DiT sizes from parameter shapes (native names)."""
    try:
        dim, patch_dim = shapes["x_embedder.weight"]
        head_dim = shapes["layers.0.attention.q_norm.weight"][0]
        ffn_dim = shapes["layers.0.feed_forward.w1.weight"][0]
        cap_feat_dim = shapes["cap_embedder.1.weight"][1]
        t_mid_dim, freq_dim = shapes["t_embedder.mlp.0.weight"]
        out_dim = shapes["final_layer.linear.weight"][0]
    except KeyError as e:
        raise CheckpointError(f"{where}: required tensor {e} is missing; the file is incomplete.") from None
    n_layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("layers."))
    n_refiner = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("noise_refiner.")), default=-1)
    in_channels = 16
    patch = int(round((patch_dim / in_channels) ** 0.5))
    if patch * patch * in_channels != patch_dim or out_dim != patch_dim:
        raise CheckpointError(f"{where}: x_embedder takes {patch_dim} inputs; expected p*p*16 for 16 latent channels.")
    return DiTConfig(
        dim=dim, n_layers=n_layers, n_refiner_layers=n_refiner, n_heads=dim // head_dim, ffn_dim=ffn_dim,
        cap_feat_dim=cap_feat_dim, in_channels=in_channels, patch_size=patch, t_mid_dim=t_mid_dim, freq_dim=freq_dim,
    )


def _list_some(keys, n=8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def default_dtypes(weight_dtype: str | torch.dtype, stored: torch.dtype, device: torch.device):
    """(storage dtype, compute dtype) for a weight_dtype choice on a device.

    On CPU the computation is always fp32 (CPUs lack fast bf16/fp16 matmul); weights keep their storage
    dtype and are upcast per layer. `auto` keeps the stored dtype, except fp32 files on a GPU are stored bf16.
    """
    if isinstance(weight_dtype, str):
        if weight_dtype != "auto" and weight_dtype not in WEIGHT_DTYPES:
            raise CheckpointError(f"weight_dtype '{weight_dtype}' is not one of auto, {', '.join(WEIGHT_DTYPES)}.")
        weight_dtype = WEIGHT_DTYPES.get(weight_dtype, "auto")
    gpu = device.type != "cpu"
    if weight_dtype == "auto":
        storage = torch.bfloat16 if (gpu and stored == torch.float32) else stored
    else:
        storage = weight_dtype
    if not gpu:
        return storage, torch.float32
    if storage in (torch.float32, torch.float16):
        return storage, storage
    return storage, torch.bfloat16


def open_dit_source(path: Path, mmap: bool = True):
    """A WeightSource, or a GGUFSource for .gguf files (checked to hold a lumina2-family model)."""
    if path.suffix.lower() != ".gguf":
        return WeightSource(path, mmap=mmap)
    from ..weights.gguf import DIT_ARCHS, GGUFSource, check_arch

    src = GGUFSource(path, mmap=mmap)
    check_arch(src, DIT_ARCHS, "a Z-Image DiT (e.g. z_image_turbo-Q8_0.gguf)",
               {"qwen3": "a Qwen3 text encoder; load it with the ZImageTextEncoderLoader node"})
    return src


def load_dit(
    path: str | Path,
    weight_dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype | None = None,
    mmap: bool = True,
    compute_device: str | torch.device | None = None,
) -> ZImageDiT:
    """Load a Z-Image DiT from a ComfyUI single file or a diffusers file/folder.

    device: where the weights are put; compute_device: where the model will run (default: device), which
    decides the storage and compute dtypes of `auto` (a model waiting on the CPU for a GPU gets GPU dtypes).
    mmap=True (default): parameters are views of the memory-mapped file: the load is instant, pages are
    read when first used, and a CPU forward runs as fast on them as on ordinary memory (measured: 4.33 s vs
    4.32 s per scaled-config forward). mmap=False reads each tensor into ordinary process memory (several
    seconds on a slow VM for the first touch of fresh memory), so the file is not kept mapped.
    """
    path = Path(path)
    if path.is_dir() and (path / "transformer").is_dir():
        path = path / "transformer"
    compute_device = torch.device(compute_device or device)
    src = open_dit_source(path, mmap=mmap)
    plan = _plan(src)
    cfg = infer_config(plan.shapes, src.describe())
    device = torch.device(device)

    with torch.device("meta"):
        model = ZImageDiT(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = set(expected) - set(plan.sources), set(plan.sources) - set(expected)
    wrong = [k for k in set(expected) & set(plan.sources) if plan.shapes[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_list_some(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_list_some(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} with inconsistent shapes: " + ", ".join(
                f"{k} {plan.shapes[k]} (expected {expected[k]})" for k in sorted(wrong)[:5]))
        raise CheckpointError(f"{src.describe()}: not a complete Z-Image DiT ({plan.fmt} layout); " + "; ".join(parts))

    stored = src.dtype(plan.prefix + ("layers.0.feed_forward.w1.weight"))
    if not stored.is_floating_point:  # packed (nvfp4) bulk: the other tensors keep the bf16 rules
        stored = torch.bfloat16
    storage, compute = default_dtypes(weight_dtype, stored, compute_device)
    compute = compute_dtype or compute
    fp8 = storage in FP8_DTYPES
    high = compute if compute == torch.float32 else torch.bfloat16

    keep_stored = plan.mixed and weight_dtype == "auto"  # e.g. GGUF F32 norms, comfy_quant fp8 layers

    state = {}
    for name, make in plan.sources.items():
        t = make()
        if isinstance(t, QuantizedTensor):
            module_name, _, leaf = name.rpartition(".")
            module = model.get_submodule(module_name)
            if leaf == "weight" and isinstance(module, Linear):  # kept packed, dequantized per forward
                module.weight = PackedParameter(t.packed.to(device), shape=t.shape)
                module.quant = t.format
                state[name] = module.weight
                for scale_name, scale in t.scales:  # parameters, so they move and stream with the layer
                    p = torch.nn.Parameter(scale.to(device), requires_grad=False)
                    module.register_parameter(scale_name, p)
                    state[f"{module_name}.{scale_name}"] = p.data
                continue
            t = t.dequantize(high)
        scale = plan.scales.get(name)
        if keep_stored:
            target = t.dtype
        else:
            target = high if (fp8 and (_HIGH_PRECISION.search(name) or t.ndim < 2)) else storage
        if scale is not None and not (t.dtype == target and target in FP8_DTYPES):
            t = t.float() * scale  # dequantise; kept scaled only when the fp8 storage is unchanged
            plan.scales.pop(name)
        state[name] = t.to(device=device, dtype=target)
    model.load_state_dict(state, assign=True)
    for name, scale in plan.scales.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        module.scale_weight = scale.to(device)
    model.compute_dtype = compute
    model.source = str(path)
    model.eval().requires_grad_(False)
    return model
