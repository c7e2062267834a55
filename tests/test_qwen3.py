"""Our Qwen3 (zimage_core/model/qwen3.py) against transformers' Qwen3, the test oracle: hidden states of every
layer with padding, cached next-token logits, grouped and ungrouped heads, a separate lm_head. (That the
run-time path never imports transformers is tested in test_text_encoder.py.)"""

from __future__ import annotations

import pytest
import torch

from zimage_core.model.qwen3 import Qwen3Config, Qwen3LM

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "gqa": Qwen3Config(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, intermediate_size=128),
    "mha_untied": Qwen3Config(vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                              num_key_value_heads=3, head_dim=24, intermediate_size=96, rope_theta=10000.0,
                              rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request):
    """(ours, reference) with the same random weights."""
    cfg = CONFIGS[request.param]
    ref_cfg = transformers.Qwen3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=False,
        max_position_embeddings=4096)
    torch.manual_seed(0)
    ref = transformers.Qwen3ForCausalLM(ref_cfg).float().eval()
    with torch.no_grad():  # norms away from 1 so q/k/layer norms are really tested
        for name, p in ref.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if "norm" in name else 0.02))
    ours = Qwen3LM(cfg).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if cfg.tie_word_embeddings:
        ours.tie_weights()
    assert torch.equal(ours.lm_head.weight, ref.lm_head.weight)
    return ours, ref


@torch.no_grad()
def test_hidden_states_of_every_layer_match_transformers_with_right_padding(pair):
    ours, ref = pair
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, ours.config.vocab_size, (3, 11), generator=g)
    lengths = [11, 6, 1]
    mask = torch.arange(11)[None] < torch.tensor(lengths)[:, None]
    expected = ref.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
    n = ours.config.num_hidden_layers
    for layers in range(n + 1):
        got = ours.model.hidden_states(ids, mask, n_layers=layers)
        want = expected[layers] if layers < n else None
        if want is None:  # transformers applies the final norm to its last hidden state
            got, want = ours.model.norm(got), expected[n]
        for i, L in enumerate(lengths):
            assert rel_err(got[i, :L], want[i, :L]) <= 1e-5, (layers, i)
    # no mask (or an all-valid one): the plain causal path
    unmasked = ref.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert rel_err(ours.model.hidden_states(ids, n_layers=n - 1), unmasked[n - 1]) <= 1e-5
    assert torch.equal(ours.model.hidden_states(ids), ours.model.hidden_states(ids, torch.ones_like(mask)))


@torch.no_grad()
def test_cached_next_token_logits_match_the_full_forward(pair):
    ours, ref = pair
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, ours.config.vocab_size, (1, 12), generator=g)
    full = ref(input_ids=ids).logits[0]  # [12, vocab]
    cache = ours.new_cache(1, 12)
    for start, stop in ((0, 5), (5, 6), (6, 7), (7, 10), (10, 12)):  # prefill, single tokens, later chunks
        logits = ours.next_logits(ids[:, start:stop], cache)
        assert logits.dtype == torch.float32 and cache.length == stop
        assert rel_err(logits[0], full[stop - 1]) <= 1e-5, (start, stop)
    with pytest.raises(ValueError, match="full"):
        ours.next_logits(ids[:, :1], cache)
