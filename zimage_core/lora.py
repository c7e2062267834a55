"""LoRA-family adapters for the Z-Image DiT (LoRA, LoKr, LoHa, GLoRA, OFT, DoRA, .diff, .diff_b, .set_weight),
in every key style trainers write.

Key styles understood (all may carry a `.alpha`; prefixes `transformer.`, `diffusion_model.`,
`model.diffusion_model.`, `base_model.model.`, `lora_unet_`, `lycoris_` are stripped):
  diffusers / PEFT   transformer.layers.0.attention.to_q.lora_A.weight / .lora_B.weight (also `.lora_A.default.weight`)
  ai-toolkit         diffusion_model.layers.0.attention.to_out.0.lora_A.weight
  kohya / musubi     lora_unet_layers_0_attention_to_q.lora_down.weight / .lora_up.weight / .alpha
  ComfyUI-native     diffusion_model.layers.0.attention.qkv.lora_down.weight, lora_unet_layers_0_attention_out.*
  dot style          layers.0.attention.to.q.lora.down.weight / .lora.up.weight
  LoKr (LyCORIS)     ....lokr_w1 / .lokr_w2, or factorised .lokr_w1_a/.lokr_w1_b/.lokr_w2_a/.lokr_w2_b
  LoHa (LyCORIS)     ....hada_w1_a/.hada_w1_b/.hada_w2_a/.hada_w2_b (+ Tucker cores .hada_t1/.hada_t2)
  full difference    ....diff (the weight delta itself, applied at scale 1)
Module names are matched after folding '.', '_' and '-' together and ignoring case, against every alias
of each `Linear` of our (native-named) DiT: native (`attention.qkv`, `attention.out`, `x_embedder`,
`final_layer.*`) and diffusers (`attention.to_q|to_k|to_v`, `to_out.0`, `all_x_embedder.2-1`,
`all_final_layer.2-1.*`). q/k/v adapters land on rows [0:d], [d:2d], [2d:3d] of the fused qkv; a fused-qkv
adapter covers all 3d rows. Targets: layers, noise_refiner, context_refiner (attention, feed_forward,
adaLN_modulation), x/cap/t embedders and the final layer.

Scaling: LoRA delta = (alpha / rank) * B @ A, alpha absent -> 1. LoKr delta = kron(w1, w2) with w = a @ b
for factorised parts; scaled by alpha / (rank of the factorised part) when a part is factorised and
alpha is given, else 1 (LyCORIS / ComfyUI convention). LoHa delta = (w1_a @ w1_b) * (w2_a @ w2_b)
(elementwise), scaled by alpha / w1_b.shape[0]; LoHa and .diff deltas are built once at load (dense).
DoRA (`.dora_scale` next to a LoRA/LoHa/LoKr/diff): W' = m * (W + dW) / ||W + dW||, norm per output row
(m [out] or [out, 1], PEFT) or per input column (m [1, in], LyCORIS); applied as the dense delta W' - W
built at install/merge from the base weight, times strength.
Bias `.diff_b`: y += strength * db on modules that have a bias. `.set_weight` S: W' = W + strength * (S - W).
GLoRA (a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in]): dW = (W a1 a2 + b1 b2) * alpha / a2.shape[0].
OFT (oft_blocks [k, n, n], k*n = rows): W' = blockdiag(R_k)^T W with R = (I + Q)(I - Q)^-1, Q = B - B^T
(Q rescaled to norm alpha when alpha > 0 and ||Q|| > alpha); strength scales W' - W.
Not applied (named in the unused-keys warning): BOFT (oft_R), OFT with oft_diag.

Application (`LoraPatch`, the `patching` protocol): a runtime output patch on each targeted `Linear`,
    y[..., rows] += strength * scale * (x @ A.T) @ B.T          (LoKr: x @ kron(w1, w2).T, computed as
                                                                 w1 @ X @ w2.T without building the kron)
in the activation dtype, base weights untouched; several LoRAs stack; `with_strength` makes a new
patch sharing the tensors. `merged_copy` / `merge_lora` fold the delta into the weights for speed.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import WeightSource, identify, wrong_model_error
from .dit_loader import FP8_DTYPES
from .errors import CheckpointError, InputError
from .ops import Linear
from .transformer import DiTConfig, ZImageDiT

log = logging.getLogger("zimage_core.lora")

_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet_",
             "lycoris_", "lora_transformer_")
# (regex on the key's end, role)
_SUFFIXES = [
    (re.compile(r"\.lora_A(?:\.[A-Za-z0-9_-]+)?\.weight$"), "A"),
    (re.compile(r"\.lora_B(?:\.[A-Za-z0-9_-]+)?\.weight$"), "B"),
    (re.compile(r"\.lora_down\.weight$"), "A"),
    (re.compile(r"\.lora_up\.weight$"), "B"),
    (re.compile(r"\.lora\.down\.weight$"), "A"),
    (re.compile(r"\.lora\.up\.weight$"), "B"),
    (re.compile(r"\.alpha$"), "alpha"),
    (re.compile(r"\.(lokr_w[12](?:_[ab])?)$"), "lokr"),
    (re.compile(r"\.(hada_w[12]_[ab]|hada_t[12])$"), "loha"),
    (re.compile(r"\.(diff)$"), "diff"),
    (re.compile(r"\.(dora_scale)$"), "dora"),
    (re.compile(r"\.(diff_b)$"), "diff_b"),
    (re.compile(r"\.(oft_blocks)$"), "oft"),
    (re.compile(r"\.(a1|a2|b1|b2)\.weight$"), "glora"),
    (re.compile(r"\.(set_weight)$"), "set_weight"),
]
# Adapter kinds this loader cannot apply yet -> named in the unused-keys warning.
_UNSUPPORTED = [(r"\.oft_diag$", "OFT (oft_diag)"), (r"\.oft_R$", "BOFT"), ]
# Key fragments of other model families' LoRAs -> the family they belong to.
_FAMILIES = [
    (re.compile(r"(^|[._])(double_blocks|single_blocks)[._]"), "Flux (BFL format)"),
    (re.compile(r"(^|[._])single_transformer_blocks[._]"), "Flux (diffusers format)"),
    (re.compile(r"(^|[._])joint_blocks[._]"), "Stable Diffusion 3"),
    (re.compile(r"(^|[._])(input_blocks|output_blocks|middle_block)[._]"), "SD 1.x / SDXL (original UNet names)"),
    (re.compile(r"(^|[._])(down_blocks|up_blocks|mid_block)[._]"), "SD 1.x / SDXL (diffusers UNet names)"),
    (re.compile(r"(^|[._])transformer_blocks[._]\d+[._](img_mod|txt_mod|img_mlp)"), "Qwen-Image"),
    (re.compile(r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn)[._]"), "Wan video"),
    (re.compile(r"(^|[._])transformer_blocks[._]\d+[._](attn|ff|ff_context|norm1)[._]"),
     "Flux / SD3 (diffusers format)"),
]


def _canon(name: str) -> str:
    return re.sub(r"[._\-]", "_", name).lower()


@dataclass(frozen=True)
class _Target:
    module: str  # native Linear name, e.g. layers.0.attention.qkv
    part: int | None  # 0/1/2 = q/k/v rows of a fused qkv, None = all rows
    diffusers: bool  # named with a diffusers alias (wins over a redundant native duplicate)


@functools.lru_cache(maxsize=8)
def _alias_table(cfg: DiTConfig) -> dict[str, _Target]:
    """canonical alias -> target, for every Linear of a DiT of this config."""
    with torch.device("meta"):
        model = ZImageDiT(cfg)
    pp = f"{cfg.patch_size}-1"
    table: dict[str, _Target] = {}

    def add(alias: str, t: _Target):
        c = _canon(alias)
        if c in table and table[c] != t:
            raise AssertionError(f"alias clash {alias}")
        table[c] = t

    for name, m in model.named_modules():
        if not isinstance(m, Linear):
            continue
        add(name, _Target(name, None, False))
        if name.endswith(".attention.qkv"):
            base = name[: -len("qkv")]
            for i, p in enumerate("qkv"):
                add(base + "to_" + p, _Target(name, i, True))
        elif name.endswith(".attention.out"):
            add(name[: -len("out")] + "to_out.0", _Target(name, None, True))
        elif name.startswith("x_embedder"):
            add(f"all_x_embedder.{pp}", _Target(name, None, True))
        elif name.startswith("final_layer."):
            add(f"all_final_layer.{pp}." + name[len("final_layer."):], _Target(name, None, True))
    return table


@dataclass
class LoraReport:
    path: str
    modules_patched: int = 0  # distinct Linear modules that receive a delta
    adapters: int = 0  # adapter entries used (q, k, v of one block count 3)
    unused: list[str] = field(default_factory=list)  # every key of the file that is not applied
    notes: list[str] = field(default_factory=list)  # why some keys are unused (duplicates, missing halves)
    styles: set[str] = field(default_factory=set)

    def summary(self) -> str:
        s = f"{Path(self.path).name}: {self.modules_patched} modules patched ({self.adapters} adapters"
        s += f", {', '.join(sorted(self.styles))})" if self.styles else ")"
        if self.unused:
            s += f"; {len(self.unused)} unused key(s): {', '.join(self.unused[:10])}"
            s += " ..." if len(self.unused) > 10 else ""
        return s


@dataclass
class _Adapter:
    """One low-rank (A, B), Kronecker (w1, w2) or dense (LoHa product, full .diff) delta on the rows
    `part` of one Linear."""

    target: _Target
    kind: str  # 'lora' | 'lokr' | 'dense' | 'bias' | 'set'
    t1: torch.Tensor  # A [r, in]  | w1 [a1, b1] | delta [rows, in] | bias delta [rows] | new weight [rows, in]
    t2: torch.Tensor  # B [out, r] | w2 [a2, b2] | unused (empty)
    scale: float
    keys: list[str]
    extra: tuple = ()  # GLoRA: (b1 [out, r], b2 [r, in]) beside t1 = a1 [in, r], t2 = a2 [r, in]
    dora: torch.Tensor | None = None  # DoRA magnitude: [rows] / [rows, 1] (output axis) or [1, in] (input axis)

    def dora_delta(self, w: torch.Tensor) -> torch.Tensor:
        """DoRA: the fp32 delta W' - W at strength 1 for base rows `w` [rows, in], as the trainers compute it:
        W' = m * (W + dW) / ||W + dW||, the norm per output row (PEFT, m of shape [rows]) or per input
        column (LyCORIS wd_on_out=False, m of shape [1, in]). ComfyUI divides by ||W|| (not ||W + dW||)
        on the output axis; see README 'LoRA'."""
        w = w.float()
        wc = w + self.delta_weight()
        m = self.dora.float()
        if not (m.ndim == 2 and m.shape[0] == 1 and m.shape[0] != w.shape[0]):  # [rows] or [rows, 1]
            norm = wc.norm(dim=1, keepdim=True)
            m = m.reshape(-1, 1)
        else:
            norm = wc.norm(dim=0, keepdim=True)
            m = m.reshape(1, -1)
        return wc * (m / (norm + torch.finfo(torch.float32).eps)) - w

    def delta_weight(self) -> torch.Tensor:
        """The fp32 weight delta [rows, in] at strength 1 (scale included)."""
        a, b = self.t1.float(), self.t2.float()
        d = b @ a if self.kind == "lora" else torch.kron(a, b) if self.kind == "lokr" else a
        return d * self.scale

    def apply(self, x: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, s: float) -> torch.Tensor:
        if self.kind == "bias":
            return (t1 * s).expand(*x.shape[:-1], t1.shape[0])
        if self.kind == "dense":
            return (x @ t1.T) * s
        if self.kind == "lora":
            return ((x @ t1.T) * s) @ t2.T
        (a1, b1), (a2, b2) = t1.shape, t2.shape
        X = x.reshape(*x.shape[:-1], b1, b2)
        return (t1 @ X @ t2.T).reshape(*x.shape[:-1], a1 * a2) * s


class _ModuleHook:
    """The callable put on `Linear.patches` for one LoRA and one module."""

    def __init__(self, owner: LoraPatch, adapters: list[_Adapter], out_features: int, dtype, device):
        self.owner = owner
        self.adapters = adapters
        self.rows = out_features // 3
        self.cast = {}
        self._cast(dtype, device)

    def _cast(self, dtype, device):
        key = (dtype, device)
        if key not in self.cast:
            self.cast[key] = [(a.t1.to(device=device, dtype=dtype), a.t2.to(device=device, dtype=dtype))
                              for a in self.adapters]
        return self.cast[key]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tensors = self._cast(x.dtype, x.device)
        s0 = float(self.owner.strength)
        parts: list[torch.Tensor | None] = [None, None, None]
        for a, (t1, t2) in zip(self.adapters, tensors):
            d = a.apply(x, t1, t2, s0 * a.scale)
            if a.target.part is None:
                y = y + d
            else:
                i = a.target.part
                parts[i] = d if parts[i] is None else parts[i] + d
        if any(p is not None for p in parts):
            pieces = y.split(self.rows, dim=-1)
            y = torch.cat([p if d is None else p + d for p, d in zip(pieces, parts)], dim=-1)
        return y


class LoraPatch:
    """A parsed LoRA at a strength; a patch for `PatchedDiT` (install/uninstall runtime hooks)."""

    def __init__(self, adapters: list[_Adapter], report: LoraReport, strength: float = 1.0, name: str = ""):
        self.adapters = adapters
        self.report = report
        self.strength = float(strength)
        self.name = name or Path(report.path).name
        self._installed: dict[int, list[tuple[Linear, _ModuleHook]]] = {}

    def __repr__(self) -> str:
        return f"LoraPatch({self.name!r}, strength={self.strength}, modules={self.report.modules_patched})"

    def with_strength(self, strength: float) -> LoraPatch:
        """Same adapter tensors (shared, not copied), another strength."""
        return LoraPatch(self.adapters, self.report, strength, self.name)

    def by_module(self) -> dict[str, list[_Adapter]]:
        out: dict[str, list[_Adapter]] = {}
        for a in self.adapters:
            out.setdefault(a.target.module, []).append(a)
        return out

    def install(self, dit: ZImageDiT) -> None:
        if self.strength == 0.0:  # strength 0: nothing installed, output bit-identical to the base model
            return
        hooks = []
        for name, adapters in self.by_module().items():
            m = dit.get_submodule(name)
            adapters = [_resolve_dora(a, m) for a in adapters]
            hook = _ModuleHook(self, adapters, m.out_features, dit.compute_dtype, m.weight.device)
            m.patches.append(hook)
            hooks.append((m, hook))
        self._installed.setdefault(id(dit), []).extend(hooks)

    def uninstall(self, dit: ZImageDiT) -> None:
        for m, hook in self._installed.pop(id(dit), []):
            m.patches[:] = [p for p in m.patches if p is not hook]

    def delta_weights(self, dit: ZImageDiT) -> dict[str, torch.Tensor]:
        """module name -> fp32 full-size weight delta at this patch's strength."""
        out = {}
        for name, adapters in self.by_module().items():
            m = dit.get_submodule(name)
            d = torch.zeros(m.out_features, m.in_features, dtype=torch.float32)
            rows = m.out_features // 3
            for a in adapters:
                if a.kind == "bias":
                    continue
                p = a.target.part
                sl = slice(None) if p is None else slice(p * rows, (p + 1) * rows)
                d[sl] += _resolve_dora(a, m).delta_weight().to(d.device)
            if any(a.kind != "bias" for a in adapters):
                out[name] = d * self.strength
        return out

    def delta_biases(self, dit: ZImageDiT) -> dict[str, torch.Tensor]:
        """module name -> fp32 bias delta [out] at this patch's strength (`.diff_b` patches)."""
        out = {}
        for a in self.adapters:
            if a.kind != "bias":
                continue
            m = dit.get_submodule(a.target.module)
            d = out.setdefault(a.target.module, torch.zeros(m.out_features))
            rows = m.out_features // 3
            p = a.target.part
            d[slice(None) if p is None else slice(p * rows, (p + 1) * rows)] += a.t1.float() * self.strength
        return out


def _base_rows(m: Linear, part: int | None) -> torch.Tensor:
    w = m.weight.float()
    if m.scale_weight is not None:
        w = w * m.scale_weight.float().to(w.device)
    if part is None:
        return w
    rows = m.out_features // 3
    return w[part * rows:(part + 1) * rows]


def _resolve_dora(a: _Adapter, m: Linear) -> _Adapter:
    """A DoRA adapter as a dense delta W' - W (needs the base weight); others unchanged. Strength scales
    W' - W linearly (strength 0 = base model, 1 = the trained W')."""
    if a.kind in ("set", "glora", "oft"):
        w = _base_rows(m, a.target.part)
        if a.kind == "set":  # .set_weight: W' = S, as the delta S - W
            d = a.t1.float() - w
        elif a.kind == "oft":  # OFT: W' = blockdiag(R_k)^T W, R = Cayley(Q) = (I + Q)(I - Q)^-1, Q = B - B^T
            blocks = a.t1.float()  # [k, n, n]
            k, n, _ = blocks.shape
            q = blocks - blocks.transpose(1, 2)
            if a.scale > 0:  # alpha is a norm constraint on Q
                qn = q.norm() + 1e-8
                q = q * (a.scale / qn) if qn > a.scale else q
            eye = torch.eye(n)
            r = (eye + q) @ torch.linalg.inv(eye - q)
            d = torch.einsum("k n m, k n i -> k m i", r - eye, w.reshape(k, n, -1)).reshape(w.shape)
        else:  # GLoRA: dW = (W a1 a2 + b1 b2) * alpha / rank
            b1, b2 = a.extra
            d = (w @ a.t1.float() @ a.t2.float() + b1.float() @ b2.float()) * a.scale
        a = _Adapter(a.target, "dense", d, torch.empty(0), 1.0, a.keys, dora=a.dora)
    if a.dora is None:
        return a
    d = a.dora_delta(_base_rows(m, a.target.part))
    return _Adapter(a.target, "dense", d, torch.empty(0), 1.0, a.keys)


# ------------------------------------------------------------------------------------------------ parsing

def _family(keys: list[str]) -> str | None:
    for rx, fam in _FAMILIES:
        if any(rx.search(k) for k in keys):
            return fam
    return None


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def parse_lora(sd: dict[str, torch.Tensor], cfg: DiTConfig, path: str = "<state dict>") -> tuple[list[_Adapter], LoraReport]:
    """Map a LoRA state dict onto the Linear modules of a DiT of config `cfg`."""
    report = LoraReport(str(path))
    table = _alias_table(cfg)
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    unused: list[str] = []
    for key, t in sd.items():
        k = _strip(key)
        for rx, role in _SUFFIXES:
            m = rx.search(k)
            if m:
                base = k[: m.start()]
                slot = m.group(1) if role in ("lokr", "loha", "diff", "dora", "diff_b", "set_weight", "glora", "oft") else role
                groups.setdefault(base, {})[slot] = (key, t)
                break
        else:
            unused.append(key)
            kind = next((n for sfx, n in _UNSUPPORTED if re.search(sfx, key)), None)
            if kind and not any(kind in n for n in report.notes):
                report.notes.append(f"{kind} is not supported")

    chosen: dict[tuple[str, int | None], _Adapter] = {}
    shape_errors = []
    for base, slots in list(groups.items()):
        if "diff_b" in slots and len(slots) > 1:  # a bias patch next to a weight patch: its own adapter
            groups[base + "#bias"] = {"diff_b": slots.pop("diff_b")}
    for base, slots in groups.items():
        keys = [k for k, _ in slots.values()]
        target = table.get(_canon(base.removesuffix("#bias")))
        if target is None:
            unused.extend(keys)
            continue
        alpha = slots.get("alpha", (None, None))[1]
        alpha = None if alpha is None else float(alpha.float().reshape(-1)[0])
        try:
            ad = _make_adapter(target, {k: v for k, v in slots.items() if k != "dora_scale"}, alpha, keys, report)
            if "dora_scale" in slots:
                ad.dora = _mat(slots["dora_scale"][1]) if slots["dora_scale"][1].ndim > 1 else slots["dora_scale"][1]
                if ad.dora.numel() not in _delta_shape(ad):
                    raise ValueError(f"dora_scale {tuple(ad.dora.shape)} fits neither axis of {_delta_shape(ad)}")
                report.styles.add("DoRA")
        except ValueError as e:
            report.notes.append(f"{base}: {e}")
            unused.extend(keys)
            continue
        m_out, m_in, has_bias = _module_shape(cfg, target.module)
        rows = m_out // 3 if target.part is not None else m_out
        want = (rows, m_in) if ad.kind != "bias" else (rows,)
        if ad.kind == "oft":
            k, n, _ = ad.t1.shape
            got = (k * n, m_in)
        if ad.kind == "bias" and not has_bias:
            report.notes.append(f"{base}: .diff_b on {target.module}, which has no bias")
            unused.extend(keys)
            continue
        got = got if ad.kind == "oft" else _delta_shape(ad)
        if got != want:
            shape_errors.append(f"{base} {got} (the model's {target.module} needs {want})")
            continue
        slot_key = (target.module + ("#bias" if ad.kind == "bias" else ""), target.part)
        prev = chosen.get(slot_key)
        if prev is not None:
            keep, drop = (prev, ad) if prev.target.diffusers >= ad.target.diffusers else (ad, prev)
            chosen[slot_key] = keep
            unused.extend(drop.keys)
            report.notes.append(f"{drop.keys[0]} targets the same weights as {keep.keys[0]}; kept one")
            continue
        chosen[slot_key] = ad
    if shape_errors:
        raise CheckpointError(
            f"{Path(path).name}: {len(shape_errors)} adapter(s) do not fit this Z-Image DiT (dim {cfg.dim}): "
            + "; ".join(shape_errors[:3]) + ". The LoRA was made for a model of another size or family."
        )
    # a fused-qkv adapter next to split q/k/v adapters of the same block is the same delta twice
    for (module, part), ad in list(chosen.items()):
        if part is None and module.endswith(".attention.qkv") and any((module, i) in chosen for i in range(3)):
            del chosen[(module, part)]
            unused.extend(ad.keys)
            report.notes.append(f"{ad.keys[0]}: fused qkv adapter redundant next to split q/k/v adapters; skipped")
    adapters = list(chosen.values())
    report.adapters = len(adapters)
    report.modules_patched = len({a.target.module for a in adapters})
    report.unused = sorted(set(unused))
    return adapters, report


def _module_shape(cfg: DiTConfig, module: str) -> tuple[int, int, bool]:
    return _module_shapes(cfg)[module]


@functools.lru_cache(maxsize=8)
def _module_shapes(cfg: DiTConfig) -> dict[str, tuple[int, int, bool]]:
    with torch.device("meta"):
        m = ZImageDiT(cfg)
    return {n: (x.out_features, x.in_features, x.bias is not None) for n, x in m.named_modules() if isinstance(x, Linear)}


def _delta_shape(ad: _Adapter) -> tuple[int, int]:
    if ad.kind == "lora":
        return (ad.t2.shape[0], ad.t1.shape[1])
    if ad.kind in ("dense", "set", "bias"):
        return tuple(ad.t1.shape)
    if ad.kind == "oft":
        return None  # checked against the module below
    if ad.kind == "glora":
        return (ad.extra[0].shape[0], ad.extra[1].shape[1])
    return (ad.t1.shape[0] * ad.t2.shape[0], ad.t1.shape[1] * ad.t2.shape[1])


def _mat(t: torch.Tensor) -> torch.Tensor:
    while t.ndim > 2 and t.shape[-1] == 1:  # kohya conv-style [r, in, 1, 1]
        t = t[..., 0]
    if t.ndim != 2:
        raise ValueError(f"tensor of shape {tuple(t.shape)} is not a matrix")
    return t


def _make_adapter(target: _Target, slots: dict, alpha: float | None, keys: list[str], report: LoraReport) -> _Adapter:
    if "A" in slots or "B" in slots:
        if "A" not in slots or "B" not in slots:
            raise ValueError("has only one half of a LoRA (down/A or up/B)")
        a, b = _mat(slots["A"][1]), _mat(slots["B"][1])
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"down {tuple(a.shape)} and up {tuple(b.shape)} ranks differ")
        rank = a.shape[0]
        report.styles.add(_style(slots["A"][0]))
        return _Adapter(target, "lora", a, b, 1.0 if alpha is None else alpha / rank, keys)
    if "diff_b" in slots:
        report.styles.add("bias diff")
        return _Adapter(target, "bias", slots["diff_b"][1].float().reshape(-1), torch.empty(0), 1.0, keys)
    if "set_weight" in slots:
        report.styles.add("set_weight")
        return _Adapter(target, "set", _mat(slots["set_weight"][1]).float(), torch.empty(0), 1.0, keys)
    gl = {k: _mat(v[1]) for k, v in slots.items() if k in ("a1", "a2", "b1", "b2")}
    if gl:
        if len(gl) < 4:
            raise ValueError("GLoRA without all of a1, a2, b1, b2")
        a1, a2, b1, b2 = gl["a1"], gl["a2"], gl["b1"], gl["b2"]
        if not (a1.shape[0] == a2.shape[1] == b2.shape[1] and a1.shape[1] == a2.shape[0] and b1.shape[1] == b2.shape[0]):
            raise ValueError(f"GLoRA shapes a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)}, "
                             f"b2 {tuple(b2.shape)} are not the current LyCORIS layout (old GLoRA is not supported)")
        report.styles.add("GLoRA")
        scale = 1.0 if alpha is None else alpha / a2.shape[0]
        return _Adapter(target, "glora", a1, a2, scale, keys, extra=(b1, b2))
    if "oft_blocks" in slots:
        blocks = slots["oft_blocks"][1]
        if blocks.ndim != 3 or blocks.shape[1] != blocks.shape[2]:
            raise ValueError(f"oft_blocks {tuple(blocks.shape)} is not [blocks, size, size] (BOFT is not supported)")
        report.styles.add("OFT")
        return _Adapter(target, "oft", blocks, torch.empty(0), 0.0 if alpha is None else alpha, keys)
    if "diff" in slots:
        report.styles.add("full diff")
        return _Adapter(target, "dense", _mat(slots["diff"][1]).float(), torch.empty(0), 1.0, keys)
    hd = {k: v[1].float() for k, v in slots.items() if k.startswith("hada")}
    if hd:
        return _loha(target, hd, alpha, keys, report)
    lk = {k: v[1] for k, v in slots.items() if k.startswith("lokr")}
    if not lk:
        raise ValueError("an alpha without weights")
    dim = None
    if "lokr_w1" in lk:
        w1 = lk["lokr_w1"]
    elif "lokr_w1_a" in lk and "lokr_w1_b" in lk:
        w1, dim = lk["lokr_w1_a"].float() @ lk["lokr_w1_b"].float(), lk["lokr_w1_b"].shape[0]
    else:
        raise ValueError("LoKr without w1")
    if "lokr_w2" in lk:
        w2 = lk["lokr_w2"]
    elif "lokr_w2_a" in lk and "lokr_w2_b" in lk:
        w2, dim = lk["lokr_w2_a"].float() @ lk["lokr_w2_b"].float(), lk["lokr_w2_b"].shape[0]
    else:
        raise ValueError("LoKr without w2 (Tucker-decomposed LoKr is not supported)")
    report.styles.add("LoKr")
    scale = alpha / dim if (alpha is not None and dim is not None) else 1.0
    return _Adapter(target, "lokr", _mat(w1), _mat(w2), scale, keys)


def _loha_factor(hd: dict, i: int) -> torch.Tensor:
    a, b = hd[f"hada_w{i}_a"], hd[f"hada_w{i}_b"]  # a [out, r], b [r, in]; Tucker: a [r, out], b [r, in], t [r, r, *k]
    t = hd.get(f"hada_t{i}")
    if t is None:
        return _mat(a @ b.flatten(1))
    # W[p, r, ...] = sum_ij t[i, j, ...] b[j, r] a[i, p]
    return _mat(torch.einsum("i j ..., j r, i p -> p r ...", t, b.flatten(1), a))


def _loha(target: _Target, hd: dict, alpha: float | None, keys: list[str], report: LoraReport) -> _Adapter:
    """LoHa (LyCORIS): delta = (w1_a @ w1_b) * (w2_a @ w2_b) (Hadamard product), scaled by alpha / rank
    with rank = w1_b.shape[0]; with Tucker cores hada_t1/t2 each factor is t x_0 w_a x_1 w_b."""
    need = [f"hada_w{i}_{s}" for i in (1, 2) for s in "ab"]
    missing = [n for n in need if n not in hd]
    if missing:
        raise ValueError(f"LoHa without {', '.join(missing)}")
    rank = hd["hada_w1_b"].shape[0]
    d = _loha_factor(hd, 1) * _loha_factor(hd, 2)
    report.styles.add("LoHa")
    return _Adapter(target, "dense", d, torch.empty(0), 1.0 if alpha is None else alpha / rank, keys)


def _style(key: str) -> str:
    if key.startswith("lora_unet_"):
        return "kohya/musubi (lora_unet_)"
    if ".lora.down" in key:
        return "dot style"
    if key.startswith("diffusion_model."):
        return "ai-toolkit / ComfyUI (diffusion_model.)"
    if key.startswith("transformer."):
        return "diffusers/PEFT"
    return "unprefixed"


def load_lora(path: str | Path, dit: ZImageDiT | DiTConfig, strength: float = 1.0) -> LoraPatch:
    """Read a LoRA/LoKr safetensors file for a Z-Image DiT (a model or its config).

    Refuses other model families' LoRAs and non-LoRA files with a CheckpointError; warns (and logs)
    the first ten unused keys and their count."""
    cfg = dit.cfg if isinstance(dit, ZImageDiT) else dit
    src = WeightSource(path)
    keys = src.keys()
    ident = identify(keys, lambda k: src.shape(k))
    if ident.kind != "lora":
        raise wrong_model_error(src, "a Z-Image LoRA", ident)
    fam = _family(keys)
    if fam is not None:
        raise CheckpointError(
            f"{src.describe()}: this is a LoRA for {fam}, not for Z-Image (its keys name that model's blocks, e.g. "
            f"'{next(k for k in keys if any(rx.search(k) for rx, f in _FAMILIES if f == fam))}'). "
            "Use a Z-Image LoRA.")
    sd = {k: src.get(k) for k in keys}
    adapters, report = parse_lora(sd, cfg, str(path))
    if not adapters:
        raise CheckpointError(
            f"{src.describe()}: none of its {len(keys)} keys matches a module of the Z-Image DiT (e.g. "
            f"{', '.join(sorted(keys)[:3])}); it is not a Z-Image LoRA, or a key style this loader does not know.")
    if report.unused:
        msg = (f"Z-Image LoRA {src.describe()}: {len(report.unused)} key(s) not used: "
               f"{', '.join(report.unused[:10])}{' ...' if len(report.unused) > 10 else ''}"
               + (f" ({'; '.join(report.notes[:3])})" if report.notes else ""))
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return LoraPatch(adapters, report, strength)


# ------------------------------------------------------------------------------------------------ merging

def _check_mergeable(m: Linear, name: str) -> None:
    if m.quant is not None:
        raise InputError(
            f"cannot merge a LoRA into {name}: its weight is stored quantized ({m.quant.describe()}); use the "
            "runtime patch (the default, computed on the dequantized weight in the activation dtype).")
    if m.weight.dtype in FP8_DTYPES or m.scale_weight is not None:
        raise InputError(
            f"cannot merge a LoRA into {name}: its weight is stored as fp8 ({m.weight.dtype}). Re-quantising the "
            "merged weight to fp8 would lose most of the LoRA's small delta; use the runtime patch (the default, "
            "computed in the activation dtype) or load the DiT as bf16/fp16 to merge.")


def _merged_weight(m: Linear, delta: torch.Tensor) -> torch.nn.Parameter:
    # fp32 sum, rounded once to the storage dtype (bf16/fp16: one rounding of W + delta per element,
    # i.e. the merged model differs from the runtime patch by <= half an ulp of the storage dtype per weight)
    w = (m.weight.float() + delta.to(m.weight.device)).to(m.weight.dtype)
    return torch.nn.Parameter(w, requires_grad=False)


def _merged_bias(m: Linear, delta: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter((m.bias.float() + delta.to(m.bias.device)).to(m.bias.dtype), requires_grad=False)


def merged_copy(dit: ZImageDiT, patches: LoraPatch | list[LoraPatch]) -> ZImageDiT:
    """A new DiT with the LoRA(s) merged into the weights; untouched tensors are shared with `dit`,
    which stays unchanged. Refuses fp8-stored weights (see `_check_mergeable`)."""
    patches = [patches] if isinstance(patches, LoraPatch) else list(patches)
    deltas: dict[str, torch.Tensor] = {}
    for p in patches:
        for name, d in p.delta_weights(dit).items():
            _check_mergeable(dit.get_submodule(name), name)
            deltas[name] = deltas[name] + d if name in deltas else d
    memo = {id(t): t for t in list(dit.parameters()) + list(dit.buffers())}
    memo.update({id(t): t for v in dit._rope_cache.values() for t in v})
    for m in dit.modules():
        if isinstance(m, Linear):
            memo[id(m.patches)] = []  # runtime patches of the source are not carried over
            if m.scale_weight is not None:
                memo[id(m.scale_weight)] = m.scale_weight
    new = copy.deepcopy(dit, memo)
    for name, d in deltas.items():
        m = new.get_submodule(name)
        m.weight = _merged_weight(m, d)
    for p in patches:
        for name, d in p.delta_biases(dit).items():
            m = new.get_submodule(name)
            m.bias = _merged_bias(m, d)
    return new


def merge_lora(dit: ZImageDiT, patch: LoraPatch) -> Callable[[], None]:
    """Merge in place; returns `unmerge()`, which restores the original weight tensors exactly."""
    saved = {}
    deltas = patch.delta_weights(dit)
    for name in deltas:
        _check_mergeable(dit.get_submodule(name), name)
    for name, d in deltas.items():
        m = dit.get_submodule(name)
        saved[(name, "weight")] = m.weight
        m.weight = _merged_weight(m, d)
    for name, d in patch.delta_biases(dit).items():
        m = dit.get_submodule(name)
        saved[(name, "bias")] = m.bias
        m.bias = _merged_bias(m, d)

    def unmerge():
        for (name, attr), w in saved.items():
            setattr(dit.get_submodule(name), attr, w)
        saved.clear()

    return unmerge
