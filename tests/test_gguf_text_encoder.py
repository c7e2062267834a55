"""Qwen3 text encoders in GGUF (llama.cpp tensor names): hidden states equal transformers' own GGUF loading,
weights kept packed, the prompt enhancer generates on it, the stored vocabulary is checked, bad files."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zimage_core import prompt_enhancer as pe
from zimage_core.model.dit_loader import load_dit
from zimage_core.errors import CheckpointError
from zimage_core.model.text_encoder import load_text_encoder
from zimage_core.tiny import make_tiny
from zimage_core.tiny.quantized import write_gguf_text_encoder, write_tiny_gguf_dits

transformers = pytest.importorskip("transformers")
PROMPTS = ["a red fox sitting in the snow at sunrise", "tea"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("te_gguf")
    tiny = make_tiny(d / "tiny")
    te = {q: write_gguf_text_encoder(d / "te" / f"qwen3_tiny-{q}.gguf", tiny["text_encoder"], tiny["tokenizer"], q)
          for q in ("Q8_0", "Q5_1")}
    return d, tiny, te


@torch.no_grad()
@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_1"])
def test_hidden_states_equal_transformers_loading_the_same_gguf(files, qtype):
    _, tiny, te_files = files
    f = te_files[qtype]
    ours = load_text_encoder(f, tokenizer_path=tiny["tokenizer"])
    # transformers reads the config from the GGUF but has no key for head_dim (Qwen3-4B's 128 is its default)
    ref = transformers.AutoModel.from_pretrained(str(f.parent), gguf_file=f.name, dtype=torch.float32,
                                                 head_dim=ours.model.config.head_dim).eval()
    for prompt, got in zip(PROMPTS, ours.encode(PROMPTS)):
        ids = torch.tensor([ours.tokenize([prompt])[0]])
        expected = ref(ids, output_hidden_states=True).hidden_states[-2][0]
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-5


def test_matrices_and_embedding_stay_packed(files):
    _, tiny, te_files = files
    te = load_text_encoder(te_files["Q8_0"], tokenizer_path=tiny["tokenizer"])
    layer = te.model.model.layers[0]
    for m in (layer.self_attn.q_proj, layer.mlp.down_proj, te.model.model.embed_tokens, te.model.lm_head):
        assert m.weight.dtype == torch.uint8 and m.quant.qtype == "Q8_0"
    assert layer.input_layernorm.weight.dtype == torch.float32


def test_prompt_enhancer_generates_the_same_tokens_as_the_dequantized_model(files, tmp_path):
    _, tiny, te_files = files
    f = te_files["Q8_0"]
    reader = gguf.GGUFReader(f)
    q = load_text_encoder(f, tokenizer_path=tiny["tokenizer"])
    dense = {}
    for t in reader.tensors:  # the same weights, dequantized by gguf, under HF names
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        hf = next(k for k, v in _hf_names(q).items() if v == t.name)
        dense[hf] = w.reshape(tuple(reversed(t.shape.tolist()))).float()
    save_file(dense, str(tmp_path / "dense.safetensors"))
    d = load_text_encoder(tmp_path / "dense.safetensors", tokenizer_path=tiny["tokenizer"])
    chat = pe.build_chat("You rewrite prompts.", "a cat")
    a = pe.generate_ids(q, chat, seed=3, max_new_tokens=12)
    b = pe.generate_ids(d, chat, seed=3, max_new_tokens=12)
    assert a == b and len(a) > 0


def _hf_names(te) -> dict[str, str]:
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, te.model.config.num_hidden_layers)
    keys = [k for k in te.model.state_dict() if k != "lm_head.weight"]
    return {k: table.get_name(k, try_suffixes=(".weight",)) for k in keys}


def test_a_tokenizer_that_does_not_match_the_stored_vocabulary_is_refused(files, tmp_path):
    _, tiny, te_files = files
    src = gguf.GGUFReader(te_files["Q8_0"])
    w = gguf.GGUFWriter(str(tmp_path / "other_vocab.gguf"), "qwen3")
    tokens = src.get_field("tokenizer.ggml.tokens").contents()
    w.add_token_list(tokens[1:] + tokens[:1])  # every id shifted by one
    for t in src.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"other_vocab\.gguf: the tokenizer in .* does not match the vocabulary"):
        load_text_encoder(tmp_path / "other_vocab.gguf", tokenizer_path=tiny["tokenizer"])


def test_dit_and_text_encoder_ggufs_given_to_the_wrong_loader_say_which_loader(files):
    d, tiny, te_files = files
    dit = write_tiny_gguf_dits(d / "dit", ["Q8_0"])["Q8_0"]
    with pytest.raises(CheckpointError, match=r"z_image_tiny-Q8_0\.gguf: expected a Qwen3 text encoder.*ZImageDiTLoader"):
        load_text_encoder(dit, tokenizer_path=tiny["tokenizer"])
    with pytest.raises(CheckpointError, match=r"qwen3_tiny-Q8_0\.gguf: expected a Z-Image DiT.*ZImageTextEncoderLoader"):
        load_dit(te_files["Q8_0"])
    # a model loaded before stays usable
    te = load_text_encoder(te_files["Q8_0"], tokenizer_path=tiny["tokenizer"])
    before = te.encode("tea")[0]
    with pytest.raises(CheckpointError):
        load_text_encoder(dit, tokenizer_path=tiny["tokenizer"])
    assert torch.equal(te.encode("tea")[0], before)
    assert np.isfinite(before.numpy()).all()


@pytest.mark.parametrize("arch, says", [("flux", "a Flux DiT"), ("wan", "a Wan video DiT"),
                                        ("llama", "a Llama language model")])
def test_a_gguf_of_another_architecture_given_to_the_text_encoder_loader_is_named(files, tmp_path, arch, says):
    _, tiny, te_files = files
    w = gguf.GGUFWriter(str(tmp_path / f"{arch}.gguf"), arch)
    w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    te = load_text_encoder(te_files["Q8_0"], tokenizer_path=tiny["tokenizer"])
    before = te.encode("tea")[0]
    with pytest.raises(CheckpointError, match=rf"{arch}\.gguf: expected a Qwen3 text encoder.*{says}"):
        load_text_encoder(tmp_path / f"{arch}.gguf", tokenizer_path=tiny["tokenizer"])
    assert torch.equal(te.encode("tea")[0], before)  # the encoder loaded before is untouched


def test_a_truncated_text_encoder_gguf_names_the_file(files, tmp_path):
    _, tiny, te_files = files
    data = te_files["Q8_0"].read_bytes()
    (tmp_path / "cut_te.gguf").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"cut_te\.gguf.*(truncated|corrupt)"):
        load_text_encoder(tmp_path / "cut_te.gguf", tokenizer_path=tiny["tokenizer"])
