"""The text encoder inside ComfyUI's memory management (in process): the ModelPatcher of ZImageTextEncoderLoader
counts the weights in their stored dtype (bf16: half of fp32), ZImageTextEncode loads it through
load_models_gpu, ComfyUI's free_memory (what loading the DiT calls when memory is short) unloads it to the
offload device, and the next ZImageTextEncode loads it again with the same features. The weights stay bf16 in
the memory-mapped file throughout.

ComfyUI's modules are imported from COMFYUI_PATH (skipped when unset); the pack's host adapter is switched to
ComfyUI mode for these tests only (monkeypatch), so its own functions (manage, load_to_device) are the ones
tested.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from comfy_inprocess import comfy  # skips the module without COMFYUI_PATH
from safetensors.torch import load_file, save_file

from zimage_core.tiny.text_encoder import write_tiny_text_encoder

PROMPT = "a red fox in the snow at sunrise"


@pytest.fixture
def in_comfy(pack, monkeypatch):
    """The pack's host adapter as inside ComfyUI (ComfyUI imported in this process, --cpu)."""
    host = importlib.import_module(f"{pack.__name__}.nodes.host")
    monkeypatch.setattr(host, "IN_COMFYUI", True)
    monkeypatch.setattr(host, "mm", comfy.model_management)
    monkeypatch.setattr(host, "comfy", comfy, raising=False)
    yield host
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def bf16_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("te_comfy")
    tiny = write_tiny_text_encoder(d)
    f = d / "qwen_3_4b_bf16.safetensors"
    save_file({k: v.bfloat16() for k, v in load_file(str(tiny["single_file"])).items()}, str(f))
    return f, tiny


def test_comfyui_counts_the_stored_bytes_and_unloads_the_encoder_when_the_dit_needs_the_memory(
        pack, in_comfy, bf16_file, monkeypatch):
    f, tiny = bf16_file
    loaders = importlib.import_module(f"{pack.__name__}.nodes.loaders")
    te_mod = importlib.import_module(f"{pack.__name__}.zimage_core.model.text_encoder")
    cond = importlib.import_module(f"{pack.__name__}.nodes.conditioning")
    monkeypatch.setattr(in_comfy, "resolve", lambda kind, name: f)
    monkeypatch.setattr(in_comfy, "tokenizer_fallback_dirs", lambda path=None: [tiny["tokenizer"]])
    mm = comfy.model_management

    (model,) = loaders.ZImageTextEncoderLoader().load(f.name)
    assert isinstance(model.patcher, comfy.model_patcher.ModelPatcher)
    params = list(model.encoder.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params) and model.encoder.dtype == torch.float32
    # what ComfyUI budgets for it: 2 bytes a weight (bf16), not an fp32 copy (its count takes the state dict, where
    # the lm_head tied to the embedding appears a second time)
    assert model.patcher.model_size() == sum(t.numel() * 2 for t in model.encoder.model.state_dict().values())

    (first,) = cond.ZImageTextEncode().encode(model, PROMPT)
    loaded = [m.model for m in mm.current_loaded_models]
    assert any(p is model.patcher for p in loaded)

    # what load_models_gpu does for the DiT when free memory is short: free_memory on the encoder's device
    mm.free_memory(1e30, model.patcher.load_device)
    assert not any(m.model is model.patcher for m in mm.current_loaded_models)
    assert all(p.device == model.patcher.offload_device for p in model.encoder.model.parameters())

    (again,) = cond.ZImageTextEncode().encode(model, PROMPT)  # loaded again for the next prompt
    assert torch.equal(first[0][0], again[0][0])
    assert all(p.dtype == torch.bfloat16 for p in model.encoder.model.parameters())
    reference = te_mod.load_text_encoder(f, tokenizer_path=tiny["tokenizer"])
    (ref,) = reference.encode([PROMPT])
    assert torch.equal(first[0][0][0], ref)
