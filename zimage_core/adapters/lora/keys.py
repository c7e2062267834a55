"""Key names: prefixes, the suffix of every adapter kind, other families' LoRAs, and the alias table that maps
a module name of any key style onto a `Linear` of our (native-named) DiT.

Key styles understood (all may carry a `.alpha`; prefixes `transformer.`, `diffusion_model.`,
`model.diffusion_model.`, `base_model.model.`, `lora_unet_`, `lycoris_`, `lora_transformer_` are stripped):
  diffusers / PEFT   transformer.layers.0.attention.to_q.lora_A.weight / .lora_B.weight (also `.lora_A.default.weight`)
  ai-toolkit         diffusion_model.layers.0.attention.to_out.0.lora_A.weight
  kohya / musubi     lora_unet_layers_0_attention_to_q.lora_down.weight / .lora_up.weight / .alpha
  ComfyUI-native     diffusion_model.layers.0.attention.qkv.lora_down.weight, lora_unet_layers_0_attention_out.*
  dot style          layers.0.attention.to.q.lora.down.weight / .lora.up.weight
  LyCORIS            lycoris_layers_0_feed_forward_w1.hada_w1_a / .lokr_w1 / .oft_blocks / .a1.weight ...
Module names are matched after folding '.', '_' and '-' together and ignoring case, against every alias of
each `Linear`: native (`attention.qkv`, `attention.out`, `x_embedder`, `final_layer.*`) and diffusers
(`attention.to_q|to_k|to_v`, `to_out.0`, `all_x_embedder.2-1`, `all_final_layer.2-1.*`). q/k/v adapters land on
rows [0:d], [d:2d], [2d:3d] of the fused qkv; a fused-qkv adapter covers all 3d rows.
"""

from __future__ import annotations

import functools
import re

import torch

from ...model.transformer import DiTConfig, ZImageDiT
from ...weights.ops import Linear
from .adapter import Target

PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet_",
            "lycoris_", "lora_transformer_")
# (regex on the key's end, slot); a slot named by the regex's group when it has one
SUFFIXES = [
    (re.compile(r"\.lora_A(?:\.[A-Za-z0-9_-]+)?\.weight$"), "A"),
    (re.compile(r"\.lora_B(?:\.[A-Za-z0-9_-]+)?\.weight$"), "B"),
    (re.compile(r"\.lora_down\.weight$"), "A"),
    (re.compile(r"\.lora_up\.weight$"), "B"),
    (re.compile(r"\.lora\.down\.weight$"), "A"),
    (re.compile(r"\.lora\.up\.weight$"), "B"),
    (re.compile(r"\.alpha$"), "alpha"),
    (re.compile(r"\.lora_magnitude_vector(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?$"), "dora_scale"),  # PEFT DoRA
    (re.compile(r"\.(lokr_w[12](?:_[ab])?|lokr_t2)$"), None),
    (re.compile(r"\.(hada_w[12]_[ab]|hada_t[12])$"), None),
    (re.compile(r"\.(diff|diff_b|set_weight|dora_scale|oft_blocks|rescale)$"), None),
    (re.compile(r"\.(a1|a2|b1|b2)\.weight$"), None),
]
# Adapter kinds this loader cannot apply -> named in the unused-keys warning.
UNSUPPORTED = [(re.compile(r"\.oft_diag$"), "OFT with oft_diag (old LyCORIS OFT)"),
               (re.compile(r"\.oft_R$"), "OFT with oft_R"),
               (re.compile(r"\.[wb]_norm$"), "norm-layer diffs (w_norm / b_norm; only Linear layers are patched)")]
# Key fragments of other model families' LoRAs -> the family they belong to.
FAMILIES = [
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


def canon(name: str) -> str:
    return re.sub(r"[._\-]", "_", name).lower()


def strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def split(key: str) -> tuple[str, str] | None:
    """'lora_unet_layers_0_attention_to_q.lora_down.weight' -> ('layers_0_attention_to_q', 'A')."""
    k = strip(key)
    for rx, slot in SUFFIXES:
        m = rx.search(k)
        if m:
            return k[: m.start()], slot or m.group(1)
    return None


def unsupported_kind(key: str) -> str | None:
    return next((n for rx, n in UNSUPPORTED if rx.search(key)), None)


def family(keys: list[str]) -> tuple[str, str] | None:
    """(family, an example key) when the keys name another model family's blocks."""
    for rx, fam in FAMILIES:
        hit = next((k for k in keys if rx.search(k)), None)
        if hit is not None:
            return fam, hit
    return None


def style(key: str) -> str:
    if key.startswith("lora_unet_"):
        return "kohya/musubi (lora_unet_)"
    if ".lora.down" in key:
        return "dot style"
    if key.startswith("diffusion_model."):
        return "ai-toolkit / ComfyUI (diffusion_model.)"
    if key.startswith("transformer."):
        return "diffusers/PEFT"
    return "unprefixed"


@functools.lru_cache(maxsize=8)
def alias_table(cfg: DiTConfig) -> dict[str, Target]:
    """canonical alias -> target, for every Linear of a DiT of this config."""
    with torch.device("meta"):
        model = ZImageDiT(cfg)
    pp = f"{cfg.patch_size}-1"
    table: dict[str, Target] = {}

    def add(alias: str, t: Target):
        c = canon(alias)
        if c in table and table[c] != t:
            raise AssertionError(f"alias clash {alias}")
        table[c] = t

    for name, m in model.named_modules():
        if not isinstance(m, Linear):
            continue
        add(name, Target(name, None, False))
        if name.endswith(".attention.qkv"):
            base = name[: -len("qkv")]
            for i, p in enumerate("qkv"):
                add(base + "to_" + p, Target(name, i, True))
        elif name.endswith(".attention.out"):
            add(name[: -len("out")] + "to_out.0", Target(name, None, True))
        elif name.startswith("x_embedder"):
            add(f"all_x_embedder.{pp}", Target(name, None, True))
        elif name.startswith("final_layer."):
            add(f"all_final_layer.{pp}." + name[len("final_layer."):], Target(name, None, True))
    return table


@functools.lru_cache(maxsize=8)
def norm_table(cfg: DiTConfig) -> dict[str, tuple[str, int]]:
    """canonical native name -> (name, dim), for every RMSNorm of a DiT of this config (the norms ComfyUI's
    TrainLoraNode writes `.diff` patches for: attention_norm1, q_norm, cap_embedder.0, ...)."""
    from ...weights.ops import RMSNorm

    with torch.device("meta"):
        model = ZImageDiT(cfg)
    return {canon(n): (n, m.weight.shape[0]) for n, m in model.named_modules() if isinstance(m, RMSNorm)}


@functools.lru_cache(maxsize=8)
def module_shapes(cfg: DiTConfig) -> dict[str, tuple[int, int, bool]]:
    """Linear name -> (out_features, in_features, has a bias)."""
    with torch.device("meta"):
        m = ZImageDiT(cfg)
    return {n: (x.out_features, x.in_features, x.bias is not None) for n, x in m.named_modules() if isinstance(x, Linear)}
