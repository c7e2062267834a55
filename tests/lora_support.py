"""Shared parts of the LoRA tests (tests/test_lora.py, tests/test_lora_kinds.py): a tiny DiT, random LoRAs in every
key style, and the module fixture `setup` (a folder, the DiT state, a LoRA, the DiT)."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import save_file

from zimage_core.model.dit_loader import diffusers_to_native_name, native_to_diffusers
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.tiny.dit import TINY_DIT, random_dit_state
from zimage_core.model.transformer import ZImageDiT

CFG = TINY_DIT
RANK, ALPHA = 4, 2.0


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def make_dit(state, dtype=None):
    m = ZImageDiT(CFG)
    m.load_state_dict(state)
    if dtype is not None:
        for mod in m.modules():
            if hasattr(mod, "patches") and mod.weight.ndim == 2:
                mod.weight.data = mod.weight.data.to(dtype)
    return m.eval().requires_grad_(False)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 1, 8, 10, generator=g), torch.randn(16, 1, 6, 6, generator=g)]
    caps = [torch.randn(7, CFG.cap_feat_dim, generator=g), torch.randn(12, CFG.cap_feat_dim, generator=g)]
    return xs, caps, torch.tensor([0.3, 0.8])


@torch.no_grad()
def run(dit, *patches, seed=0):
    xs, caps, t = inputs(seed)
    with PatchedDiT(dit, tuple(patches)).applied() as m:
        return torch.cat([o.flatten() for o in m(xs, t, caps)])


def random_lora(state, seed, rank=RANK, scale=0.3):
    """Effective (alpha folded) low-rank factors per diffusers module name: {name: (A [r, in], B [out, r])}."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in native_to_diffusers(state).items():
        if v.ndim == 2 and k.endswith(".weight") and "pad_token" not in k:
            out[k[: -len(".weight")]] = (torch.randn(rank, v.shape[1], generator=g) * scale / v.shape[1] ** 0.5,
                                         torch.randn(v.shape[0], rank, generator=g) * scale)
    return out


def peft_file(lora, adapter=""):
    a = f".{adapter}" if adapter else ""
    sd = {}
    for n, (A, B) in lora.items():
        sd[f"transformer.{n}.lora_A{a}.weight"], sd[f"transformer.{n}.lora_B{a}.weight"] = A, B
    return sd


def _native_groups(lora):
    """diffusers-named factors -> native module name -> (A, B): q/k/v fused block-diagonally (exact same delta)."""
    out = {}
    for n, (A, B) in lora.items():
        if n.endswith(".attention.to_q"):
            base = n[: -len("to_q")]
            As = [lora[base + f"to_{p}"][0] for p in "qkv"]
            Bs = [lora[base + f"to_{p}"][1] for p in "qkv"]
            out[base + "qkv"] = (torch.cat(As), torch.block_diag(*Bs))
        elif n.endswith((".attention.to_k", ".attention.to_v")):
            continue
        else:
            out[diffusers_to_native_name(n + ".weight")[: -len(".weight")]] = (A, B)
    return out


def with_alpha(A, B, alpha):
    """Stored factors such that (alpha / rank) * B_stored @ A == B @ A."""
    return A, B * (A.shape[0] / alpha)


def style_file(lora, style):
    sd = {}
    if style in ("peft", "peft_adapter"):
        return peft_file(lora, "default" if style == "peft_adapter" else "")
    if style == "ai_toolkit":
        for n, (A, B) in lora.items():
            A, B = with_alpha(A, B, ALPHA)
            sd[f"diffusion_model.{n}.lora_A.weight"], sd[f"diffusion_model.{n}.lora_B.weight"] = A, B
            sd[f"diffusion_model.{n}.alpha"] = torch.tensor(ALPHA)
    elif style == "kohya":
        for n, (A, B) in lora.items():
            A, B = with_alpha(A, B, ALPHA)
            k = "lora_unet_" + n.replace(".", "_")
            sd[k + ".lora_down.weight"], sd[k + ".lora_up.weight"], sd[k + ".alpha"] = A, B, torch.tensor(ALPHA)
    elif style in ("native_dm", "native_unet"):
        for n, (A, B) in _native_groups(lora).items():
            A, B = with_alpha(A, B, ALPHA)
            k = "diffusion_model." + n if style == "native_dm" else "lora_unet_" + n.replace(".", "_")
            sd[k + ".lora_down.weight"], sd[k + ".lora_up.weight"], sd[k + ".alpha"] = A, B, torch.tensor(ALPHA)
    elif style == "dot":
        for n, (A, B) in lora.items():
            k = n.replace(".to_", ".to.")
            sd[k + ".lora.down.weight"], sd[k + ".lora.up.weight"] = A, B
        for n, (A, B) in _native_groups(lora).items():  # redundant fused qkv / bare out copies (Anime-Z)
            if n.endswith((".qkv", ".out")):
                sd[n + ".lora.down.weight"], sd[n + ".lora.up.weight"] = A.clone(), B.clone()
    return sd


STYLES = ["peft", "peft_adapter", "ai_toolkit", "kohya", "native_dm", "native_unet", "dot"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    state = random_dit_state(CFG, seed=1)
    lora = random_lora(state, seed=10)
    save_file(peft_file(lora), str(d / "peft.safetensors"))
    return d, state, lora, make_dit(state)


def merged_with(state: dict, deltas) -> dict:
    """`state` with each (layer name, rows, delta) of `deltas` added to that layer's weight rows (a new dict)."""
    merged = dict(state)
    for name, rows, delta in deltas:
        w = merged[name + ".weight"].clone()
        w[rows] += delta
        merged[name + ".weight"] = w
    return merged
