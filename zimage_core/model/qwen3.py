"""Qwen3 decoder (the Z-Image text encoder and prompt-enhancer LM), in plain PyTorch.

Module and parameter names are those of the Hugging Face checkpoints (`model.embed_tokens`,
`model.layers.N.self_attn.q_proj`, ..., `lm_head`), and the arithmetic follows transformers'
`modeling_qwen3.py` step for step (fp32 RMSNorm variance, per-head q/k RMSNorm before the rotary embedding,
rotate-half RoPE computed in fp32, grouped-query attention), so features and logits equal the reference
(tested against transformers, which is only a test oracle here). Two entry points:

- `Qwen3Model.hidden_states(ids, mask, n_layers)`: the output of the first `n_layers` decoder layers, no
  final norm (the text encoder needs layer n-2 and never runs the rest);
- `Qwen3LM.next_logits(ids, cache)`: logits of the last position with a preallocated KV cache, for
  token-by-token generation (prompt enhancer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..weights.ops import Embedding, Linear, RMSNorm, cast_workspace


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int = 151936
    hidden_size: int = 2560
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 9728
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    tie_word_embeddings: bool = True


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [S, head_dim], for integer positions [S] (rotate-half layout: both halves equal)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [S, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions: [B, kv_heads, max_len, head_dim]."""

    def __init__(self, cfg: Qwen3Config, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.length = 0  # positions filled so far

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        """x [B, S, hidden]; mask: bool [B, 1, S, S_keys] (True = may attend) or None for plain causal;
        cache: (k_buf, v_buf, start) to write this chunk's keys/values at start.. and attend to all of 0..end."""
        B, S, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, S, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, S, self.n_kv, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = rope  # [S, head_dim]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k_buf, v_buf, start = cache
            k_buf[:, :, start:start + S] = k
            v_buf[:, :, start:start + S] = v
            k, v = k_buf[:, :, :start + S], v_buf[:, :, :start + S]
        if self.n_kv != self.n_heads:  # grouped-query attention: each kv head serves n_heads/n_kv query heads
            rep = self.n_heads // self.n_kv
            k = k[:, :, None].expand(B, self.n_kv, rep, *k.shape[2:]).reshape(B, self.n_heads, *k.shape[2:])
            v = v[:, :, None].expand(B, self.n_kv, rep, *v.shape[2:]).reshape(B, self.n_heads, *v.shape[2:])
        causal = mask is None and S > 1 and k.shape[2] == S
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim))


class Qwen3MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.self_attn = Qwen3Attention(cfg)
        self.mlp = Qwen3MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.config = cfg
        # weights always come from a checkpoint: `_weight` skips the random init, whose normal_ on the meta
        # device would import torch's Python decompositions (~1 s at first use)
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size,
                                      _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(Qwen3DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def _rope(self, start: int, length: int, like: torch.Tensor):
        positions = torch.arange(start, start + length, device=like.device)
        return rotary(positions, self.config.head_dim, self.config.rope_theta, like.dtype)

    def hidden_states(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                      n_layers: int | None = None) -> torch.Tensor:
        """[B, S, hidden] after the first `n_layers` decoder layers (all by default), without the final norm.
        mask: bool [B, S], True on valid tokens (right padding); pad positions give unspecified features."""
        x = self.embed_tokens(input_ids)
        S = input_ids.shape[1]
        attn_mask = None
        if mask is not None and not bool(mask.all()):
            causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
            attn_mask = causal[None, None] & mask[:, None, None, :].to(x.device)  # [B, 1, S, S]
        rope = self._rope(0, S, x)
        with cast_workspace():  # CPU weight casts reuse one buffer (see ops.cast_workspace)
            for layer in self.layers[:n_layers]:
                x = layer(x, rope, attn_mask)
        return x


class Qwen3LM(nn.Module):
    """Qwen3ForCausalLM: the decoder plus an lm_head, tied to the embedding unless the file has its own."""

    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def tie_weights(self) -> None:
        self.lm_head.weight = self.model.embed_tokens.weight
        self.lm_head.quant = self.model.embed_tokens.quant

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        emb = self.model.embed_tokens
        return KVCache(self.config, batch, max_len, emb.compute_dtype, emb.weight.device)

    def next_logits(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed input_ids [B, S] after the cache's positions; returns fp32 logits [B, vocab] of the last one."""
        m = self.model
        start, S = cache.length, input_ids.shape[1]
        if start + S > cache.max_len:
            raise ValueError(f"KV cache of {cache.max_len} positions is full")
        x = m.embed_tokens(input_ids)
        mask = None
        if S > 1 and start > 0:  # a chunk after earlier positions: causal with an offset
            mask = torch.ones(S, start + S, dtype=torch.bool, device=x.device).tril(start)[None, None]
        rope = m._rope(start, S, x)
        with cast_workspace():
            for i, layer in enumerate(m.layers):
                x = layer(x, rope, mask, (cache.k[i], cache.v[i], start))
        cache.length = start + S
        # outside the workspace: the vocabulary-sized head is expanded a chunk of rows at a time (ops.Linear),
        # never as a whole compute-dtype copy of the table (1.5 GB in fp32 for Qwen3-4B)
        return self.lm_head(m.norm(x[:, -1])).float()
