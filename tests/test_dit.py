"""S3-DiT: parity with diffusers' ZImageTransformer2DModel, both file layouts, dtypes, full-size key set."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.model.dit_loader import load_dit, native_to_diffusers
from zimage_core.errors import CheckpointError
from zimage_core.tiny.dit import TINY_DIT, random_dit_state, write_diffusers_folder
from zimage_core.model.transformer import DiTConfig, ZImageDiT

diffusers = pytest.importorskip("diffusers")

WIDE = DiTConfig(dim=288, n_layers=1, n_refiner_layers=1, n_heads=9, ffn_dim=768, cap_feat_dim=48)  # adaLN 256 < dim
CONFIGS = {"tiny": TINY_DIT, "wide": WIDE}


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module", params=list(CONFIGS))
def dit_files(request, tmp_path_factory):
    cfg = CONFIGS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    state = random_dit_state(cfg, seed=1)
    save_file(state, str(d / "native.safetensors"))
    write_diffusers_folder(state, cfg, d / "transformer")
    ref = diffusers.ZImageTransformer2DModel.from_pretrained(str(d / "transformer")).eval()
    return cfg, d, ref


def mixed_batch(cfg, seed=0):
    """Two samples with different image sizes and caption lengths, token counts not multiples of 32."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 1, 10, 14, generator=g), torch.randn(16, 1, 8, 12, generator=g)]  # 35 and 24 tokens
    caps = [torch.randn(7, cfg.cap_feat_dim, generator=g), torch.randn(40, cfg.cap_feat_dim, generator=g)]
    return xs, caps, torch.tensor([0.3, 0.85])


@torch.no_grad()
def test_fp32_forward_matches_diffusers_for_a_mixed_batch(dit_files):
    cfg, d, ref = dit_files
    ours = load_dit(d / "native.safetensors", "fp32")
    assert ours.cfg == cfg
    xs, caps, t = mixed_batch(cfg)
    expected = ref([x.clone() for x in xs], t, [c.clone() for c in caps], return_dict=False)[0]
    got = ours(xs, t, caps)
    for e, o in zip(expected, got):
        assert o.shape == e.shape
        assert rel_err(o, e) <= 1e-5


@torch.no_grad()
def test_batched_tensor_input_matches_diffusers(dit_files):
    cfg, d, ref = dit_files
    ours = load_dit(d / "native.safetensors", "fp32")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 12, 12, generator=g)
    cap = torch.randn(19, cfg.cap_feat_dim, generator=g)
    t = torch.tensor([0.1, 0.5])
    expected = ref(list(x.unsqueeze(2)), t, [cap, cap], return_dict=False)[0]
    got = ours(x, t, [cap])  # one caption broadcast over the batch
    assert rel_err(got, torch.stack(expected)[:, :, 0]) <= 1e-5


@torch.no_grad()
def test_native_file_and_diffusers_folder_give_identical_outputs(dit_files):
    cfg, d, _ = dit_files
    a = load_dit(d / "native.safetensors", "fp32")
    b = load_dit(d / "transformer", "fp32")
    c = load_dit(d, "fp32")  # a whole model folder containing transformer/
    xs, caps, t = mixed_batch(cfg, seed=5)
    out_a, out_b, out_c = a(xs, t, caps), b(xs, t, caps), c(xs, t, caps)
    for oa, ob, oc in zip(out_a, out_b, out_c):
        assert torch.equal(oa, ob) and torch.equal(oa, oc)


@torch.no_grad()
def test_memory_mapped_and_read_loads_give_identical_weights(dit_files):
    cfg, d, _ = dit_files
    for path in (d / "native.safetensors", d / "transformer"):
        mapped, read = load_dit(path, "fp32"), load_dit(path, "fp32", mmap=False)
        a, b = mapped.state_dict(), read.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        xs, caps, t = mixed_batch(cfg, seed=6)
        assert all(torch.equal(x, y) for x, y in zip(mapped(xs, t, caps), read(xs, t, caps)))


def test_inference_and_autograd_forwards_agree_and_backward_works(dit_files, monkeypatch):
    from zimage_core.weights import ops

    monkeypatch.setattr(ops, "_gemm", "blas")  # the one GEMM library in both modes (oneDNN serves inference only)
    cfg, d, _ = dit_files
    m = load_dit(d / "native.safetensors", "fp32")
    xs, caps, t = mixed_batch(cfg, seed=8)
    with torch.no_grad():
        fast = m(xs, t, caps)  # in-place SwiGLU
    xs = [x.clone().requires_grad_(True) for x in xs]
    slow = m(xs, t, caps)
    assert all(torch.equal(a, b.detach()) for a, b in zip(fast, slow))
    sum(o.square().sum() for o in slow).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)


@torch.no_grad()
def test_prefixed_and_diffusers_single_files_load(tmp_path):
    state = random_dit_state(TINY_DIT, seed=2)
    save_file({"model.diffusion_model." + k: v for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    save_file({"diffusion_model." + k: v for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    save_file(native_to_diffusers(state), str(tmp_path / "c.safetensors"))
    xs, caps, t = mixed_batch(TINY_DIT)
    outs = [load_dit(tmp_path / f"{n}.safetensors", "fp32")(xs, t, caps)[0] for n in "abc"]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@torch.no_grad()
def test_context_encoded_once_gives_the_same_output_as_raw_features(dit_files):
    cfg, d, _ = dit_files
    m = load_dit(d / "native.safetensors", "fp32")
    xs, caps, t = mixed_batch(cfg)
    ctx = m.encode_context(caps)
    for a, b in zip(m(xs, t, ctx), m(xs, t, caps)):
        assert torch.equal(a, b)


@torch.no_grad()
def test_velocity_is_the_negated_output_at_time_one_minus_sigma(dit_files):
    cfg, d, _ = dit_files
    m = load_dit(d / "native.safetensors", "fp32")
    x = torch.randn(1, 16, 8, 8)
    ctx = m.encode_context([torch.randn(5, cfg.cap_feat_dim)])
    assert torch.equal(m.velocity(x, torch.tensor([0.75]), ctx), -m(x, torch.tensor([0.25]), ctx))


@torch.no_grad()
def test_modulation_hook_identity_is_exact_and_scaling_changes_output(dit_files):
    cfg, d, _ = dit_files
    m = load_dit(d / "native.safetensors", "fp32")
    xs, caps, t = mixed_batch(cfg)
    base = m(xs, t, caps)
    same = m(xs, t, caps, mod_hook=lambda stage, i, mod: mod)
    seen = []
    changed = m(xs, t, caps, mod_hook=lambda stage, i, mod: seen.append((stage, i)) or mod * 1.5)
    assert all(torch.equal(a, b) for a, b in zip(base, same))
    assert not torch.allclose(base[0], changed[0])
    assert seen[: cfg.n_refiner_layers] == [("noise_refiner", i) for i in range(cfg.n_refiner_layers)]
    assert seen[cfg.n_refiner_layers:] == [("layers", i) for i in range(cfg.n_layers)]


@torch.no_grad()
def test_bf16_forward_within_bf16_tolerance_of_fp32_and_of_diffusers_bf16(dit_files):
    cfg, d, ref = dit_files
    xs, caps, t = mixed_batch(cfg)
    fp32 = load_dit(d / "native.safetensors", "fp32")(xs, t, caps)
    ours = load_dit(d / "native.safetensors", "bf16", compute_dtype=torch.bfloat16)
    assert ours.layers[0].attention.qkv.weight.dtype == torch.bfloat16
    got = ours(xs, t, caps)
    ref_bf16 = ref.to(torch.bfloat16)
    expected = ref_bf16([x.bfloat16() for x in xs], t, [c.bfloat16() for c in caps], return_dict=False)[0]
    ref.float()
    for o, e, f in zip(got, expected, fp32):
        assert rel_err(o, f) <= 2e-2  # a few bf16 ulps over the depth of the network
        assert rel_err(o, e.float()) <= 2e-2


@torch.no_grad()
@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_storage_keeps_sensitive_layers_in_high_precision(tmp_path, fp8):
    state = random_dit_state(TINY_DIT, seed=4)
    save_file(state, str(tmp_path / "m.safetensors"))
    xs, caps, t = mixed_batch(TINY_DIT)
    fp32 = load_dit(tmp_path / "m.safetensors", "fp32")(xs, t, caps)
    name = "fp8_e4m3fn" if fp8 == torch.float8_e4m3fn else "fp8_e5m2"
    m = load_dit(tmp_path / "m.safetensors", name)
    assert m.layers[0].feed_forward.w1.weight.dtype == fp8
    for keep in (m.x_embedder.weight, m.t_embedder.mlp[0].weight, m.cap_embedder[1].weight,
                 m.final_layer.linear.weight, m.layers[0].attention_norm1.weight, m.x_pad_token):
        assert keep.dtype == torch.float32
    got = m(xs, t, caps)
    tol = 0.08 if fp8 == torch.float8_e4m3fn else 0.15  # 3 / 2 mantissa bits
    assert all(rel_err(o, f) < tol for o, f in zip(got, fp32))


@torch.no_grad()
def test_comfyui_scaled_fp8_file_is_dequantised_with_its_scales(tmp_path):
    state = random_dit_state(TINY_DIT, seed=6)
    scaled = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    for k, v in state.items():
        if v.ndim == 2 and k.startswith(("layers", "noise_refiner", "context_refiner")):
            s = v.abs().max() / 448.0
            scaled[k] = (v / s).to(torch.float8_e4m3fn)
            scaled[k[: -len("weight")] + "scale_weight"] = s.reshape(1)
            scaled[k[: -len("weight")] + "scale_input"] = torch.ones(1)
        else:
            scaled[k] = v
    save_file(scaled, str(tmp_path / "scaled.safetensors"))
    xs, caps, t = mixed_batch(TINY_DIT)
    ref = ZImageDiT(TINY_DIT)
    ref.load_state_dict(state)
    expected = ref(xs, t, caps)
    kept = load_dit(tmp_path / "scaled.safetensors", "auto")  # stays fp8, scale applied per layer
    assert kept.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
    assert kept.layers[0].attention.qkv.scale_weight is not None
    dequant = load_dit(tmp_path / "scaled.safetensors", "fp32")
    for a, b, e in zip(kept(xs, t, caps), dequant(xs, t, caps), expected):
        assert rel_err(a, b) < 1e-6
        assert rel_err(a, e) < 0.08


def test_full_size_model_has_the_reference_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        ours = ZImageDiT(DiTConfig())
        ref = diffusers.ZImageTransformer2DModel(axes_lens=[1536, 512, 512])
    native = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert len(native) == 453
    assert sum(v.numel() for v in ours.state_dict().values()) == 6_154_908_736
    assert native["layers.29.attention.qkv.weight"] == (11520, 3840)
    assert native["layers.0.adaLN_modulation.0.weight"] == (15360, 256)
    assert native["final_layer.adaLN_modulation.1.weight"] == (3840, 256)
    assert native["t_embedder.mlp.0.weight"] == (1024, 256)
    assert native["cap_embedder.1.weight"] == (3840, 2560)
    assert native["x_embedder.weight"] == (3840, 64)
    assert "context_refiner.1.adaLN_modulation.0.weight" not in native
    diff = {k: tuple(v.shape) for k, v in native_to_diffusers(ours.state_dict()).items()}
    assert len(diff) == 521
    assert diff == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


# -- bad input ------------------------------------------------------------------------------------

def _write(path, keys: dict[str, tuple]):
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    return path


@pytest.mark.parametrize(
    "keys, says",
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4), "model.diffusion_model.output_blocks.0.0.weight": (4,),
          "model.diffusion_model.label_emb.0.0.weight": (4, 4)}, "SDXL UNet"),
        ({"double_blocks.0.img_attn.qkv.weight": (4, 4), "single_blocks.0.linear1.weight": (4, 4)}, "Flux DiT"),
        ({"diffusion_model.layers.0.attention.qkv.lora_down.weight": (4, 4)}, "LoRA"),
        ({"encoder.down.0.block.0.conv1.weight": (4, 4), "decoder.conv_in.weight": (4, 16, 3, 3)}, "Flux VAE"),
        ({"model.embed_tokens.weight": (8, 4), "model.layers.0.self_attn.q_proj.weight": (4, 4),
          "model.layers.0.self_attn.q_norm.weight": (4,)}, "Qwen3 text encoder"),
    ],
)
def test_a_file_of_another_model_family_is_named_with_the_loader_to_use(tmp_path, keys, says):
    f = _write(tmp_path / "wrong.safetensors", keys)
    with pytest.raises(CheckpointError) as e:
        load_dit(f)
    msg = str(e.value)
    assert "wrong.safetensors" in msg and says in msg and "Z-Image DiT" in msg
    if says in ("LoRA", "Flux VAE", "Qwen3 text encoder"):
        assert "Loader" in msg


def test_truncated_file_names_the_file_and_the_problem(tmp_path):
    state = random_dit_state(TINY_DIT)
    save_file(state, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*(truncated|corrupt)"):
        load_dit(tmp_path / "cut.safetensors")


def test_missing_and_unexpected_keys_are_listed_with_a_count(tmp_path):
    state = random_dit_state(TINY_DIT)
    for k in [k for k in state if k.startswith("layers.1.feed_forward")]:
        del state[k]
    state["layers.0.attention.extra.weight"] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_dit(tmp_path / "partial.safetensors")
    msg = str(e.value)
    assert "partial.safetensors" in msg and "3 missing" in msg and "layers.1.feed_forward.w1.weight" in msg
    assert "1 unexpected" in msg and "layers.0.attention.extra.weight" in msg


def test_pickle_checkpoints_are_refused_without_being_opened(tmp_path):
    f = tmp_path / "model.ckpt"
    f.write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match="pickle"):
        load_dit(f)


def test_a_failed_load_leaves_a_loaded_model_usable(tmp_path):
    state = random_dit_state(TINY_DIT)
    save_file(state, str(tmp_path / "good.safetensors"))
    m = load_dit(tmp_path / "good.safetensors", "fp32")
    xs, caps, t = mixed_batch(TINY_DIT)
    before = m(xs, t, caps)[0]
    with pytest.raises(CheckpointError):
        load_dit(_write(tmp_path / "vae.safetensors", {"decoder.conv_in.weight": (4, 16, 3, 3), "encoder.down.0.x": (1,)}))
    assert torch.equal(m(xs, t, caps)[0], before)


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float8_e4m3fn])
def test_cpu_weight_casts_in_the_reused_workspace_equal_fresh_casts(stored):
    from zimage_core.weights import ops

    g = torch.Generator().manual_seed(0)
    big, small = ops.Linear(64, 96), ops.Linear(96, 32, bias=False)
    for lin in (big, small):
        lin.weight.data = lin.weight.data.to(stored)
    if stored == torch.float8_e4m3fn:
        big.scale_weight = torch.tensor(0.37)
    x = torch.randn(5, 64, generator=g)
    with torch.no_grad():
        fresh = small(big(x))
        with ops.cast_workspace():
            reused = small(big(x))  # the second cast overwrites the first one's buffer
            again = small(big(x))
            assert ops._WS.buffers[torch.float32].numel() == 96 * 64  # one buffer, the largest weight
        assert ops._WS.buffers is None  # freed with the scope
    want = torch.nn.functional.linear(x, big.weight.float() * (big.scale_weight or 1.0), big.bias)
    assert torch.equal(fresh, reused) and torch.equal(reused, again)
    assert torch.equal(big(x).detach(), want.detach())
    # with gradients recorded the casts are fresh tensors (autograd keeps them for backward)
    with ops.cast_workspace():
        xg = x.clone().requires_grad_(True)
        small(big(xg)).sum().backward()
        assert ops._WS.buffers == {}
    assert xg.grad is not None


@pytest.mark.parametrize("gemm", ["onednn", "blas"])
def test_cpu_linear_gives_the_fp32_product_with_either_gemm_library(gemm, monkeypatch):
    """Large fp32 CPU products may go to oneDNN instead of F.linear's BLAS (ops.cpu_gemm): both are fp32
    products, equal to the float64 result within fp32 rounding, on the whole-weight, workspace and row-chunk
    paths alike."""
    from zimage_core.weights import ops

    monkeypatch.setattr(ops, "_gemm", gemm)
    g = torch.Generator().manual_seed(0)
    lin = ops.Linear(384, 512)  # 196608 weight elements: above ONEDNN_MIN_ELEMENTS
    lin.weight.data = torch.randn(512, 384, generator=g).div(20).to(torch.bfloat16)
    lin.bias.data = torch.randn(512, generator=g)
    x = torch.randn(2, 37, 384, generator=g)
    want = torch.nn.functional.linear(x.double(), lin.weight.double(), lin.bias.double())
    tol = 1e-6 * (x.double().abs() @ lin.weight.double().abs().t()).max()
    with torch.no_grad():
        outs = [lin(x)]
        with ops.cast_workspace():
            outs.append(lin(x))
        monkeypatch.setattr(ops, "CPU_CHUNK_ELEMENTS", 50_000)  # 130 rows per chunk, 4 chunks
        outs.append(lin(x))
    for y in outs:
        assert y.dtype == torch.float32 and (y.double() - want).abs().max() <= tol


def test_cpu_gemm_choice_follows_the_environment_and_names_a_bad_value(monkeypatch):
    from zimage_core.weights import ops
    from zimage_core.errors import InputError

    for value in ("onednn", "blas", " BLAS "):
        monkeypatch.setattr(ops, "_gemm", None)
        monkeypatch.setenv("ZIMAGE_CPU_GEMM", value)
        assert ops.cpu_gemm() == value.strip().lower()
    monkeypatch.setattr(ops, "_gemm", None)
    monkeypatch.setenv("ZIMAGE_CPU_GEMM", "mkl")
    with pytest.raises(InputError, match="ZIMAGE_CPU_GEMM='mkl'.*auto, onednn, blas"):
        ops.cpu_gemm()
    monkeypatch.setattr(ops, "_gemm", None)
    monkeypatch.setenv("ZIMAGE_CPU_GEMM", "auto")
    assert ops.cpu_gemm() in ("onednn", "blas")  # measured: the library that is faster here
