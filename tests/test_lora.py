"""LoRA: every key style maps to the same delta, PEFT style matches diffusers, merge == runtime, stacking,
reporting of unused keys, refusal of other families and non-LoRA files, and the LoRA nodes."""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.model.dit_loader import diffusers_to_native_name, native_to_diffusers
from zimage_core.errors import CheckpointError, InputError
from zimage_core.adapters.lora import load_lora, merge_lora, merged_copy
from zimage_core.weights.ops import Linear
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.tiny.dit import TINY_DIT, random_dit_state, write_diffusers_folder
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


# ----------------------------------------------------------------------------------------- parity

@torch.no_grad()
def test_peft_style_matches_diffusers_load_lora_weights(setup):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    d, state, lora, dit = setup
    write_diffusers_folder(state, CFG, d / "transformer")
    ref = diffusers.ZImageTransformer2DModel.from_pretrained(str(d / "transformer")).eval()
    sd = diffusers.ZImagePipeline.lora_state_dict(str(d / "peft.safetensors"))
    diffusers.ZImagePipeline.load_lora_into_transformer(sd, transformer=ref)  # = ZImagePipeline.load_lora_weights
    xs, caps, t = inputs()
    expected = torch.cat([o.flatten() for o in ref([x.clone() for x in xs], t, [c.clone() for c in caps],
                                                   return_dict=False)[0]])
    patch = load_lora(d / "peft.safetensors", dit)
    # every Linear of the model is targeted: attention, FFN, adaLN, refiners, embedders, final layer
    assert patch.report.modules_patched == sum(1 for m in dit.modules() if isinstance(m, Linear))
    assert patch.report.unused == []
    got = run(dit, patch)
    assert rel_err(run(dit), expected) > 0.1  # the LoRA matters
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("style", STYLES)
def test_every_key_style_changes_the_output_exactly_as_peft_style(setup, style, recwarn):
    d, state, lora, dit = setup
    f = d / f"{style}.safetensors"
    save_file(style_file(lora, style), str(f))
    ref = load_lora(d / "peft.safetensors", dit)
    patch = load_lora(f, CFG)
    assert patch.report.modules_patched == ref.report.modules_patched
    if style == "dot":  # redundant fused copies are reported, not applied twice
        assert patch.report.unused and all(".qkv." in k or ".out." in k for k in patch.report.unused)
        assert any("not used" in str(w.message) for w in recwarn)
    else:
        assert patch.report.unused == []
    assert rel_err(run(dit, patch), run(dit, ref)) <= 1e-6


def test_lokr_plain_factorised_and_tucker_match_the_kronecker_delta(setup, tmp_path):
    _, state, _, dit = setup
    g = torch.Generator().manual_seed(5)
    sd, deltas = {}, []
    # to_q (64 x 64 -> rows 0:64 of the fused qkv): full factors, no alpha scaling
    w1, w2 = torch.randn(4, 8, generator=g) * 0.2, torch.randn(16, 8, generator=g) * 0.2
    sd["diffusion_model.layers.0.attention.to_q.lokr_w1"], sd["diffusion_model.layers.0.attention.to_q.lokr_w2"] = w1, w2
    sd["diffusion_model.layers.0.attention.to_q.alpha"] = torch.tensor(8.0)  # ignored: nothing factorised
    deltas.append(("layers.0.attention.qkv", slice(0, 64), torch.kron(w1, w2)))
    # feed_forward.w2 (64 x 170): factorised w2, alpha / rank scaling
    a1 = torch.randn(2, 10, generator=g) * 0.2
    w2a, w2b = torch.randn(32, 3, generator=g) * 0.2, torch.randn(3, 17, generator=g) * 0.2
    k = "lora_unet_layers_1_feed_forward_w2"
    sd[k + ".lokr_w1"], sd[k + ".lokr_w2_a"], sd[k + ".lokr_w2_b"], sd[k + ".alpha"] = a1, w2a, w2b, torch.tensor(6.0)
    deltas.append(("layers.1.feed_forward.w2", slice(None), torch.kron(a1, w2a @ w2b) * (6.0 / 3)))
    # feed_forward.w1 (170 x 64): w2 with a Tucker core, W2[p, q] = sum_ij t[i, j] a[i, p] b[j, q]
    w1, t2 = torch.randn(2, 4, generator=g) * 0.2, torch.randn(3, 3, generator=g) * 0.5
    ta, tb = torch.randn(3, 85, generator=g) * 0.2, torch.randn(3, 16, generator=g) * 0.2
    k = "lycoris_layers_0_feed_forward_w1"
    sd |= {k + ".lokr_w1": w1, k + ".lokr_w2_a": ta, k + ".lokr_w2_b": tb, k + ".lokr_t2": t2, k + ".alpha": torch.tensor(1.5)}
    deltas.append(("layers.0.feed_forward.w1", slice(None), torch.kron(w1, ta.T @ t2 @ tb) * (1.5 / 3)))
    save_file(sd, str(tmp_path / "lokr.safetensors"))
    patch = load_lora(tmp_path / "lokr.safetensors", dit)
    assert patch.report.modules_patched == 3 and patch.report.unused == []
    merged_state = dict(state)
    for name, rows, delta in deltas:
        w = merged_state[name + ".weight"].clone()
        w[rows] += delta
        merged_state[name + ".weight"] = w
    assert rel_err(run(dit, patch), run(make_dit(merged_state))) <= 1e-5


# ------------------------------------------------------------------------------- application

def test_strength_zero_is_bit_identical_and_patches_are_removed_after_the_run(setup):
    d, _, _, dit = setup
    patch = load_lora(d / "peft.safetensors", dit)
    base = run(dit)
    assert torch.equal(run(dit, patch.with_strength(0.0)), base)
    assert not torch.equal(run(dit, patch), base)
    assert torch.equal(run(dit), base)  # uninstalled cleanly
    assert all(not m.patches for m in dit.modules() if hasattr(m, "patches"))
    half = patch.with_strength(0.5)
    assert half.adapters is patch.adapters and patch.strength == 1.0


def test_two_stacked_loras_equal_one_lora_of_their_summed_delta(setup, tmp_path):
    _, state, lora, dit = setup
    other = random_lora(state, seed=11, rank=3)
    save_file(peft_file(lora), str(tmp_path / "a.safetensors"))
    save_file(peft_file(other), str(tmp_path / "b.safetensors"))
    summed = {n: (torch.cat([lora[n][0], other[n][0]]), torch.cat([lora[n][1], other[n][1]], dim=1)) for n in lora}
    save_file(peft_file(summed), str(tmp_path / "sum.safetensors"))
    a, b, s = (load_lora(tmp_path / f"{n}.safetensors", dit) for n in ("a", "b", "sum"))
    assert rel_err(run(dit, a, b), run(dit, s)) <= 1e-6
    # strengths are per LoRA: 0.5 A + 2 B == a LoRA with B-halves scaled the same way
    scaled = {n: (summed[n][0], torch.cat([0.5 * lora[n][1], 2.0 * other[n][1]], dim=1)) for n in lora}
    save_file(peft_file(scaled), str(tmp_path / "scaled.safetensors"))
    assert rel_err(run(dit, a.with_strength(0.5), b.with_strength(2.0)),
                   run(dit, load_lora(tmp_path / "scaled.safetensors", dit))) <= 1e-6


def test_merged_equals_runtime_in_fp32_and_unmerge_restores_exactly(setup):
    d, _, _, dit = setup
    patch = load_lora(d / "peft.safetensors", dit).with_strength(0.7)
    base, runtime = run(dit), run(dit, patch)
    copy = merged_copy(dit, patch)
    assert rel_err(run(copy), runtime) <= 1e-5
    assert torch.equal(run(dit), base)  # the source model is untouched; unpatched tensors are shared
    assert copy.layers[0].attention_norm1.weight is dit.layers[0].attention_norm1.weight
    unmerge = merge_lora(dit, patch)
    assert rel_err(run(dit), runtime) <= 1e-5
    unmerge()
    assert torch.equal(run(dit), base)



def test_norm_diffs_as_comfyui_trains_them_patch_the_norm_weights_at_run_time_and_merged(setup, tmp_path):
    """ComfyUI's TrainLoraNode writes `<norm>.diff` [dim] for every RMSNorm (w' = w + s d) beside its LoRAs."""
    d, state, _, dit = setup
    g = torch.Generator().manual_seed(3)
    diffs = {k[: -len(".weight")]: torch.randn(v.shape, generator=g) * 0.2 for k, v in state.items()
             if v.ndim == 1 and k.endswith(".weight")}  # the RMSNorms
    assert any("q_norm" in k for k in diffs) and "cap_embedder.0" in diffs
    save_file({f"diffusion_model.{k}.diff": v for k, v in diffs.items()}, str(tmp_path / "norms.safetensors"))
    patch = load_lora(tmp_path / "norms.safetensors", dit).with_strength(0.5)
    assert not patch.report.unused and patch.report.modules_patched == len(diffs)
    ref = make_dit({k: v + 0.5 * diffs[k[: -len(".weight")]] if k[: -len(".weight")] in diffs else v
                    for k, v in state.items()})
    base, want = run(dit), run(ref)
    assert rel_err(want, base) > 1e-2
    assert rel_err(run(dit, patch), want) <= 1e-6
    assert torch.equal(run(dit), base)  # uninstalled after the run
    assert rel_err(run(merged_copy(dit, patch)), want) <= 1e-6
    unmerge = merge_lora(dit, patch)
    assert rel_err(run(dit), want) <= 1e-6
    unmerge()
    assert torch.equal(run(dit), base)

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merge_and_runtime_with_half_precision_storage(setup, dtype):
    d, state, _, _ = setup
    dit = make_dit(state, dtype)
    patch = load_lora(d / "peft.safetensors", dit)
    runtime = run(dit, patch)
    merged = run(merged_copy(dit, patch))
    # merged weights are rounded once to the storage dtype: ~ one ulp of bf16 (2^-8) / fp16 (2^-11) per weight
    assert rel_err(merged, runtime) <= (2e-2 if dtype == torch.bfloat16 else 3e-3)
    assert merged_copy(dit, patch).layers[0].attention.qkv.weight.dtype == dtype


def test_fp8_runtime_delta_is_exact_per_module_and_merging_is_refused(setup):
    d, state, _, _ = setup
    dit = make_dit(state, torch.float8_e4m3fn)
    patch = load_lora(d / "peft.safetensors", dit)
    m = dit.layers[0].attention.qkv
    x = torch.randn(3, 5, CFG.dim)
    base = m(x)
    with PatchedDiT(dit, (patch,)).applied():
        y = m(x)
    parts = sorted((a for a in patch.adapters if a.target.module == "layers.0.attention.qkv"),
                   key=lambda a: a.target.part)
    delta = torch.cat([a.b @ a.a for a in parts])  # q | k | v rows
    assert torch.allclose(y - base, x @ delta.T, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="fp8"):
        merged_copy(dit, patch)


# ------------------------------------------------------------------------------------- reporting

def test_unused_keys_are_reported_in_a_warning_with_a_count(setup, tmp_path):
    _, _, lora, dit = setup
    sd = peft_file({n: lora[n] for n in list(lora)[:3]})
    junk = [f"transformer.layers.{7 + i}.attention.to_q.lora_A.weight" for i in range(12)]  # blocks it lacks
    sd.update({k: torch.zeros(RANK, CFG.dim) for k in junk})
    sd["transformer.layers.0.attention.to_q.dora_scale"] = torch.ones(1, CFG.dim)
    save_file(sd, str(tmp_path / "junk.safetensors"))
    with pytest.warns(UserWarning) as w:
        patch = load_lora(tmp_path / "junk.safetensors", dit)
    msg = str(w[0].message)
    assert "13 key(s) not used" in msg and "junk.safetensors" in msg
    assert patch.report.adapters == 3 and len(patch.report.unused) == 13
    assert set(junk) <= set(patch.report.unused)


@pytest.mark.parametrize("keys, family", [
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"], "SDXL"),
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_te1_text_model_x.lora_down.weight"], "SDXL"),
    (["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight",
      "diffusion_model.single_blocks.0.linear1.lora_A.weight"], "Flux"),
    (["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"], "Flux"),
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], "Flux"),
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], "Flux"),
])
def test_a_lora_of_another_family_is_refused_with_the_family(tmp_path, keys, family):
    save_file({k: torch.zeros(4, 8) for k in keys}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_lora(tmp_path / "other.safetensors", CFG)
    assert "other.safetensors" in str(e.value) and family in str(e.value) and "not for Z-Image" in str(e.value)


def test_a_non_lora_file_names_the_loader_to_use(tmp_path):
    save_file(random_dit_state(CFG), str(tmp_path / "dit.safetensors"))
    with pytest.raises(CheckpointError, match=r"dit\.safetensors.*Z-Image DiT.*ZImageDiTLoader"):
        load_lora(tmp_path / "dit.safetensors", CFG)


def test_a_lora_for_another_model_size_is_refused(tmp_path):
    sd = {"diffusion_model.layers.0.attention.qkv.lora_down.weight": torch.zeros(4, 2304),
          "diffusion_model.layers.0.attention.qkv.lora_up.weight": torch.zeros(3 * 2304, 4)}
    save_file(sd, str(tmp_path / "lumina.safetensors"))
    with pytest.raises(CheckpointError, match=r"lumina\.safetensors.*do not fit"):
        load_lora(tmp_path / "lumina.safetensors", CFG)


# ------------------------------------------------------------------------------------------ nodes

@pytest.fixture(scope="module")
def nodes(pack):
    return importlib.import_module(pack.__name__ + ".nodes.lora")


def _node_dit(pack, state):
    core = importlib.import_module(pack.__name__ + ".zimage_core.model.transformer")
    patching = importlib.import_module(pack.__name__ + ".zimage_core.adapters.patching")
    m = core.ZImageDiT(CFG)
    m.load_state_dict(state)
    return patching.PatchedDiT(m.eval().requires_grad_(False))


def test_lora_nodes_declare_v1_api_with_tooltips(nodes):
    for cls in nodes.NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()["required"]
        assert all("tooltip" in v[1] for v in spec.values())
        assert cls.CATEGORY == "Z-Image/lora" and cls.RETURN_TYPES == ("ZIMAGE_DIT",) and cls.DESCRIPTION
        assert hasattr(cls, cls.FUNCTION)
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)


def test_lora_loader_and_stack_nodes(pack, nodes, setup, tmp_path):
    d, state, lora, _ = setup
    dit = _node_dit(pack, state)
    f = str(d / "peft.safetensors")
    (out,) = nodes.ZImageLoraLoader().apply(dit, f, 0.8)
    assert dit.patches == () and len(out.patches) == 1 and out.patches[0].strength == 0.8
    assert nodes.ZImageLoraLoader().apply(dit, f, 0.0)[0] is dit
    other = random_lora(state, seed=12)
    save_file(peft_file(other), str(tmp_path / "b.safetensors"))
    (stacked,) = nodes.ZImageLoraStack().apply(
        dit, lora_1=f, strength_1=0.8, enabled_1=True, lora_2=str(tmp_path / "b.safetensors"), strength_2=0.5,
        enabled_2=False, lora_3="None", strength_3=1.0, enabled_3=True, lora_4=f, strength_4=0.3, enabled_4=True)
    assert [p.strength for p in stacked.patches] == [0.8, 0.3]
    assert stacked.patches[0].adapters is stacked.patches[1].adapters  # the file was parsed once


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
    merged_state = dict(state)
    for name, rows, delta in deltas:
        w = merged_state[name + ".weight"].clone()
        w[rows] += delta
        merged_state[name + ".weight"] = w
        assert rel_err(patch.delta_weights(dit)[name][rows], delta) <= 1e-5
    assert rel_err(run(dit, patch), run(make_dit(merged_state))) <= 1e-5


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
