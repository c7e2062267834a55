"""LoRA: every key style maps to the same delta, PEFT style matches diffusers, merge == runtime, stacking,
reporting of unused keys, refusal of other families and non-LoRA files, and the LoRA nodes."""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.adapters.lora import load_lora, merge_lora, merged_copy
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.errors import CheckpointError, InputError
from zimage_core.tiny.dit import random_dit_state, write_diffusers_folder
from zimage_core.weights.ops import Linear
from lora_support import setup  # noqa: F401  (the module fixture)
from lora_support import (CFG, RANK, STYLES, inputs, make_dit, merged_with, peft_file, random_lora, rel_err, run,
                          style_file)

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
    assert rel_err(run(dit, patch), run(make_dit(merged_with(state, deltas)))) <= 1e-5


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
