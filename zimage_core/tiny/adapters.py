"""Tiny adapter files of every kind the LoRA loader applies, for the tiny DiT (`make-tiny` writes them to
`loras/z_image_tiny_<kind>.safetensors`), in the key styles the trainers write:

    lora    diffusers / ai-toolkit (`diffusion_model.layers.0.attention.to_q.lora_A.weight`, `.alpha`)
    dora    PEFT DoRA (`transformer.*.lora_A.weight` + `.lora_magnitude_vector`)
    loha    LyCORIS LoHa (`lycoris_layers_0_feed_forward_w1.hada_w1_a` ...)
    lokr    LyCORIS LoKr, one factor whole, one factorised
    glora   LyCORIS GLoRA (`.a1.weight` `.a2.weight` `.b1.weight` `.b2.weight`)
    oft     LyCORIS OFT (`.oft_blocks` [k, n, n], `.alpha` constraint)
    boft    LyCORIS BOFT (`.oft_blocks` [stages, k, b, b], `.rescale`)
    diff    ComfyUI full patches (`.diff` on a weight, `.diff_b` on a bias)

Each file patches the attention and feed-forward layers of the main blocks so it visibly changes the image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.transformer import DiTConfig
from .dit import TINY_DIT, random_dit_state

KINDS = ("lora", "dora", "loha", "lokr", "glora", "oft", "boft", "diff")


def adapter_state(kind: str, cfg: DiTConfig = TINY_DIT, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000 + KINDS.index(kind))

    def r(*shape, s=0.1):
        return (torch.randn(*shape, generator=g) * s).contiguous()

    d, f = cfg.dim, cfg.ffn_dim
    blocks = range(cfg.n_layers)
    linear = {"attention.to_q": (d, d), "attention.to_k": (d, d), "attention.to_v": (d, d),
              "attention.to_out.0": (d, d), "feed_forward.w1": (f, d), "feed_forward.w2": (d, f),
              "feed_forward.w3": (f, d)}
    sd: dict[str, torch.Tensor] = {}
    if kind in ("lora", "dora"):
        state = random_dit_state(cfg, seed=seed) if kind == "dora" else None
        for i in blocks:
            for name, (o, n) in linear.items():
                k = f"{'diffusion_model' if kind == 'lora' else 'transformer'}.layers.{i}.{name}"
                sd[f"{k}.lora_A.weight"], sd[f"{k}.lora_B.weight"] = r(4, n, s=n ** -0.5), r(o, 4, s=0.2)
                if kind == "lora":
                    sd[f"{k}.alpha"] = torch.tensor(4.0)
                else:  # PEFT: the magnitude starts as ||W|| per output row and is trained from there
                    native = {"attention.to_q": "attention.qkv", "attention.to_k": "attention.qkv",
                              "attention.to_v": "attention.qkv", "attention.to_out.0": "attention.out"}.get(name, name)
                    w = state[f"layers.{i}.{native}.weight"].float()
                    if native == "attention.qkv":
                        j = "qkv".index(name[-1])
                        w = w[j * d:(j + 1) * d]
                    sd[f"{k}.lora_magnitude_vector"] = w.norm(dim=1) * (1 + r(o, s=0.1))
    elif kind == "loha":
        for i in blocks:
            for name, (o, n) in linear.items():
                if name.startswith("feed_forward") or name.endswith("to_out.0"):
                    k = f"lycoris_layers_{i}_{name.replace('.', '_')}"
                    sd |= {f"{k}.hada_w1_a": r(o, 2, s=0.5), f"{k}.hada_w1_b": r(2, n, s=n ** -0.5),
                           f"{k}.hada_w2_a": r(o, 2, s=0.5), f"{k}.hada_w2_b": r(2, n, s=n ** -0.5),
                           f"{k}.alpha": torch.tensor(2.0)}
    elif kind == "lokr":
        a = 4  # kron(w1 [4, 4], w2 [d/4, d/4]) on the square attention projections
        for i in blocks:
            for name in ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0"):
                k = f"lycoris_layers_{i}_{name.replace('.', '_')}"
                sd |= {f"{k}.lokr_w1": r(a, a, s=0.5), f"{k}.lokr_w2_a": r(d // a, 2, s=0.3),
                       f"{k}.lokr_w2_b": r(2, d // a, s=0.3), f"{k}.alpha": torch.tensor(2.0)}
    elif kind == "glora":
        for i in blocks:
            for name in ("attention.to_q", "attention.to_v", "feed_forward.w2"):
                o, n = linear[name]
                k = f"lycoris_layers_{i}_{name.replace('.', '_')}"
                sd |= {f"{k}.a1.weight": r(n, 2, s=0.3), f"{k}.a2.weight": r(2, n, s=0.3),
                       f"{k}.b1.weight": r(o, 2), f"{k}.b2.weight": r(2, n), f"{k}.alpha": torch.tensor(2.0)}
    elif kind == "oft":
        for i in blocks:
            k = f"lycoris_layers_{i}_attention_to_out_0"
            sd |= {f"{k}.oft_blocks": r(4, d // 4, d // 4, s=0.05), f"{k}.alpha": torch.tensor(0.0)}
    elif kind == "boft":
        for i in blocks:
            k = f"lycoris_layers_{i}_attention_to_out_0"
            sd |= {f"{k}.oft_blocks": r(2, d // 4, 4, 4, s=0.2), f"{k}.rescale": 1 + r(d, 1, s=0.05),
                   f"{k}.alpha": torch.tensor(0.0)}
    elif kind == "diff":
        for i in blocks:
            sd[f"diffusion_model.layers.{i}.attention.out.diff"] = r(d, d, s=0.05)
            sd[f"diffusion_model.layers.{i}.adaLN_modulation.0.diff_b"] = r(4 * d, s=0.05)
    else:
        raise ValueError(f"unknown adapter kind {kind!r}; one of {', '.join(KINDS)}")
    return sd


def write_tiny_adapters(out_dir: Path, cfg: DiTConfig = TINY_DIT, seed: int = 0) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in KINDS:
        paths[kind] = out_dir / f"z_image_tiny_{kind}.safetensors"
        save_file(adapter_state(kind, cfg, seed), str(paths[kind]), metadata={"zimage_tiny_adapter": kind})
    return paths
