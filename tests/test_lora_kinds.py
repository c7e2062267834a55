"""LoRA adapter kinds against their published formulas: LoHa (incl. Tucker), full diffs, DoRA on either axis, a mixed
file, GLoRA, OFT (Cayley, rescale, alpha constraint), BOFT, and make_tiny's one file per kind."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import save_file

from zimage_core.adapters.lora import load_lora, merge_lora, merged_copy
from lora_support import setup  # noqa: F401  (the module fixture)
from lora_support import make_dit, merged_with, rel_err, run

def test_loha_tucker_loha_and_full_diff_match_their_published_formulas(setup, tmp_path):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    sd, deltas = {}, []
    # LoHa on to_k (rows 64:128 of the fused qkv): (w1a @ w1b) * (w2a @ w2b) * alpha / rank
    k = "lycoris_layers_0_attention_to_k"
    w1a, w1b, w2a, w2b = r(64, 3), r(3, 64), r(64, 3), r(3, 64)
    sd.update({k + ".hada_w1_a": w1a, k + ".hada_w1_b": w1b, k + ".hada_w2_a": w2a, k + ".hada_w2_b": w2b,
               k + ".alpha": torch.tensor(1.5)})
    deltas.append(("layers.0.attention.qkv", slice(64, 128), (w1a @ w1b) * (w2a @ w2b) * (1.5 / 3)))
    # Tucker LoHa on feed_forward.w1: W_i[p, q] = sum_ab t_i[a, b] w_ib[b, q] w_ia[a, p]
    k = "lycoris_layers_1_feed_forward_w1"
    out_f, in_f = state["layers.1.feed_forward.w1.weight"].shape
    t1, t2, a1, b1, a2, b2 = r(2, 2), r(2, 2), r(2, out_f), r(2, in_f), r(2, out_f), r(2, in_f)
    sd.update({k + ".hada_w1_a": a1, k + ".hada_w1_b": b1, k + ".hada_t1": t1,
               k + ".hada_w2_a": a2, k + ".hada_w2_b": b2, k + ".hada_t2": t2})
    deltas.append(("layers.1.feed_forward.w1", slice(None), (a1.T @ t1 @ b1) * (a2.T @ t2 @ b2)))
    # full .diff on attention.out
    dd = r(*state["layers.1.attention.out.weight"].shape) * 0.1
    sd["diffusion_model.layers.1.attention.out.diff"] = dd
    deltas.append(("layers.1.attention.out", slice(None), dd))
    save_file(sd, str(tmp_path / "loha.safetensors"))
    patch = load_lora(tmp_path / "loha.safetensors", dit)
    assert patch.report.modules_patched == 3 and patch.report.unused == []
    for name, rows, delta in deltas:
        assert rel_err(patch.delta_weights(dit)[name][rows], delta) <= 1e-5
    assert rel_err(run(dit, patch), run(make_dit(merged_with(state, deltas)))) <= 1e-5


def test_an_adapter_kind_that_cannot_be_applied_is_named_in_the_warning(setup, tmp_path):
    _, _, _, dit = setup
    k = "diffusion_model.layers.0.attention.to_q"
    sd = {k + ".lora_A.weight": torch.randn(4, 64) * 0.1, k + ".lora_B.weight": torch.randn(64, 4) * 0.1,
          k + ".oft_R": torch.randn(4, 16, 16)}
    save_file(sd, str(tmp_path / "mixed.safetensors"))
    with pytest.warns(UserWarning, match=r"OFT with oft_R is not supported"):
        patch = load_lora(tmp_path / "mixed.safetensors", dit)
    assert patch.report.unused == [k + ".oft_R"]


def test_dora_on_either_axis_matches_the_trainers_formula_and_comfyui_differs_on_the_output_axis(setup, tmp_path):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(9)
    name = "layers.0.feed_forward.w2"
    w = state[name + ".weight"].float()
    out_f, in_f = w.shape
    a, b = torch.randn(4, in_f, generator=g) * 0.1, torch.randn(out_f, 4, generator=g) * 0.1
    dw = (b @ a) * (2.0 / 4)
    m_out = w.norm(dim=1) * (1 + 0.3 * torch.rand(out_f, generator=g))  # PEFT lora_magnitude_vector [out]
    m_in = w.norm(dim=0, keepdim=True) * (1 + 0.3 * torch.rand(1, in_f, generator=g))  # LyCORIS [1, in]
    k = "diffusion_model." + name
    for mag, expect in ((m_out, m_out[:, None] * (w + dw) / (w + dw).norm(dim=1, keepdim=True)),
                        (m_in, m_in * (w + dw) / (w + dw).norm(dim=0, keepdim=True))):
        sd = {k + ".lora_down.weight": a, k + ".lora_up.weight": b, k + ".alpha": torch.tensor(2.0),
              k + ".dora_scale": mag}
        save_file(sd, str(tmp_path / "dora.safetensors"))
        patch = load_lora(tmp_path / "dora.safetensors", dit, strength=0.7)
        assert patch.report.unused == [] and "DoRA" in patch.report.styles
        assert rel_err(patch.delta_weights(dit)[name], 0.7 * (expect - w)) <= 1e-5
        merged_state = dict(state)
        merged_state[name + ".weight"] = w + 0.7 * (expect - w)
        assert rel_err(run(dit, patch), run(make_dit(merged_state))) <= 1e-5
    # ComfyUI's weight_decompose divides by ||W|| (not ||W + dW||) on the output axis: a real difference
    comfy = m_out[:, None] * (w + dw) / w.norm(dim=1, keepdim=True)
    expect = m_out[:, None] * (w + dw) / (w + dw).norm(dim=1, keepdim=True)
    assert rel_err(comfy - w, expect - w) > 1e-2


def test_a_file_mixing_lora_loha_diff_b_and_set_weight_loads_with_no_unused_key(setup, tmp_path):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1
    biased = [k[: -len(".bias")] for k in state if k.endswith(".bias") and k[: -len(".bias")] + ".weight" in state
              and state[k[: -len(".bias")] + ".weight"].ndim == 2]
    assert biased, "the tiny DiT has Linear layers with a bias"
    sd, merged = {}, {k: v.clone() for k, v in state.items()}
    s = 0.6
    for name in ("layers.0.attention.to_q", "layers.0.attention.to_v"):
        a, b = r(4, 64), r(64, 4)
        sd[f"diffusion_model.{name}.lora_A.weight"], sd[f"diffusion_model.{name}.lora_B.weight"] = a, b
        rows = slice(0, 64) if name.endswith("q") else slice(128, 192)
        merged["layers.0.attention.qkv.weight"][rows] += s * (b @ a)
    ff = "layers.0.feed_forward.w3"
    o, i = state[ff + ".weight"].shape
    h = {n: r(*sh) for n, sh in (("hada_w1_a", (o, 2)), ("hada_w1_b", (2, i)), ("hada_w2_a", (o, 2)), ("hada_w2_b", (2, i)))}
    sd.update({f"lycoris_{ff.replace('.', '_')}.{n}": t for n, t in h.items()})
    merged[ff + ".weight"] += s * (h["hada_w1_a"] @ h["hada_w1_b"]) * (h["hada_w2_a"] @ h["hada_w2_b"])
    db = r(state[biased[0] + ".bias"].shape[0])
    sd[f"diffusion_model.{biased[0]}.diff_b"] = db
    merged[biased[0] + ".bias"] += s * db
    sw_name = "layers.1.attention.out"
    sw = state[sw_name + ".weight"] + r(*state[sw_name + ".weight"].shape)
    sd[f"diffusion_model.{sw_name}.set_weight"] = sw
    merged[sw_name + ".weight"] += s * (sw - state[sw_name + ".weight"])
    save_file(sd, str(tmp_path / "mixed.safetensors"))
    patch = load_lora(tmp_path / "mixed.safetensors", dit, strength=s)
    assert patch.report.unused == [] and {"LoHa", "bias diff", "set_weight"} <= patch.report.styles
    ref = run(make_dit(merged))
    assert rel_err(run(dit, patch), ref) <= 1e-5
    assert rel_err(run(merged_copy(dit, patch)), ref) <= 1e-5
    unmerge = merge_lora(dit, patch)
    assert rel_err(run(dit), ref) <= 1e-5
    unmerge()
    assert torch.equal(dit.get_submodule(biased[0]).bias, state[biased[0] + ".bias"])


def test_glora_matches_its_formula_on_split_qkv_rows_and_a_plain_linear(setup, tmp_path):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(13)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1
    sd, merged = {}, {k: v.clone() for k, v in state.items()}
    for key, name, rows in (("lycoris_layers_0_attention_to_k", "layers.0.attention.qkv", slice(64, 128)),
                            ("lycoris_layers_1_feed_forward_w2", "layers.1.feed_forward.w2", slice(None))):
        w = state[name + ".weight"][rows]
        o, i = w.shape
        a1, a2, b1, b2 = r(i, 3), r(3, i), r(o, 3), r(3, i)
        sd.update({f"{key}.a1.weight": a1, f"{key}.a2.weight": a2, f"{key}.b1.weight": b1, f"{key}.b2.weight": b2,
                   f"{key}.alpha": torch.tensor(1.5)})
        merged[name + ".weight"][rows] += 0.9 * (w @ a1 @ a2 + b1 @ b2) * (1.5 / 3)
    save_file(sd, str(tmp_path / "glora.safetensors"))
    patch = load_lora(tmp_path / "glora.safetensors", dit, strength=0.9)
    assert patch.report.unused == [] and "GLoRA" in patch.report.styles
    ref = run(make_dit(merged))
    assert rel_err(run(dit, patch), ref) <= 1e-5
    assert rel_err(run(merged_copy(dit, patch)), ref) <= 1e-5


def test_oft_matches_the_cayley_rotation_formula(setup, tmp_path):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(17)
    name = "layers.0.attention.out"
    w = state[name + ".weight"].float()
    k, n = 4, w.shape[0] // 4
    blocks = torch.randn(k, n, n, generator=g) * 0.05
    save_file({f"lycoris_{name.replace('.', '_')}.oft_blocks": blocks}, str(tmp_path / "oft.safetensors"))
    patch = load_lora(tmp_path / "oft.safetensors", dit, strength=0.8)
    assert patch.report.unused == [] and "OFT" in patch.report.styles
    q = blocks - blocks.transpose(1, 2)
    eye = torch.eye(n)
    rot = torch.block_diag(*[(eye + qi) @ torch.linalg.inv(eye - qi) for qi in q])
    expect = rot.T @ w
    merged = dict(state)
    merged[name + ".weight"] = w + 0.8 * (expect - w)
    assert rel_err(patch.delta_weights(dit)[name], 0.8 * (expect - w)) <= 1e-5
    assert rel_err(run(dit, patch), run(make_dit(merged))) <= 1e-5


def _butterfly_permutation(n, g):
    """P with (P W)[new] = W[old]: rows split in groups of 2g; row (group, h, j) moves to (group, j, h)."""
    p = torch.zeros(n, n)
    for grp in range(n // (2 * g)):
        for h in range(2):
            for j in range(g):
                p[grp * 2 * g + j * 2 + h, grp * 2 * g + h * g + j] = 1
    return p


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_boft_matches_the_butterfly_product_of_cayley_rotations(setup, tmp_path, strength):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(19)
    name = "layers.1.feed_forward.w2"
    w = state[name + ".weight"].float()
    n = w.shape[0]
    m, b = 2, 4  # two stages of 4x4 blocks
    k = n // b
    blocks = torch.randn(m, k, b, b, generator=g) * 0.1
    rescale = 1 + 0.1 * torch.randn(n, 1, generator=g)
    key = f"lycoris_{name.replace('.', '_')}"
    save_file({key + ".oft_blocks": blocks, key + ".rescale": rescale, key + ".alpha": torch.tensor(0.0)},
              str(tmp_path / "boft.safetensors"))
    patch = load_lora(tmp_path / "boft.safetensors", dit, strength=strength)
    assert patch.report.unused == [] and "BOFT" in patch.report.styles
    eye = torch.eye(b)
    expect = w
    for i in range(m):  # M_i = P_i^T blockdiag(s R + (1 - s) I) P_i, applied in stage order
        q = blocks[i] - blocks[i].transpose(1, 2)
        rots = [strength * (eye + qj) @ torch.linalg.inv(eye - qj) + (1 - strength) * eye for qj in q]
        p = _butterfly_permutation(n, 2 ** i * b // 2)
        expect = p.T @ torch.block_diag(*rots) @ p @ expect
    expect = rescale * expect
    assert rel_err(patch.delta_weights(dit)[name], expect - w) <= 1e-5
    merged = dict(state)
    merged[name + ".weight"] = expect
    assert rel_err(run(dit, patch), run(make_dit(merged))) <= 1e-5
    assert rel_err(run(merged_copy(dit, patch)), run(make_dit(merged))) <= 1e-5


def test_oft_rescale_and_alpha_constraint_follow_lycoris(setup, tmp_path):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(23)
    name = "layers.0.feed_forward.w1"
    w = state[name + ".weight"].float()
    k, n = 2, w.shape[0] // 2
    blocks = torch.randn(k, n, n, generator=g) * 0.2
    rescale = 1 + 0.1 * torch.randn(w.shape[0], 1, generator=g)
    alpha = 0.5  # a norm constraint on Q: this Q is larger, so it is scaled down to norm 0.5
    q = blocks - blocks.transpose(1, 2)
    assert q.norm() > alpha
    q = q * (alpha / (q.norm() + 1e-8))
    eye = torch.eye(n)
    expect = rescale * (torch.block_diag(*[(eye + qi) @ torch.linalg.inv(eye - qi) for qi in q]).T @ w)
    key = f"diffusion_model.{name}"
    save_file({key + ".oft_blocks": blocks, key + ".rescale": rescale, key + ".alpha": torch.tensor(alpha)},
              str(tmp_path / "oft.safetensors"))
    patch = load_lora(tmp_path / "oft.safetensors", dit)
    assert patch.report.unused == []
    assert rel_err(patch.delta_weights(dit)[name], expect - w) <= 1e-5


def test_make_tiny_writes_one_adapter_file_per_kind_that_loads_fully_and_changes_the_image(setup, tmp_path):
    from zimage_core.tiny import make_tiny
    from zimage_core.tiny.adapters import KINDS

    _, _, _, dit = setup
    paths = make_tiny(tmp_path)
    files = sorted(paths["loras"].glob("z_image_tiny_*.safetensors"))
    assert [f.stem.removeprefix("z_image_tiny_") for f in files] == sorted(KINDS)
    plain = run(dit)
    expected_style = {"lora": "ai-toolkit / ComfyUI (diffusion_model.)", "dora": "DoRA", "loha": "LoHa",
                      "lokr": "LoKr", "glora": "GLoRA", "oft": "OFT", "boft": "BOFT", "diff": "full diff"}
    for f in files:
        kind = f.stem.removeprefix("z_image_tiny_")
        patch = load_lora(f, dit, strength=0.9)
        assert patch.report.unused == [] and expected_style[kind] in patch.report.styles, kind
        out = run(dit, patch)
        assert rel_err(out, plain) > 1e-3, kind
        assert rel_err(run(merged_copy(dit, patch)), out) <= 1e-5, kind
