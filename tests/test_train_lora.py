"""ComfyUI's own LoRA training (comfy_extras/nodes_train.py: TrainLoraNode, LoraModelLoader, SaveLoRA) on our
MODEL, in process, against the same node on ComfyUI's own NextDiT holding the same weights (the fixtures of
test_model_bridge.py): the same LoRA, loss curve and pictures for every algorithm and option the node offers,
and on quantized bases (GGUF, scaled fp8, comfy_quant) the LoRA native trains on the exactly dequantized
weights, with the base left packed.

TrainLoraNode draws each new adapter's random init from torch's global RNG, in the order of
`model.named_modules()`: both runs seed it the same way, and our DiT registers its modules in NextDiT's order.
fp32 tolerances: LoRA tensors trained by SGD within 1e-3 of their largest entry (observed 1.4e-4: the two
forwards differ by fp32 rounding, ~2e-6 of the loss); with AdamW, which turns the sign of near-zero gradient
entries into whole learning-rate steps, the loss curves and the pictures are compared (latents within 1e-3
of their largest value, as in test_model_bridge).
"""
from __future__ import annotations

import gc
import importlib
import logging

import pytest
import torch
from safetensors.torch import save_file
from test_model_bridge import (  # noqa: F401  (bridge: the fixture; comfy: imported there from COMFYUI_PATH)
    CFG,
    bridge,
    comfy,
    cond,
    ksample,
    native_model,
    our_model,
    our_sampler,
)

nodes_train = importlib.import_module("comfy_extras.nodes_train")
import comfy.model_management as mm  # noqa: E402
import folder_paths  # noqa: E402

LAT = torch.randn(2, 16, 6, 8, generator=torch.Generator().manual_seed(5)) * 0.5
OPTIONS = dict(batch_size=1, steps=3, grad_accumulation_steps=1, learning_rate=1e-3, rank=4, optimizer="AdamW",
               loss_function="MSE", seed=3, training_dtype="fp32", lora_dtype="fp32", quantized_backward=False,
               algorithm="LoRA", gradient_checkpointing=False, checkpoint_depth=1, offloading=False,
               existing_lora="[None]", bucket_mode=False, bypass_mode=False)


def _result(out):
    return out.result if hasattr(out, "result") else out


def train(model, latents=None, **kw):
    """TrainLoraNode's call (every input a list: is_input_list) -> (lora state dict, losses, steps)."""
    torch.manual_seed(0)  # the adapters' random init (global RNG), the same for both MODELs
    args = {k: [v] for k, v in {**OPTIONS, **kw}.items()}
    latents = latents or [{"samples": LAT}]
    lora, loss, steps = _result(nodes_train.TrainLoraNode.execute(model=[model], latents=latents,
                                                                  positive=[cond(1)], **args))
    return lora, loss["loss"], steps


def picture(env, model, lora, bypass=False):
    """LoraModelLoader + KSampler; the bridge is released afterwards (ComfyUI keeps weight patches applied to the
    shared tensors while a MODEL stays loaded)."""
    (with_lora,) = _result(nodes_train.LoraModelLoader.execute(model, lora, 1.0, bypass))
    out = ksample(with_lora, cond(1), torch.zeros(1, 16, 6, 8))
    env["hm"].release(env["patched"].dit)
    return out


def close(got, want, rel=1e-3):
    return (got - want).abs().max() <= rel * want.abs().max()


def assert_same_training(env, **kw):
    native, ours = train(native_model(env), **kw), train(our_model(env), **kw)
    assert set(ours[0]) == set(native[0]) and ours[2] == native[2]
    assert ours[1] == pytest.approx(native[1], rel=1e-4)
    want, got = picture(env, native_model(env), native[0]), picture(env, our_model(env), ours[0])
    base = ksample(native_model(env), cond(1), torch.zeros(1, 16, 6, 8))
    assert (want - base).abs().max() > 1e-2  # the LoRA matters
    assert close(got, want)
    return native, ours


def test_our_model_offers_trainloranode_the_weight_keys_of_nextdit_in_its_order(bridge):
    """The adapters' init is drawn per weight key in named_modules() order: the same keys in the same order."""
    def keys(model):
        return [n for n, m in model.model.named_modules()
                if hasattr(m, "weight_function") and getattr(m, "weight", None) is not None]
    assert keys(our_model(bridge)) == keys(native_model(bridge))


def test_trainloranode_on_our_model_trains_natives_lora_tensors(bridge):
    native, ours = train(native_model(bridge), optimizer="SGD", learning_rate=0.05), \
        train(our_model(bridge), optimizer="SGD", learning_rate=0.05)
    assert list(ours[0]) == list(native[0])
    for k, v in native[0].items():
        assert (ours[0][k] - v).abs().max() <= 1e-3 * v.abs().max(), k
    assert ours[1] == pytest.approx(native[1], rel=1e-5)


def test_trainloranode_adapters_get_our_stored_weight_itself_and_leave_it_as_loaded(bridge, monkeypatch):
    """A weight already in the compute dtype goes to the training adapters (which compute a new tensor) as it is
    stored, without a full-size copy per call; the stored weights are the same after training."""
    dit = bridge["patched"].dit
    stored = {n: p.detach().clone() for n, p in dit.named_parameters()}
    ptrs = {m.weight.untyped_storage().data_ptr() for m in dit.modules() if hasattr(m, "compute_weight")}
    got = []
    lora_diff = importlib.import_module("comfy.weight_adapter.lora").LoraDiff
    call = lora_diff.__call__

    def recording(self, w):
        got.append(w.untyped_storage().data_ptr())
        return call(self, w)

    monkeypatch.setattr(lora_diff, "__call__", recording)
    train(our_model(bridge), steps=1, gradient_checkpointing=True)
    assert got and set(got) <= ptrs  # every call got a stored weight, not a copy
    assert all(torch.equal(p.detach(), stored[n]) for n, p in dit.named_parameters())


class InPlaceShift(torch.nn.Module):
    """A weight function that breaks the rule: it changes the weight it is given."""

    def forward(self, w):
        return w.add_(1.0)


def test_a_weight_function_module_that_changes_the_stored_weight_in_place_is_named(bridge):
    ops = bridge["mod"]("zimage_core.weights.ops")
    layer = ops.Linear(8, 4, bias=False)
    layer.weight.requires_grad_(False)
    layer.weight_function = [InPlaceShift()]
    with pytest.raises(RuntimeError, match="InPlaceShift changed the stored weight in place"):
        layer(torch.randn(2, 8))


def test_a_weight_loaded_under_inference_mode_trains_and_torch_refuses_changing_it_in_place(bridge):
    """A ComfyUI server loads models under torch.inference_mode (no version counter); training (outside it) still
    passes the adapters the stored weight, and an in-place change to it is refused by torch itself."""
    ops = bridge["mod"]("zimage_core.weights.ops")

    class Shift(torch.nn.Module):
        def forward(self, w):
            return w + 1.0

    with torch.inference_mode():
        layer = ops.Linear(8, 4, bias=False)
        layer.weight.requires_grad_(False)  # as a loaded model's weights are
    x = torch.randn(2, 8)
    layer.weight_function = [Shift()]
    assert torch.allclose(layer(x), x @ (layer.weight + 1.0).T)
    layer.weight_function = [InPlaceShift()]
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        layer(x)


def test_a_lora_trained_on_our_model_gives_natives_pictures_through_loramodelloader_and_the_saved_file(
        bridge, tmp_path, caplog):
    native, ours = assert_same_training(bridge)
    # SaveLoRA -> LoraLoaderModelOnly (comfy.sd.load_lora_for_models on the file) on both MODELs
    folder_paths.set_output_directory(str(tmp_path))
    nodes_train.SaveLoRA.execute(ours[0], "loras/zimage", ours[2])
    (f,) = (tmp_path / "loras").glob("zimage_3_steps_*.safetensors")
    sd = comfy.utils.load_torch_file(str(f))
    assert sd.keys() == ours[0].keys()
    with caplog.at_level(logging.WARNING):
        runs = [comfy.sd.load_lora_for_models(m, None, sd, 1.0, 0)[0] for m in (native_model(bridge), our_model(bridge))]
    assert "not loaded" not in caplog.text  # every key of the file patches a weight of both MODELs
    want = ksample(runs[0], cond(1), torch.zeros(1, 16, 6, 8))
    got = ksample(runs[1], cond(1), torch.zeros(1, 16, 6, 8))
    bridge["hm"].release(bridge["patched"].dit)
    assert close(got, want)
    assert close(got, picture(bridge, native_model(bridge), native[0]))
    # ... and through our LoRA loader on the DiT: every key used, the norms' `.diff` patches included
    report = bridge["mod"]("zimage_core.adapters.lora").load_lora(f, bridge["patched"].dit).report
    assert not report.unused and {"norm diff", "bias diff"} <= report.styles
    (with_lora,) = bridge["mod"]("nodes.lora").ZImageLoraLoader().apply(bridge["patched"], str(f), 1.0)
    assert close(ksample(our_model(bridge, with_lora), cond(1), torch.zeros(1, 16, 6, 8)), want)


@pytest.mark.parametrize("options", [
    dict(algorithm="LoHa"), dict(algorithm="LoKr"), dict(algorithm="OFT"),
    dict(bypass_mode=True), dict(bypass_mode=True, algorithm="LoKr"),
    dict(gradient_checkpointing=True), dict(gradient_checkpointing=True, checkpoint_depth=3),
    dict(gradient_checkpointing=True, checkpoint_depth=3, offloading=True), dict(offloading=True),
    dict(batch_size=2, grad_accumulation_steps=2), dict(loss_function="Huber", optimizer="Adam"),
    dict(rank=128),  # larger than every layer's input (64 .. 682): native trains it as it is, and so do we
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_trainloranode_option_trains_on_our_model_as_on_native(bridge, options):
    assert_same_training(bridge, **options)


def _rank_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "TrainLoraNode's LoRA rank" in r.getMessage()]


@pytest.mark.parametrize("bypass", [False, True], ids=["weight_wrappers", "bypass_mode"])
def test_a_rank_larger_than_some_layers_logs_one_warning_naming_them_once_per_training(bridge, caplog, bypass):
    """Rank 128 (the node's largest) on the bridge DiT: the layers with fewer than 128 inputs or outputs (their LoRA
    can use at most that many directions) are counted and the smallest named, in one warning per training (not
    one per layer or per step); the training itself is native's (test_every_trainloranode_option_...[rank=128]).
    A rank every layer can use logs nothing."""
    def capacity(m):
        return min(m.weight.shape[0], m.weight.shape[1:].numel())

    layers = [(n, capacity(m)) for n, m in native_model(bridge).model.diffusion_model.named_modules()
              if hasattr(m, "weight_function") and getattr(m, "weight", None) is not None and m.weight.ndim >= 2]
    small = sorted((c, n) for n, c in layers if c < 128)
    assert small and len(small) < len(layers)
    with caplog.at_level(logging.WARNING):
        train(our_model(bridge), rank=128, steps=2, bypass_mode=bypass, gradient_checkpointing=True)
    (w,) = _rank_warnings(caplog)
    msg = w.getMessage()
    assert f"rank 128 is larger than {len(small)} of the {len(layers)} layers" in msg, msg
    assert small[0][1] in msg and "no capacity" in msg and f"rank {small[0][0]} or less fits every layer" in msg, msg
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train(our_model(bridge), rank=128, steps=1, bypass_mode=bypass)  # a new training: its own warning
        assert len(_rank_warnings(caplog)) == 1
        train(our_model(bridge), rank=small[0][0], steps=1, bypass_mode=bypass)
    assert len(_rank_warnings(caplog)) == 1


def test_a_trained_lora_in_bypass_mode_gives_natives_picture_on_our_model(bridge):
    """LoraModelLoader with bypass (comfy.sd.load_bypass_lora_for_models, what LoraLoaderBypass and
    LoraLoaderBypassModelOnly call with a file's LoRA) on our MODEL: native's picture, and the picture of the
    LoRA merged into the weights."""
    lora = train(native_model(bridge))[0]
    want = picture(bridge, native_model(bridge), lora, bypass=True)
    got = picture(bridge, our_model(bridge), lora, bypass=True)
    assert (want - ksample(native_model(bridge), cond(1), torch.zeros(1, 16, 6, 8))).abs().max() > 1e-2
    assert close(got, want)
    assert close(got, picture(bridge, our_model(bridge), lora))


def test_continuing_an_existing_lora_on_our_model_continues_it_as_native_does(bridge, tmp_path):
    lora, _, steps = train(native_model(bridge))
    (tmp_path / "loras").mkdir()
    save_file(lora, str(tmp_path / "loras" / f"first_{steps}_steps_00001_.safetensors"))
    folder_paths.add_model_folder_path("loras", str(tmp_path / "loras"), is_default=True)
    native, ours = assert_same_training(bridge, existing_lora=f"first_{steps}_steps_00001_.safetensors")
    assert ours[2] == 2 * steps


def test_latents_of_different_sizes_train_one_by_one_on_our_model_as_on_native(bridge):
    other = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(7))
    latents = [{"samples": LAT[:1]}, {"samples": other}]
    native = train(native_model(bridge), latents, batch_size=2, steps=2)
    ours = train(our_model(bridge), latents, batch_size=2, steps=2)
    assert ours[1] == pytest.approx(native[1], rel=1e-4)


def test_bf16_training_on_our_model_agrees_with_natives_within_bf16_rounding(bridge):
    """In bf16 (autocast, TrainLoraNode's default) both trainings round differently (our DiT keeps norms and
    residuals in its compute dtype); ours is as close to native's bf16 LoRA as native's is to its fp32 one."""
    fp32 = picture(bridge, native_model(bridge), train(native_model(bridge))[0])
    native = picture(bridge, native_model(bridge), train(native_model(bridge), training_dtype="bf16")[0])
    ours = picture(bridge, our_model(bridge), train(our_model(bridge), training_dtype="bf16")[0])
    assert (ours - native).abs().max() <= (native - fp32).abs().max()
    assert close(ours, native, rel=0.05)


def test_our_model_is_unchanged_after_training_and_after_an_interrupted_training(bridge):
    plain = ksample(our_model(bridge), cond(1), torch.zeros(1, 16, 6, 8))
    sampled = our_sampler(bridge, bridge["patched"], cond(1), torch.zeros(1, 16, 6, 8))
    train(our_model(bridge), gradient_checkpointing=True, bypass_mode=True)
    assert torch.equal(ksample(our_model(bridge), cond(1), torch.zeros(1, 16, 6, 8)), plain)
    old = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):  # the server's hook: stop at the UI's interrupt
        if value >= 1:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(our_model(bridge), gradient_checkpointing=True, checkpoint_depth=3, bypass_mode=True)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        mm.interrupt_current_processing(False)
    dit = bridge["patched"].dit
    # the checkpointing / bypass wrappers are gone (ComfyUI leaves the bound class forward as an attribute)
    assert all(getattr(m.forward, "__func__", None) is type(m).forward for m in dit.modules())
    assert torch.equal(ksample(our_model(bridge), cond(1), torch.zeros(1, 16, 6, 8)), plain)
    assert not any(getattr(m, "weight_function", None) for m in dit.modules())  # the adapters went with the clone
    latent = torch.zeros(1, 16, 6, 8)  # our own sampler on the DiT, too
    assert torch.equal(our_sampler(bridge, bridge["patched"], cond(1), latent), sampled)


# ------------------------------------------------------------------------------------------ quantized bases

def _scaled_fp8(state, path):
    out = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    for k, v in state.items():
        if v.ndim == 2 and k.startswith(("layers", "noise_refiner", "context_refiner")):
            s = v.abs().max() / 448.0
            out[k], out[k[: -len("weight")] + "scale_weight"] = (v / s).to(torch.float8_e4m3fn), s.reshape(1)
        else:
            out[k] = v
    save_file(out, str(path))
    return path


def _comfy_quant(state, path, fmt):
    quantize = pytest.importorskip("test_comfy_quant").quantize  # comfy-kitchen's quantizers
    import json

    out = {}
    for k, v in state.items():
        layer = k[: -len(".weight")]
        if v.ndim == 2 and k.endswith(".weight") and k.startswith(("layers", "noise_refiner", "context_refiner")):
            stored, _ = quantize(v, fmt)
            out |= {f"{layer}.{n}": t for n, t in stored.items()}
            out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
        else:
            out[k] = v
    save_file({k: t.contiguous() for k, t in out.items()}, str(path))
    return path


def quantized_env(bridge, tmp_path, kind):
    """Our DiT from a quantized file of the bridge's weights, and those weights exactly dequantized."""
    from zimage_core.tiny.quantized import write_gguf_dit

    mod, state = bridge["mod"], bridge["state"]
    if kind in ("Q8_0", "Q4_K"):
        path = write_gguf_dit(tmp_path / f"dit_{kind}.gguf", state, kind)
    elif kind == "scaled_fp8":
        path = _scaled_fp8(state, tmp_path / "dit_fp8.safetensors")
    else:
        path = _comfy_quant(state, tmp_path / f"dit_{kind}.safetensors", kind)
    dit = mod("zimage_core.model.dit_loader").load_dit(path)
    linear = mod("zimage_core.weights.ops").Linear
    dense = {}
    for n, m in dit.named_modules():
        for pn, p in m.named_parameters(recurse=False):
            if pn in ("weight_scale", "weight_scale_2"):
                continue
            stored = isinstance(m, linear) and pn == "weight" and (m.quant is not None or m.scale_weight is not None)
            dense[f"{n}.{pn}" if n else pn] = m.compute_weight(torch.float32) if stored else p.detach().float()
    return {**bridge, "patched": mod("zimage_core.adapters.patching").PatchedDiT(dit), "state": dense}, dit


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_K", "scaled_fp8", "float8_e4m3fn"])  # nvfp4 needs 16 | 682
def test_training_on_a_quantized_base_trains_the_lora_of_its_dequantized_weights_and_leaves_it_packed(
        bridge, tmp_path, kind, caplog):
    env, dit = quantized_env(bridge, tmp_path, kind)
    w1 = dit.layers[0].feed_forward.w1
    stored = w1.weight.detach().clone()
    assert w1.weight.shape == (CFG.ffn_dim, CFG.dim)  # the layer's shape, as ComfyUI's quantized tensors answer
    native = train(native_model(env), optimizer="SGD", learning_rate=0.01)
    ours = train(our_model(env), optimizer="SGD", learning_rate=0.01)
    assert ours[1] == pytest.approx(native[1], rel=1e-4)
    for k, v in native[0].items():
        assert (ours[0][k] - v).abs().max() <= 1e-3 * v.abs().max(), k
    assert close(picture(env, our_model(env), ours[0]), picture(env, native_model(env), native[0]))
    assert torch.equal(w1.weight.detach(), stored) and w1.weight.dtype == stored.dtype  # never rewritten
    # the LoRA (as SaveLoRA writes it) loads whole into native's MODEL of these weights (LoraLoaderModelOnly's key
    # map does not depend on how the weights are stored)
    with caplog.at_level(logging.WARNING):
        comfy.sd.load_lora_for_models(native_model(env), None, ours[0], 1.0, 0)
    assert "not loaded" not in caplog.text


def test_training_on_a_gguf_base_keeps_no_dequantized_weight_for_backward(bridge, tmp_path):
    """QLoRA-style: the forward keeps the layers' inputs for backward, never a dequantized (or LoRA-merged)
    weight; backward computes each again, one layer at a time."""
    env, dit = quantized_env(bridge, tmp_path, "Q8_0")
    layer_sizes = {tuple(m.weight.shape) for m in dit.modules() if getattr(m, "quant", None) is not None}
    saved = []

    def pack(t):  # what the forward keeps (backward's own transient graphs are not kept)
        if torch._C._current_graph_task_id() == -1:
            saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train(our_model(env), steps=1)
    assert saved and not layer_sizes & set(saved)


def test_training_on_a_gguf_base_computes_its_weights_into_one_buffer_freed_with_the_step(bridge, tmp_path,
                                                                                         monkeypatch):
    """Each dequantization of a training step goes into one reused CPU buffer (no fresh full-size tensor per layer
    per call); the thread keeps no reference to it, so nothing stays allocated after the training."""
    ops = bridge["mod"]("zimage_core.weights.ops")
    env, dit = quantized_env(bridge, tmp_path, "Q8_0")
    packed = [m for m in dit.modules() if getattr(m, "quant", None) is not None]
    stored = {p.untyped_storage().data_ptr() for p in dit.parameters()}
    computed = []
    lora_diff = importlib.import_module("comfy.weight_adapter.lora").LoraDiff
    call = lora_diff.__call__

    def recording(self, w):
        if w.untyped_storage().data_ptr() not in stored:
            computed.append(w.untyped_storage().data_ptr())
        return call(self, w)

    monkeypatch.setattr(lora_diff, "__call__", recording)
    ours = train(our_model(env), steps=2, gradient_checkpointing=True)
    assert len(ours[1]) == 2
    # forward, checkpointing's forward again, backward: of every packed layer (and of the small ones stored cast)
    assert len(computed) >= 2 * 3 * len(packed)
    sizes = {m.out_features * m.in_features for m in dit.modules() if isinstance(m, ops.Linear)}
    assert len(set(computed)) <= 2 * len(sizes) < len(computed) / 10  # a buffer a step, grown to the largest layer
    gc.collect()
    assert all(r() is None for r in (ops._STEP.refs or {}).values())
