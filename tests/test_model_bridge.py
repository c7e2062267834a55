"""The MODEL bridge inside ComfyUI (in process): KSampler on our MODEL equals KSampler on ComfyUI's own
NextDiT with the same weights and equals our ZImageSampler; LoraLoaderModelOnly on our MODEL equals our LoRA
node; ComfyUI's Lumina2 block patches reach our DiT as they reach NextDiT; bad input gets a clear message.

ComfyUI's modules are imported from COMFYUI_PATH (skipped when unset). The DiT is tiny but 256 wide: below
that width NextDiT's fixed 256-d timestep output no longer matches the checkpoint layout.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from comfy_inprocess import (  # skips the module without COMFYUI_PATH
    comfy,
    native_model,
    our_model,
)
from safetensors.torch import save_file
from test_lora import STYLES, random_lora, style_file

from zimage_core.tiny.dit import random_dit_state
from zimage_core.model.transformer import DiTConfig

CFG = DiTConfig(dim=256, n_layers=2, n_refiner_layers=2, n_heads=4, ffn_dim=682, cap_feat_dim=64, t_mid_dim=256)
CPU = torch.device("cpu")
STEPS, SEED = 3, 42


@pytest.fixture(scope="module")
def bridge(pack, tmp_path_factory):
    d = tmp_path_factory.mktemp("bridge")
    state = random_dit_state(CFG, seed=3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "dit.safetensors"))
    mod = lambda n: importlib.import_module(f"{pack.__name__}.{n}")
    dit = mod("zimage_core.model.dit_loader").load_dit(d / "dit.safetensors")
    patched = mod("zimage_core.adapters.patching").PatchedDiT(dit)
    return {"dir": d, "state": state, "patched": patched, "hm": mod("nodes.host_model"), "mod": mod}


def cond(seed, n=7, batch=1):
    return [[torch.randn(batch, n, CFG.cap_feat_dim, generator=torch.Generator().manual_seed(seed)), {}]]


def ksample(model, positive, latent, negative=None, cfg=1.0, denoise=1.0, noise_mask=None):
    negative = negative or [[torch.zeros_like(positive[0][0]), {}]]  # ConditioningZeroOut
    noise = comfy.sample.prepare_noise(latent, SEED)
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", positive, negative, latent,
                               denoise=denoise, noise_mask=noise_mask, seed=SEED, disable_pbar=True)


LATENT = torch.randn(2, 16, 6, 8, generator=torch.Generator().manual_seed(5)) * 0.5


@pytest.mark.parametrize("case", ["t2i_batch2", "cfg_img2img", "inpaint"])
def test_ksampler_on_our_model_equals_ksampler_on_native_nextdit(bridge, case):
    kw = {}
    if case == "t2i_batch2":
        latent = torch.zeros(2, 16, 6, 8)
    else:
        latent = LATENT[:1]
    if case == "cfg_img2img":
        kw = dict(negative=cond(9), cfg=3.0, denoise=0.6)
    if case == "inpaint":
        mask = torch.zeros(1, 1, 6, 8)
        mask[..., 2:5, 3:7] = 1
        kw = dict(noise_mask=mask)
    ours = ksample(our_model(bridge), cond(1), latent, **kw)
    native = ksample(native_model(bridge), cond(1), latent, **kw)
    assert ours.shape == native.shape
    # latents in VAE space; 1/255 of a pixel is far above this
    assert (ours - native).abs().max() <= 1e-3 * native.abs().max()


def ksampler_sigmas(model):
    """KSampler's euler/simple schedule: taken from ComfyUI's 1000-entry sigma table, so it differs from the
    exact shifted schedule of ZImageSampler's own `steps` by up to ~3e-4 in sigma; given explicitly here."""
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)


def our_sampler(bridge, dit, positive, latent):
    sampler = bridge["mod"]("nodes.sampler").ZImageSampler()
    (out,) = sampler.sample(dit, positive, {"samples": latent}, SEED, steps=STEPS, cfg=1.0, shift=3.0,
                            sigmas=ksampler_sigmas(our_model(bridge)))
    return out["samples"]


def test_ksampler_on_our_model_equals_our_sampler(bridge):
    latent = torch.zeros(1, 16, 6, 8)
    ref = {"samples": our_sampler(bridge, bridge["patched"], cond(1), latent)}
    ours = ksample(our_model(bridge), cond(1), latent)
    assert (ours - ref["samples"]).abs().max() <= 1e-3 * ref["samples"].abs().max()


# ComfyUI's Lumina2 key map (comfy/lora.py) covers these; kohya names of the unfused diffusers modules
# (lora_unet_layers_0_attention_to_q) and the dot style are ours only: they load with ZImageLoraLoader.
COMFY_STYLES = ["peft", "peft_adapter", "ai_toolkit", "native_dm", "native_unet"]
assert set(COMFY_STYLES) < set(STYLES)


@pytest.mark.parametrize("style", COMFY_STYLES)
def test_lora_loader_model_only_on_our_model_equals_our_lora_node(bridge, style, tmp_path):
    lora = random_lora(bridge["state"], seed=10)
    f = tmp_path / f"{style}.safetensors"
    save_file(style_file(lora, style), str(f))
    lora_node = bridge["mod"]("nodes.lora").ZImageLoraLoader()
    (with_lora,) = lora_node.apply(bridge["patched"], str(f), 0.8)
    latent = LATENT[:1]
    ref = ksample(our_model(bridge, with_lora), cond(1), latent)
    base = ksample(our_model(bridge), cond(1), latent)
    native_lora, _ = comfy.sd.load_lora_for_models(our_model(bridge), None, comfy.utils.load_torch_file(str(f)),
                                                   0.8, 0)
    got = ksample(native_lora, cond(1), latent)
    assert (ref - base).abs().max() > 1e-2  # the LoRA matters
    assert (got - ref).abs().max() <= 1e-3 * ref.abs().max()
    # ComfyUI keeps the LoRA patched into the shared tensors while that MODEL stays loaded; releasing the
    # bridge (what ZImageSampler does first) restores the weights as loaded
    dit, loaded = bridge["patched"].dit, bridge["state"]["layers.0.feed_forward.w1.weight"]
    assert not torch.equal(dit.layers[0].feed_forward.w1.weight, loaded)
    bridge["hm"].release(dit)
    assert torch.equal(dit.layers[0].feed_forward.w1.weight, loaded)
    assert (ksample(our_model(bridge), cond(1), latent) - base).abs().max() == 0


def lora_file(bridge, tmp_path, style="native_dm"):
    f = tmp_path / f"{style}.safetensors"
    save_file(style_file(random_lora(bridge["state"], seed=10), style), str(f))
    return f


def comfy_lora(model, f, strength=0.8):
    """LoraLoaderModelOnly's call."""
    return comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(f)), strength, 0)[0]


def test_a_partial_load_of_our_model_applies_loraloadermodelonly_on_the_fly_with_the_full_load_result(
        bridge, tmp_path, monkeypatch):
    """When the MODEL does not fit (--lowvram, --novram, a small GPU) ComfyUI loads it partially: the layers it
    leaves behind compute their weight per call with the LoRA applied by ComfyUI's patch functions (ops.HostCast),
    the others are patched in place. Forced here with a small budget on the CPU: same latents as the full load,
    and unloading leaves the weights as loaded."""
    import comfy.model_management as mm

    dit, f = bridge["patched"].dit, lora_file(bridge, tmp_path)
    loaded = {k: v.clone() for k, v in dit.state_dict().items()}
    full = ksample(comfy_lora(our_model(bridge), f), cond(1), LATENT[:1])
    bridge["hm"].release(dit)
    load = mm.LoadedModel.model_load
    monkeypatch.setattr(mm.LoadedModel, "model_load", lambda self, lowvram_model_memory=0, force_patch_weights=False:
                        load(self, 4 << 20, force_patch_weights))  # 4 MiB of the tiny DiT's ~20 MiB
    model = comfy_lora(our_model(bridge), f)
    part = ksample(model, cond(1), LATENT[:1])
    behind = [m for m in dit.modules() if getattr(m, "comfy_cast_weights", False)]
    assert model.model.model_lowvram and behind  # a partial load happened
    assert any(m.weight_function for m in behind)  # the LoRA of those layers is applied per call
    assert (part - full).abs().max() <= 1e-5 * full.abs().max()
    bridge["hm"].release(dit)
    assert all(torch.equal(v, loaded[k]) for k, v in dit.state_dict().items())
    assert not any(getattr(m, "comfy_cast_weights", False) or getattr(m, "weight_function", ()) for m in dit.modules())


def test_loraloadermodelonly_on_a_gguf_dit_model_patches_the_dequantized_weights_like_our_lora_node(
        bridge, tmp_path):
    """GGUF blocks (and scaled fp8 / comfy_quant weights) cannot take a patch in place: ComfyUI's LoRA on such a
    MODEL is applied to the dequantized weight at each call, and equals our LoRA node on the same file."""
    from zimage_core.tiny.quantized import write_gguf_dit

    mod = bridge["mod"]
    path = write_gguf_dit(tmp_path / "dit_q8.gguf", bridge["state"], "Q8_0")
    dit = mod("zimage_core.model.dit_loader").load_dit(path)
    patched = mod("zimage_core.adapters.patching").PatchedDiT(dit)
    packed = dit.layers[0].feed_forward.w1.weight
    assert packed.dtype == torch.uint8
    before = packed.clone()
    f = lora_file(bridge, tmp_path)
    (with_lora,) = mod("nodes.lora").ZImageLoraLoader().apply(patched, str(f), 0.8)
    ref = ksample(our_model({**bridge, "patched": with_lora}), cond(1), LATENT[:1])
    base = ksample(our_model({**bridge, "patched": patched}), cond(1), LATENT[:1])
    model = comfy_lora(our_model({**bridge, "patched": patched}), f)
    got = ksample(model, cond(1), LATENT[:1])
    assert (ref - base).abs().max() > 1e-2
    assert (got - ref).abs().max() <= 1e-3 * ref.abs().max()
    assert torch.equal(dit.layers[0].feed_forward.w1.weight, before)  # the packed blocks were never rewritten
    # ComfyUI freeing memory moves loaded layers out and adds its own copy of their patches: one stays per key
    model.partially_unload(CPU, memory_to_free=1 << 40)
    w1 = dit.layers[0].feed_forward.w1
    assert w1.comfy_cast_weights and len(w1.weight_function) == 1
    assert (ksample(model, cond(1), LATENT[:1]) - got).abs().max() <= 1e-6 * got.abs().max()
    bridge["hm"].release(dit)
    assert not dit.layers[0].feed_forward.w1.weight_function


def test_with_block_streaming_comfyui_manages_only_the_resident_part_and_loras_reach_the_streamed_blocks(
        bridge, tmp_path):
    """A DiT loaded with a memory preset streams blocks; as a MODEL, ComfyUI loads, moves and counts only the
    resident part, and LoraLoaderModelOnly's patches reach the streamed blocks on the fly (the streamer's host
    copies are never rewritten). Streamed here on the CPU (the copies are real, the device is the same)."""
    mod = bridge["mod"]
    dit = mod("zimage_core.model.dit_loader").load_dit(bridge["dir"] / "dit.safetensors")
    streamer = mod("zimage_core.weights.offload").enable_block_offload(dit, 2, "cpu")
    patched = mod("zimage_core.adapters.patching").PatchedDiT(dit)
    env = {**bridge, "patched": patched}
    f = lora_file(bridge, tmp_path)
    plain = comfy_lora(our_model(bridge), f)
    want = ksample(plain, cond(1), LATENT[:1])
    bridge["hm"].release(bridge["patched"].dit)
    streamed_block = streamer.sequence[-1]
    host = [(p.data_ptr(), p.clone()) for p in streamed_block.parameters()]
    model = comfy_lora(our_model(env), f)
    assert model.model_size() == comfy.model_management.module_size(model.model) - streamer.streamed_bytes()
    shape = (1, 16, 6, 8)  # ... and reserves the streamer's two slots beside the activations
    assert model.memory_required(shape) == plain.memory_required(shape) + 2 * streamer.slot_bytes
    got = ksample(model, cond(1), LATENT[:1])
    assert streamer.fetches > 0
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    # the streamed block's parameters point at the same host copies as before, unpatched
    assert all(p.data_ptr() == ptr and torch.equal(p, v) for p, (ptr, v) in zip(streamed_block.parameters(), host))
    loaded = bridge["state"]["layers.1.feed_forward.w1.weight"]
    assert torch.equal(dit.layers[1].feed_forward.w1.weight, loaded)
    bridge["hm"].release(dit)


def test_native_block_patches_act_on_our_dit_as_on_nextdit(bridge):
    calls = []

    def double_block(args):
        calls.append((args["block_index"], tuple(args["img"].shape), tuple(args["txt"].shape)))
        return {"img": args["img"] * 0.9 + 0.05 * args["img_input"]}

    def noise_refiner(args):
        return {"img": args["img"] * 1.1}

    outs = []
    for m in (our_model(bridge), native_model(bridge)):
        m.set_model_patch(double_block, "double_block")
        m.set_model_patch(noise_refiner, "noise_refiner")
        outs.append(ksample(m, cond(1), torch.zeros(1, 16, 6, 8)))
    plain = ksample(our_model(bridge), cond(1), torch.zeros(1, 16, 6, 8))
    assert (outs[0] - plain).abs().max() > 1e-2
    assert (outs[0] - outs[1]).abs().max() <= 1e-3 * outs[1].abs().max()
    # image run: 12 tokens padded to 32; caption run: 7 tokens padded to 32
    assert calls[0] == (0, (1, 32, CFG.dim), (1, 32, CFG.dim))


def test_our_patches_set_before_the_conversion_stay_active(bridge):
    adaln = bridge["mod"]("nodes.adaln")
    (scaled,) = adaln.ZImageAdaLNScale().apply(bridge["patched"], 1.5, 0.5, 0, -1, True)
    latent = torch.zeros(1, 16, 6, 8)
    ref = {"samples": our_sampler(bridge, scaled, cond(1), latent)}
    got = ksample(our_model(bridge, scaled), cond(1), latent)
    assert (got - ksample(our_model(bridge), cond(1), latent)).abs().max() > 1e-2
    assert (got - ref["samples"]).abs().max() <= 1e-3 * ref["samples"].abs().max()


def test_the_converter_refuses_what_is_not_a_zimage_dit(pack, bridge):
    node = bridge["mod"]("nodes.bridge").ZImageDiTToModel()
    errors = bridge["mod"]("zimage_core.errors")
    with pytest.raises(errors.InputError, match="ZIMAGE_DIT"):
        node.convert(native_model(bridge))


# ------------------------------------------------------------------------------------ NAG on the MODEL path

def nag_model(bridge, model, negative, scale=5.0, **kw):
    (out,) = bridge["mod"]("nodes.nag").ZImageNAGModel().apply(model, negative, scale, 2.5, 0.25, **kw)
    return out


def test_nag_model_at_scale_zero_or_with_the_positive_as_negative_gives_exactly_the_plain_image(bridge):
    latent = torch.zeros(1, 16, 6, 8)
    plain = ksample(our_model(bridge), cond(1), latent)
    off = nag_model(bridge, our_model(bridge), cond(2), scale=0.0)
    same = nag_model(bridge, our_model(bridge), cond(1))
    assert torch.equal(ksample(off, cond(1), latent), plain)
    assert torch.equal(ksample(same, cond(1), latent), plain)
    assert not torch.equal(ksample(nag_model(bridge, our_model(bridge), cond(2)), cond(1), latent), plain)


def test_nag_model_under_ksampler_equals_our_sampler_with_zimage_nag_with_lora_and_adaln(bridge, tmp_path):
    f = tmp_path / "lora.safetensors"
    save_file(style_file(random_lora(bridge["state"], seed=10), "peft"), str(f))
    (dit,) = bridge["mod"]("nodes.lora").ZImageLoraLoader().apply(bridge["patched"], str(f), 0.8)
    (dit,) = bridge["mod"]("nodes.adaln").ZImageAdaLNScale().apply(dit, 1.3, 0.5, 0, -1, True)
    (with_nag,) = bridge["mod"]("nodes.nag").ZImageNAG().apply(dit, cond(2, n=5), 5.0, 2.5, 0.25)
    latent = torch.zeros(1, 16, 6, 8)
    ref = our_sampler(bridge, with_nag, cond(1), latent)
    # NAG attached after the conversion, and after one of ComfyUI's own clones of the MODEL
    model = comfy.model_patcher.ModelPatcher.clone(our_model(bridge, dit))
    got = ksample(nag_model(bridge, model, cond(2, n=5)), cond(1), latent)
    assert (got - ksample(our_model(bridge, dit), cond(1), latent)).abs().max() > 1e-2  # NAG matters
    assert (got - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_nag_model_with_cfg_guides_the_positive_rows_of_ksamplers_batch_only(bridge):
    latent = torch.zeros(2, 16, 6, 8)
    model = nag_model(bridge, our_model(bridge), cond(2, n=5))
    seen = []

    def record(apply, a):
        seen.append(a["cond_or_uncond"])
        return apply(a["input"], a["timestep"], **a["c"])

    batched = model.clone()
    batched.set_model_unet_function_wrapper(record)
    got = ksample(batched, cond(1), latent, negative=cond(9), cfg=3.0)
    assert sorted(seen[0]) == [0, 1]  # one call of our DiT with positive and negative rows
    # reference: the positive prediction from the MODEL with NAG, the negative one from the plain MODEL, in
    # separate calls (ComfyUI batches both into one call of our DiT, [positive rows, negative rows])
    key = bridge["hm"].PATCHED_KEY

    def separately(a):
        opts = a["model_options"]
        plain = {**opts, "transformer_options": {**opts["transformer_options"], key: bridge["patched"]}}
        return [comfy.samplers.calc_cond_batch(a["model"], [a["conds"][0]], a["input"], a["sigma"], opts)[0],
                comfy.samplers.calc_cond_batch(a["model"], [None, a["conds"][1]], a["input"], a["sigma"], plain)[1]]

    split = model.clone()
    split.model_options["sampler_calc_cond_batch_function"] = separately
    want = ksample(split, cond(1), latent, negative=cond(9), cfg=3.0)
    plain = ksample(our_model(bridge), cond(1), latent, negative=cond(9), cfg=3.0)
    assert (got - plain).abs().max() > 1e-2
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_nag_model_refuses_a_model_of_another_family_and_a_wrong_negative(bridge):
    errors = bridge["mod"]("zimage_core.errors")
    with pytest.raises(errors.InputError, match="ZImageNAGModel 'model'.*native Lumina2.*ZImageDiTToModel"):
        nag_model(bridge, native_model(bridge), cond(2))
    other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), CPU, CPU)
    with pytest.raises(errors.InputError, match="ZImageNAGModel 'model'.*Z-Image DiT"):
        nag_model(bridge, other, cond(2))
    wrong = [[torch.randn(1, 5, 32), {}]]
    with pytest.raises(errors.InputError, match="hidden size 32"):
        nag_model(bridge, our_model(bridge), wrong)


# --------------------------------------------------------------- native conditioning and previews on our MODEL

def test_lumina2_clip_style_conditioning_gives_the_same_latents_on_our_model_as_on_nextdit(bridge):
    """CLIPTextEncode on a lumina2 CLIP gives [B, L, hidden] with an `attention_mask` (zeros where a batch of
    prompts was padded); ComfyUI's Lumina2 turns it into num_tokens / attention_mask conds. (ComfyUI builds
    that CLIP only at Qwen3-4B size, so a tiny text encoder cannot be loaded as one: the conditioning's
    layout is reproduced here.)"""
    pos = cond(1, n=9, batch=2)
    mask = torch.ones(2, 9)
    mask[1, 6:] = 0  # the second prompt is 3 tokens shorter
    positive = [[pos[0][0], {"attention_mask": mask, "pooled_output": None}]]
    latent = torch.zeros(2, 16, 6, 8)
    ours = ksample(our_model(bridge), positive, latent)
    native = ksample(native_model(bridge), positive, latent)
    assert (ours - native).abs().max() <= 1e-3 * native.abs().max()


def test_sampling_previews_of_our_model_equal_those_of_native_nextdit(bridge, monkeypatch):
    """KSampler's preview path (latent_preview.prepare_callback with latent2rgb) reads the MODEL's latent format:
    the Z-Image (Flux) factors, so our MODEL previews as the native one does."""
    import comfy.cli_args
    import latent_preview

    monkeypatch.setattr(comfy.cli_args.args, "preview_method", comfy.cli_args.LatentPreviewMethod.Latent2RGB)
    previews = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        previews.append(preview))
    latent = torch.zeros(1, 16, 6, 8)
    runs = []
    for model in (our_model(bridge), native_model(bridge)):
        previews.clear()
        assert type(model.get_model_object("latent_format")).__name__ == "Flux"
        noise = comfy.sample.prepare_noise(latent, SEED)
        comfy.sample.sample(model, noise, STEPS, 1.0, "euler", "simple", cond(1), [[torch.zeros(1, 7, 64), {}]],
                            latent, seed=SEED, disable_pbar=True,
                            callback=latent_preview.prepare_callback(model, STEPS))
        runs.append([np.asarray(p[1], dtype=np.int16) for p in previews])
    assert len(runs[0]) == STEPS and runs[0][0].shape == (6, 8, 3)
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(*runs))
