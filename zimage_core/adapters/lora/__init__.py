"""LoRA-family adapters for the Z-Image DiT, every kind ComfyUI 0.18.1 applies, in every key style trainers write.

One module per adapter kind, behind one interface (`adapter.Adapter`: parsed from a module's keys, its fp32
delta at a strength for merging, a runtime form for the Linear's output patch):

    lowrank   LoRA       (alpha / rank) * B @ A
    lokr      LoKr       kron(w1, w2), factorised parts allowed
    loha      LoHa       (w1_a @ w1_b) * (w2_a @ w2_b), Tucker cores allowed
    glora     GLoRA      (W a1 a2 + b1 b2) * alpha / rank
    oft       OFT        blockdiag(Cayley(Q_k))^T W
    boft      BOFT       butterfly stages of block rotations
    full      .diff, .diff_b (bias), .set_weight
    dora      DoRA       (`.dora_scale` beside any of the above) m * (W + dW) / ||W + dW||, on either axis
    keys      key styles, prefixes, other families, the alias table of our Linear modules
    patch     LoraPatch (runtime patches), merged_copy / merge_lora

`load_lora(path, dit, strength)` reads a file; `parse_lora(state_dict, cfg)` maps tensors onto the DiT.
Keys of a kind this package cannot apply are named in the unused-keys warning, never silently dropped.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from ...errors import CheckpointError
from ...model.transformer import DiTConfig, ZImageDiT
from ...weights.checkpoint import WeightSource, identify, wrong_model_error
from . import boft, full, glora, keys, loha, lokr, lowrank, oft
from .adapter import Adapter, Target
from .dora import DoRA
from .patch import LoraPatch, LoraReport, merge_lora, merged_copy

__all__ = ["Adapter", "LoraPatch", "LoraReport", "load_lora", "merge_lora", "merged_copy", "parse_lora"]

log = logging.getLogger("zimage_core.adapters.lora")

# Tried in this order on the slots of one module; the first that recognises them builds the adapter.
KINDS = (lowrank, full, glora, boft, oft, loha, lokr)


def _build(target, slots: dict, alpha: float | None, keys_: list[str]) -> Adapter:
    tensors = {k: t for k, (_, t) in slots.items() if k not in ("alpha", "dora_scale")}
    for kind in KINDS:
        ad = kind.from_slots(target, tensors, alpha, keys_)
        if ad is not None:
            break
    else:
        raise ValueError("an alpha or scale without adapter weights" if tensors or alpha is not None
                         else "no adapter weights")
    if "dora_scale" in slots:
        ad = DoRA(ad, slots["dora_scale"][1])
    return ad


def parse_lora(sd: dict, cfg: DiTConfig, path: str = "<state dict>") -> tuple[list[Adapter], LoraReport]:
    """Map an adapter state dict onto the Linear modules of a DiT of config `cfg`."""
    report = LoraReport(str(path))
    table = keys.alias_table(cfg)
    norms = keys.norm_table(cfg)
    shapes = keys.module_shapes(cfg)
    groups: dict[str, dict[str, tuple[str, object]]] = {}
    unused: list[str] = []
    for key, t in sd.items():
        hit = keys.split(key)
        if hit is None:
            unused.append(key)
            kind = keys.unsupported_kind(key)
            if kind and f"{kind} is not supported" not in report.notes:
                report.notes.append(f"{kind} is not supported")
            continue
        base, slot = hit
        groups.setdefault(base, {})[slot] = (key, t)
    for base, slots in list(groups.items()):
        if "diff_b" in slots and len(slots) > 1:  # a bias patch next to a weight patch: its own adapter
            groups[base + "#bias"] = {"diff_b": slots.pop("diff_b")}

    chosen: dict[tuple[str, int | None], Adapter] = {}
    shape_errors = []
    for base, slots in groups.items():
        keys_ = [k for k, _ in slots.values()]
        target = table.get(keys.canon(base.removesuffix("#bias")))
        if target is None and "diff" in slots and keys.canon(base) in norms:  # an RMSNorm's weight delta
            name, dim = norms[keys.canon(base)]
            d = slots["diff"][1]
            if tuple(d.shape) != (dim,):
                shape_errors.append(f"{base} {tuple(d.shape)} (the model's {name} needs ({dim},))")
                continue
            chosen[(name, None)] = full.NormDiff(Target(name, None, False), keys_, d.float())
            report.styles.add("norm diff")
            unused.extend(k for s, (k, _) in slots.items() if s != "diff")
            continue
        if target is None:
            unused.extend(keys_)
            continue
        alpha = slots.get("alpha", (None, None))[1]
        alpha = None if alpha is None else float(alpha.float().reshape(-1)[0])
        try:
            ad = _build(target, slots, alpha, keys_)
        except ValueError as e:
            report.notes.append(f"{base}: {e}")
            unused.extend(keys_)
            continue
        m_out, m_in, has_bias = shapes[target.module]
        rows = m_out // 3 if target.part is not None else m_out
        if ad.bias and not has_bias:
            report.notes.append(f"{base}: .diff_b on {target.module}, which has no bias")
            unused.extend(keys_)
            continue
        if not ad.fits(rows, m_in):
            got = ad.shape()
            want = (rows,) if ad.bias else (rows, m_in)
            shape_errors.append(f"{base} {got if got is not None else ad.kind} (the model's {target.module} "
                                f"needs {want})")
            continue
        inner = ad.inner if isinstance(ad, DoRA) else ad
        report.styles.add(keys.style(slots["A"][0]) if inner.kind == "LoRA" else inner.kind)
        if isinstance(ad, DoRA):
            report.styles.add("DoRA")
        slot_key = (target.module + ("#bias" if ad.bias else ""), target.part)
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
            + "; ".join(shape_errors[:3]) + ". The LoRA was made for a model of another size or family.")
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


def load_lora(path: str | Path, dit: ZImageDiT | DiTConfig, strength: float = 1.0) -> LoraPatch:
    """Read a LoRA-family safetensors file for a Z-Image DiT (a model or its config).

    Refuses other model families' LoRAs and non-LoRA files with a CheckpointError; warns (and logs)
    the first ten unused keys, their count, and why (e.g. an adapter kind that cannot be applied)."""
    cfg = dit.cfg if isinstance(dit, ZImageDiT) else dit
    src = WeightSource(path)
    names = src.keys()
    ident = identify(names, lambda k: src.shape(k))
    if ident.kind != "lora":
        raise wrong_model_error(src, "a Z-Image LoRA", ident)
    fam = keys.family(names)
    if fam is not None:
        raise CheckpointError(
            f"{src.describe()}: this is a LoRA for {fam[0]}, not for Z-Image (its keys name that model's blocks, "
            f"e.g. '{fam[1]}'). Use a Z-Image LoRA.")
    sd = {k: src.get(k) for k in names}
    adapters, report = parse_lora(sd, cfg, str(path))
    if not adapters:
        raise CheckpointError(
            f"{src.describe()}: none of its {len(names)} keys matches a module of the Z-Image DiT (e.g. "
            f"{', '.join(sorted(names)[:3])}); it is not a Z-Image LoRA, or a key style this loader does not know"
            + (f" ({'; '.join(report.notes[:3])})" if report.notes else "") + ".")
    if report.unused:
        msg = (f"Z-Image LoRA {src.describe()}: {len(report.unused)} key(s) not used: "
               f"{', '.join(report.unused[:10])}{' ...' if len(report.unused) > 10 else ''}"
               + (f" ({'; '.join(report.notes[:3])})" if report.notes else ""))
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return LoraPatch(adapters, report, strength)
