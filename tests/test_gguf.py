"""GGUF DiTs: dequantization equal to gguf's reference bit for bit, weights kept quantized in memory,
images equal to diffusers fed the dequantized weights, runtime patches and streaming on top, bad files."""

from __future__ import annotations

import shutil

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zimage_core.model.dit_loader import load_dit
from zimage_core.errors import CheckpointError, InputError
from zimage_core.adapters.lora import load_lora, merged_copy
from zimage_core.weights.offload import enable_block_offload, module_bytes
from zimage_core.weights.ops import Linear
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.pipeline import ZImagePipeline
from zimage_core.weights.quant import BLOCK_SIZES, dequantize
from zimage_core.tiny import make_tiny
from zimage_core.tiny.dit import random_dit_state, write_diffusers_folder
from zimage_core.tiny.quantized import TINY_QUANT_DIT, random_blocks, write_tiny_gguf_dits

diffusers = pytest.importorskip("diffusers")

E2E_TYPES = ("Q8_0", "Q4_K", "Q6_K")


def reference(packed: np.ndarray, qtype: str) -> np.ndarray:
    return gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[qtype])


@pytest.mark.parametrize("qtype", list(BLOCK_SIZES))
def test_random_blocks_dequantize_bit_for_bit_like_gguf(qtype):
    rng = np.random.default_rng(7)
    packed = random_blocks(qtype, (48, 1024), rng, std=3.0)
    ref = reference(packed, qtype)
    got = dequantize(torch.from_numpy(packed), qtype, (48, 1024)).numpy()
    assert np.isfinite(ref).all() and ref.std() > 0
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_real_size_weights_dequantize_bit_for_bit_like_gguf():
    rng = np.random.default_rng(8)
    for qtype in BLOCK_SIZES:
        for shape in ((3840, 3840), (10240, 3840)):
            packed = random_blocks(qtype, shape, rng, std=0.02)
            got = dequantize(torch.from_numpy(packed), qtype, shape).numpy()
            assert np.array_equal(got.view(np.uint32), reference(packed, qtype).view(np.uint32)), (qtype, shape)


@pytest.mark.parametrize("qtype", list(BLOCK_SIZES))
def test_a_weight_computed_into_a_training_buffer_equals_the_computed_weight(qtype, monkeypatch):
    """Under training our Linear computes its weight into a buffer reused by the layers (ops._step_buffer), a few
    rows at a time: the same values as the whole-weight dequantization (and over a larger buffer, its head)."""
    from zimage_core.weights import ops
    from zimage_core.weights.quant import GGMLWeight, PackedParameter

    monkeypatch.setattr(ops, "CPU_CHUNK_ELEMENTS", 5000)  # 1024 columns -> chunks of 4 rows
    packed = torch.from_numpy(random_blocks(qtype, (48, 1024), np.random.default_rng(9), std=3.0))
    layer = Linear(1024, 48, bias=False)
    layer.weight, layer.quant = PackedParameter(packed, shape=(48, 1024)), GGMLWeight(qtype, (48, 1024))
    buffer = torch.full((48 * 1024 + 100,), float("nan"))
    got = layer.compute_weight(torch.float32, None, buffer)
    assert got.data_ptr() == buffer.data_ptr() and got.shape == (48, 1024)
    assert torch.equal(got, layer.compute_weight(torch.float32))


def test_a_bf16_and_a_scaled_fp8_weight_computed_into_a_training_buffer_equal_their_cast():
    layer = Linear(64, 32, bias=False).requires_grad_(False)
    layer.weight.data = torch.randn(32, 64).to(torch.bfloat16)
    buffer = torch.empty(32 * 64)
    assert torch.equal(layer.compute_weight(torch.float32, None, buffer), layer.compute_weight(torch.float32))
    layer.weight.data = torch.randn(32, 64).to(torch.float8_e4m3fn)
    layer.scale_weight = torch.tensor([0.01])
    assert torch.equal(layer.compute_weight(torch.float32, None, buffer), layer.compute_weight(torch.float32))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    tiny = make_tiny(d / "tiny")
    return d, tiny, write_tiny_gguf_dits(d, ("Q8_0", "Q4_K", "Q6_K", "BF16"))


def dequantized_state(path) -> dict[str, torch.Tensor]:
    """What diffusers is fed: every tensor of the file through gguf's own dequantization, fp32."""
    reader = gguf.GGUFReader(path)
    return {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
            .reshape(tuple(reversed(t.shape.tolist()))).float() for t in reader.tensors}


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 1, 10, 14, generator=g), torch.randn(16, 1, 8, 12, generator=g)]
    caps = [torch.randn(7, 64, generator=g), torch.randn(40, 64, generator=g)]
    return xs, caps, torch.tensor([0.3, 0.85])


@torch.no_grad()
@pytest.mark.parametrize("qtype", E2E_TYPES)
def test_gguf_image_equals_diffusers_fed_the_dequantized_weights(files, qtype, tmp_path):
    _, tiny, ggufs = files
    ref_dir = tmp_path / "Z-Image-GGUF"
    shutil.copytree(tiny["diffusers"], ref_dir, ignore=shutil.ignore_patterns("transformer"))
    write_diffusers_folder(dequantized_state(ggufs[qtype]), TINY_QUANT_DIT, ref_dir / "transformer")
    ref = diffusers.ZImagePipeline.from_pretrained(str(ref_dir))
    prompt, w, h = "a lighthouse on a cliff", 192, 128
    expected = ref(prompt, height=h, width=w, num_inference_steps=4, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(5), output_type="np").images
    ours = ZImagePipeline.from_files(ggufs[qtype], tiny["text_encoder"], tiny["vae"], tiny["tokenizer"])
    got = ours.generate(prompt, width=w, height=h, steps=4, seed=5)
    a, b = (got.numpy() * 255).round(), (expected * 255).round()
    assert b.std() > 20
    assert np.abs(a - b).max() <= 1


def test_linear_weights_stay_packed_as_stored_and_dequantize_per_forward(files):
    _, _, ggufs = files
    model = load_dit(ggufs["Q4_K"])
    reader = gguf.GGUFReader(ggufs["Q4_K"])
    stored = {t.name: t for t in reader.tensors}
    packed = {n: m for n, m in model.named_modules() if isinstance(m, Linear) and m.quant is not None}
    assert "layers.0.feed_forward.w1" in packed and "layers.0.attention.qkv" in packed
    for name, m in packed.items():
        t = stored[name + ".weight"]
        assert m.weight.dtype == torch.uint8 and m.quant.qtype == "Q4_K"
        assert np.array_equal(m.weight.numpy(), t.data)  # the stored bytes, not a dequantized copy
        assert m.compute_weight(torch.float32).shape == (m.out_features, m.in_features)
    assert model.layers[0].feed_forward.w1.weight.numel() == 2048 * 768 // 256 * 144
    assert model.x_embedder.quant is None and model.x_embedder.weight.dtype == torch.float16  # 64-wide rows: F16
    assert module_bytes(model) == sum(int(t.n_bytes) for t in reader.tensors)  # in memory: the file's bytes


@torch.no_grad()
def test_bf16_gguf_equals_the_same_weights_from_safetensors(files, tmp_path):
    _, _, ggufs = files
    save_file(dequantized_state(ggufs["BF16"]), str(tmp_path / "same.safetensors"))
    xs, caps, t = inputs()
    a, b = load_dit(ggufs["BF16"], compute_dtype=torch.float32), load_dit(tmp_path / "same.safetensors", "fp32")
    for x, y in zip(a(xs, t, caps), b(xs, t, caps)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def lora_file(model, path, seed=3):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in ("layers.0.attention.to_q", "layers.0.feed_forward.w1", "noise_refiner.0.attention.to_out.0"):
        native = name.replace("to_out.0", "out").replace("to_q", "qkv")
        m = model.get_submodule(native)
        out = m.out_features // 3 if native.endswith("qkv") else m.out_features
        sd[f"transformer.{name}.lora_A.weight"] = torch.randn(4, m.in_features, generator=g) * 0.05
        sd[f"transformer.{name}.lora_B.weight"] = torch.randn(out, 4, generator=g) * 0.3
    save_file(sd, str(path))
    return path


@torch.no_grad()
def test_lora_runtime_patch_and_block_streaming_work_on_the_packed_weights(files, tmp_path):
    _, _, ggufs = files
    q = load_dit(ggufs["Q6_K"])
    save_file(dequantized_state(ggufs["Q6_K"]), str(tmp_path / "dense.safetensors"))
    dense = load_dit(tmp_path / "dense.safetensors", "fp32")
    lora = load_lora(lora_file(q, tmp_path / "l.safetensors"), q)
    xs, caps, t = inputs(1)
    with PatchedDiT(dense, (lora,)).applied() as m:
        expected = m(xs, t, caps)
    with PatchedDiT(q, (lora,)).applied() as m:
        got = m(xs, t, caps)
    with PatchedDiT(dense).applied() as m:
        plain = m(xs, t, caps)
    for e, o, p in zip(expected, got, plain):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)
        assert (o - p).abs().max() > 1e-3  # the LoRA did change the output
    with pytest.raises(InputError, match="stored quantized"):
        merged_copy(q, lora)
    streamer = enable_block_offload(q, 1, "cpu")
    block = q.layers[0]
    assert streamer.slot_bytes < 0.25 * sum(p.numel() * 4 for p in dense.layers[0].parameters())
    assert any(p.dtype == torch.uint8 for p in block.parameters())
    with PatchedDiT(q, (lora,)).applied() as m:
        streamed = m(xs, t, caps)
    assert streamer.fetches > 0
    for e, o in zip(got, streamed):
        assert torch.equal(e, o)


@torch.no_grad()
@pytest.mark.parametrize("stored", ["Q4_K", "Q8_0", "BF16"])
def test_cpu_row_chunked_layers_give_the_whole_weight_output_with_a_lora_on_top(files, tmp_path, monkeypatch,
                                                                               stored):
    """On the CPU big stored-form weights are expanded a few rows at a time (ops.CPU_CHUNK_ELEMENTS); with the
    threshold lowered so the tiny model's Linears are split into several chunks, the outputs (a LoRA patch
    included) equal the whole-weight computation."""
    from zimage_core.weights import ops

    _, _, ggufs = files
    model = load_dit(ggufs[stored])
    lora = load_lora(lora_file(model, tmp_path / "l.safetensors"), model)
    xs, caps, t = inputs(3)
    with PatchedDiT(model, (lora,)).applied() as m:
        whole = m(xs, t, caps)
        monkeypatch.setattr(ops, "CPU_CHUNK_ELEMENTS", 100_000)  # 768 x 2048 -> 16 chunks of 130 rows
        w1 = m.layers[0].feed_forward.w1
        assert w1._chunk_rows(xs[0].float()) == 100_000 // w1.in_features
        chunked = m(xs, t, caps)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_compiled_blocks_on_packed_weights_give_the_eager_output(files):
    from zimage_core.adapters.compile import TorchCompile

    _, _, ggufs = files
    model = load_dit(ggufs["Q8_0"])
    xs, caps, t = inputs(2)
    eager = model(xs, t, caps)
    with PatchedDiT(model, (TorchCompile(),)).applied() as m:
        got = m(xs, t, caps)
    for e, o in zip(eager, got):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ bad input

def _write_gguf(path, arch, tensors: dict[str, np.ndarray], raw: dict[str, str] | None = None):
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in tensors.items():
        t = (raw or {}).get(k)
        w.add_tensor(k, v, raw_dtype=None if t is None else gguf.GGMLQuantizationType[t])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_gguf_names_the_file(files, tmp_path):
    _, _, ggufs = files
    data = ggufs["Q8_0"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.gguf.*(truncated|corrupt)"):
        load_dit(tmp_path / "cut.gguf")


@pytest.mark.parametrize("arch, says", [("flux", "a Flux DiT"), ("wan", "a Wan video DiT"),
                                        ("llama", "a Llama language model"), ("qwen3", "Qwen3 text encoder")])
def test_a_gguf_of_another_architecture_is_named(tmp_path, arch, says):
    f = _write_gguf(tmp_path / f"{arch}.gguf", arch, {"blk.0.attn_q.weight": np.zeros((64, 64), np.float32)})
    with pytest.raises(CheckpointError, match=rf"{arch}\.gguf: expected a Z-Image DiT.*{says}"):
        load_dit(f)


def test_an_unsupported_quant_type_names_itself_and_the_tensor(tmp_path):
    state = {k: v.float().numpy() for k, v in random_dit_state(TINY_QUANT_DIT).items()}
    raw = {"layers.0.feed_forward.w2.weight": "IQ2_XXS"}
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ2_XXS]
    state["layers.0.feed_forward.w2.weight"] = np.zeros((768, 2048 // block * size), np.uint8)
    f = _write_gguf(tmp_path / "iq2.gguf", "lumina2", state, raw)
    with pytest.raises(CheckpointError, match=r"iq2\.gguf: tensor 'layers\.0\.feed_forward\.w2\.weight' is stored as GGUF type IQ2_XXS"):
        load_dit(f)


@torch.no_grad()
def test_a_failed_gguf_load_leaves_a_loaded_gguf_model_usable(files, tmp_path):
    _, _, ggufs = files
    m = load_dit(ggufs["Q4_K"])
    xs, caps, t = inputs()
    before = m(xs, t, caps)[0]
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(CheckpointError, match="bad.gguf"):
        load_dit(tmp_path / "bad.gguf")
    assert torch.equal(m(xs, t, caps)[0], before)


def test_cli_make_tiny_quant_writes_gguf_dits_that_generate(tmp_path):
    from zimage_core.tools.cli import main

    assert main(["make-tiny", "--out", str(tmp_path), "--quant", "Q8_0,Q4_K"]) == 0
    f = tmp_path / "diffusion_models" / "z_image_tiny-Q4_K.gguf"
    assert {t.tensor_type.name for t in gguf.GGUFReader(f).tensors} >= {"Q4_K", "F32"}
    out = tmp_path / "q.png"
    assert main(["generate", "--tiny", "--tiny-dir", str(tmp_path), "--dit", str(f), "--prompt", "a cat",
                 "--width", "64", "--height", "64", "--steps", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["make-tiny", "--out", str(tmp_path), "--quant", "Q9_9"]) != 0
