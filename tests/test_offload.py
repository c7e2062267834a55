"""Block offloading and memory presets: the same output with and without streaming, presets sized right."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from zimage_core.model.dit_loader import load_dit
from zimage_core.errors import InputError
from zimage_core.adapters.lora import load_lora
from zimage_core.weights.offload import GiB, blocks_by_priority, blocks_to_keep, enable_block_offload, module_bytes
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.tiny.dit import TINY_DIT, random_dit_state
from zimage_core.model.transformer import DiTConfig, ZImageDiT

N_BLOCKS = 2 * TINY_DIT.n_refiner_layers + TINY_DIT.n_layers


@pytest.fixture(scope="module")
def dit_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("offload") / "dit.safetensors"
    save_file(random_dit_state(TINY_DIT, seed=4), str(p))
    return p


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 1, 10, 14, generator=g), torch.randn(16, 1, 8, 12, generator=g)]
    caps = [torch.randn(7, TINY_DIT.cap_feat_dim, generator=g), torch.randn(40, TINY_DIT.cap_feat_dim, generator=g)]
    return xs, caps, torch.tensor([0.3, 0.85])


@torch.no_grad()
@pytest.mark.parametrize("keep", [0, 1, 3, N_BLOCKS])
def test_streamed_forward_equals_the_resident_model(dit_file, keep):
    xs, caps, t = inputs()
    expected = load_dit(dit_file, "fp32")(xs, t, caps)
    model = load_dit(dit_file, "fp32")
    streamer = enable_block_offload(model, keep, "cpu")
    for _ in range(2):  # the second step starts from a prefetched block, and the caption refiner in between
        got = model(xs, t, caps)
        for e, o in zip(expected, got):
            assert torch.equal(e, o)
    assert len(streamer.sequence) == N_BLOCKS - keep
    # every streamed block was copied in at least once per forward (the slots hold nothing but copies)
    assert streamer.fetches >= 2 * (N_BLOCKS - keep)


@torch.no_grad()
def test_streamed_blocks_point_at_their_cpu_copy_between_runs(dit_file):
    model = load_dit(dit_file, "fp32")
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    streamer = enable_block_offload(model, 2, "cpu")
    xs, caps, t = inputs()
    model(xs, t, caps)
    slots = [(s.data_ptr(), s.data_ptr() + s.numel()) for s in streamer._slots]
    for n, p in model.named_parameters():
        assert not any(a <= p.data_ptr() < b for a, b in slots), f"{n} still points into a slot"
        assert p.data_ptr() == before[n]
    streamer.release()
    assert streamer._slots is None
    model(xs, t, caps)  # slots come back on the next run


@torch.no_grad()
def test_kept_blocks_are_the_per_step_ones_first(dit_file):
    model = load_dit(dit_file, "fp32")
    streamer = enable_block_offload(model, 3, "cpu")
    assert streamer.kept == [*model.noise_refiner, model.layers[0]]
    assert streamer.sequence == [*model.context_refiner, model.layers[1]]
    resident = streamer.resident()
    ids = {id(p) for p in resident.parameters()}
    assert all(id(p) in ids for b in streamer.kept for p in b.parameters())
    assert not any(id(p) in ids for b in streamer.sequence for p in b.parameters())
    assert id(model.x_pad_token) in ids and id(model.cap_pad_token) in ids
    assert module_bytes(resident) + streamer.streamed_bytes() == module_bytes(model)


@torch.no_grad()
def test_lora_applies_to_streamed_blocks(dit_file, tmp_path):
    g = torch.Generator().manual_seed(7)
    sd = {}
    for i in range(TINY_DIT.n_layers):
        for name, (o, n) in {"attention.qkv": (3 * 64, 64), "feed_forward.w2": (64, 170)}.items():
            sd[f"diffusion_model.layers.{i}.{name}.lora_A.weight"] = torch.randn(4, n, generator=g) * 0.1
            sd[f"diffusion_model.layers.{i}.{name}.lora_B.weight"] = torch.randn(o, 4, generator=g) * 0.1
    save_file(sd, str(tmp_path / "lora.safetensors"))
    lora = load_lora(tmp_path / "lora.safetensors", TINY_DIT, strength=0.8)
    xs, caps, t = inputs(1)
    plain = PatchedDiT(load_dit(dit_file, "fp32")).with_patch(lora)
    with plain.applied() as m:
        expected = m(xs, t, caps)
    model = load_dit(dit_file, "fp32")
    enable_block_offload(model, 1, "cpu")
    with PatchedDiT(model).with_patch(lora).applied() as m:
        got = m(xs, t, caps)
    for e, o in zip(expected, got):
        assert torch.allclose(e, o, rtol=1e-5, atol=1e-6)
    base = load_dit(dit_file, "fp32")(xs, t, caps)
    assert not torch.allclose(base[0], got[0], atol=1e-4)  # the LoRA did something


@torch.no_grad()
def test_a_run_that_fails_inside_a_streamed_block_leaves_the_model_usable(dit_file, monkeypatch):
    xs, caps, t = inputs()
    expected = load_dit(dit_file, "fp32")(xs, t, caps)
    model = load_dit(dit_file, "fp32")
    streamer = enable_block_offload(model, 2, "cpu")
    ffn = model.layers[1].feed_forward

    def boom(x):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(ffn, "forward", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        with PatchedDiT(model).applied() as m:
            m(xs, t, caps)
    monkeypatch.undo()
    assert streamer._slots is None and streamer._active is None  # released by PatchedDiT.applied
    assert all(p.data_ptr() == host.data_ptr() for pairs in streamer._host.values() for p, host in pairs)
    for e, o in zip(expected, model(xs, t, caps)):
        assert torch.equal(e, o)


def test_enabling_twice_replaces_the_streamer_and_bad_counts_are_refused(dit_file):
    model = load_dit(dit_file, "fp32")
    first = enable_block_offload(model, 1, "cpu")
    second = enable_block_offload(model, 2, "cpu")
    assert model.block_streamer is second and not first._handles
    with pytest.raises(InputError, match="between 0 and 6"):
        enable_block_offload(model, 7, "cpu")


def full_size_model(dtype):
    with torch.device("meta"):
        return ZImageDiT(DiTConfig()).to(dtype)


@pytest.mark.parametrize("dtype,preset,expected", [
    (torch.bfloat16, "high", None),
    (torch.bfloat16, "12GB", 27),  # 11.5 GiB of weights, 0.34 GiB per block
    (torch.bfloat16, "8GB", 15),
    (torch.bfloat16, "6GB", 9),
    (torch.float8_e4m3fn, "8GB", None),  # 5.7 GiB: fits whole
    (torch.float8_e4m3fn, "6GB", 21),
])
def test_memory_presets_for_the_full_size_model(dtype, preset, expected):
    model = full_size_model(dtype)
    assert len(blocks_by_priority(model)) == 34
    keep = blocks_to_keep(model, preset, None)
    assert keep == expected
    if keep is not None:  # what stays on the GPU fits the preset's budget with the reserve and two slots
        block = module_bytes(model.layers[0])
        resident = module_bytes(model) - (34 - keep) * block
        budget = {"12GB": 12, "8GB": 8, "6GB": 6}[preset] * GiB
        assert resident + 2 * block + 2 * GiB <= budget


def test_auto_preset_keeps_everything_when_it_fits_and_streams_when_not():
    model = full_size_model(torch.bfloat16)  # 12.3 GB of weights
    assert blocks_to_keep(model, "auto", 24 * GiB) is None
    assert blocks_to_keep(model, "auto", None) is None  # unknown memory (CPU): nothing to do
    assert blocks_to_keep(model, "auto", 8 * GiB) == blocks_to_keep(model, "8GB", None)
    with pytest.raises(InputError, match="memory preset 'lots'"):
        blocks_to_keep(model, "lots", None)


@torch.no_grad()
def test_vae_decode_tiles_automatically_only_when_memory_is_short(tiny, monkeypatch):
    from zimage_core.pipeline import decode
    from zimage_core.model.vae import load_vae

    vae = load_vae(tiny["vae"])
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    need = vae.decode_bytes(tuple(z.shape))
    assert need == 10 * 64 * 96 * vae.cfg.channels[0] * 4
    calls = []
    monkeypatch.setattr(vae, "decode", lambda x: calls.append("whole") or torch.zeros(1, 3, 64, 96))
    monkeypatch.setattr(vae, "decode_tiled", lambda x: calls.append("tiled") or torch.zeros(1, 3, 64, 96))
    decode(vae, z, None, free=need + 1)
    decode(vae, z, None, free=need - 1)
    decode(vae, z, True, free=10 * need)  # forced on
    decode(vae, z, False, free=1)  # forced off
    monkeypatch.setattr("zimage_core.pipeline.free_memory", lambda device: need // 2)
    decode(vae, z)  # default: the device's free memory
    monkeypatch.setattr("zimage_core.pipeline.free_memory", lambda device: None)
    decode(vae, z)  # unknown: whole
    assert calls == ["whole", "tiled", "tiled", "whole", "tiled", "whole"]


def test_free_memory_of_the_cpu_is_known():
    from zimage_core.weights.offload import free_memory

    free = free_memory("cpu")
    assert free is None or free > 0
    assert free_memory("meta") is None
