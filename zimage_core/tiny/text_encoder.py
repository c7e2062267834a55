"""Tiny, random Qwen3 text encoder + byte-level BPE tokenizer for offline tests.

`write_tiny_tokenizer` trains a ~700-token byte-level BPE on a built-in English text with the same
normaliser / pre-tokeniser / decoder as Qwen2/Qwen3 and Qwen's special tokens, and saves it in the Hugging
Face Qwen2 layout (tokenizer.json + tokenizer_config.json with a Qwen3-like chat template), so
`AutoTokenizer.from_pretrained(dir)` works offline. `write_tiny_text_encoder` writes random Qwen3 weights in
ComfyUI single-file form and as a sharded Hugging Face `text_encoder/` folder, plus `tokenizer/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Same regex as transformers' Qwen2Tokenizer / Qwen's tokenizer.json.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A small Jinja template with the behaviour of Qwen3's: system/user/assistant turns, assistant reasoning
# (<think>...</think>) stripped from history, and `enable_thinking=False` pre-filling an empty think block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

CORPUS = """
A photograph of a small red fox sitting in the snow at sunrise, soft golden light, shallow depth of field.
The old lighthouse stands on a rocky cliff above the stormy sea; waves crash against the stones below.
A cozy kitchen with wooden shelves, copper pots, fresh bread on the table and sunlight through the window.
Portrait of a young woman with curly brown hair wearing a blue scarf, looking at the camera, studio lighting.
A futuristic city at night with neon signs, flying cars, rain on the street and reflections in the puddles.
A bowl of ramen with a soft boiled egg, green onions, slices of pork and steam rising from the hot broth.
The mountain lake is calm and clear, reflecting the pine trees, the snowy peaks and the bright blue sky.
A cat sleeping on a stack of books next to a cup of tea, warm lamp light, a rainy afternoon in autumn.
An astronaut riding a horse on the surface of the moon, the earth rising over the horizon, cinematic.
A poster with the text "HELLO WORLD" in bold white letters on a dark green background, minimal design.
Children are playing football in the park while their parents watch from the benches under the trees.
A watercolor painting of a village by the river with a stone bridge, boats, flowers and a church tower.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. 0123456789!?
Close-up of a hummingbird drinking nectar from a purple flower, detailed feathers, green and gold colors.
user: draw a picture for me. assistant: here is the picture. system: you are a helpful assistant.
A medieval castle on a hill surrounded by a forest, dramatic clouds, the last light of the evening sun.
"""


def write_tiny_tokenizer(out_dir: Path, vocab_size: int = 700) -> Path:
    """Train and save a tiny Qwen2-style byte-level BPE tokenizer; returns the folder."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from tokenizers.models import BPE

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([line for line in CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)  # appended after the BPE vocabulary, as in Qwen
    tok.save(str(out_dir / "tokenizer.json"))

    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": t not in ("<think>", "</think>")}
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def write_tiny_tokenizer_vocab_merges(out_dir: Path, vocab_size: int = 700) -> Path:
    """The same tiny tokenizer in the older Qwen2 layout (vocab.json + merges.txt + tokenizer_config.json,
    as in ComfyUI's qwen25_tokenizer): the special tokens exist only in `added_tokens_decoder`."""
    out_dir = write_tiny_tokenizer(out_dir, vocab_size)
    model = json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))  # token -> id, ids 0..n-1
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # "left right", by priority
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out_dir / "tokenizer.json").unlink()
    return out_dir


def _tiny_qwen3_state_dict(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int,
                           intermediate: int, seed: int, device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random Qwen3 weights (no `model.` prefix, no lm_head), scaled so activations stay O(1) but the
    features are far from degenerate (norm weights around 1, projections ~ 1/sqrt(fan_in)).
    Drawn on `device`, stored as `dtype`."""
    g = torch.Generator(device).manual_seed(seed)

    def lin(out_f: int, in_f: int) -> torch.Tensor:
        return (torch.randn(out_f, in_f, generator=g, device=device) / in_f ** 0.5).to(dtype)

    def norm(n: int) -> torch.Tensor:
        return (1.0 + 0.2 * torch.randn(n, generator=g, device=device)).to(dtype)

    sd = {"embed_tokens.weight": torch.randn(vocab, hidden, generator=g, device=device).to(dtype)}
    for i in range(layers):
        p = f"layers.{i}."
        sd[p + "input_layernorm.weight"] = norm(hidden)
        sd[p + "post_attention_layernorm.weight"] = norm(hidden)
        sd[p + "self_attn.q_proj.weight"] = lin(heads * head_dim, hidden)
        sd[p + "self_attn.k_proj.weight"] = lin(kv_heads * head_dim, hidden)
        sd[p + "self_attn.v_proj.weight"] = lin(kv_heads * head_dim, hidden)
        sd[p + "self_attn.o_proj.weight"] = lin(hidden, heads * head_dim)
        sd[p + "self_attn.q_norm.weight"] = norm(head_dim)
        sd[p + "self_attn.k_norm.weight"] = norm(head_dim)
        sd[p + "mlp.gate_proj.weight"] = lin(intermediate, hidden)
        sd[p + "mlp.up_proj.weight"] = lin(intermediate, hidden)
        sd[p + "mlp.down_proj.weight"] = lin(hidden, intermediate)
    sd["norm.weight"] = norm(hidden)
    return {k: v.contiguous() for k, v in sd.items()}


def write_tiny_text_encoder(out_dir: Path, seed: int = 0, hidden: int = 64, layers: int = 3, heads: int = 4,
                            kv_heads: int = 2, head_dim: int = 16, intermediate: int = 128,
                            device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                            single_file: bool = True) -> dict[str, Path]:
    """Write a random tiny Qwen3 as `qwen_3_4b_tiny.safetensors` (ComfyUI style, unless `single_file=False`),
    `text_encoder/` (sharded HF folder) and `tokenizer/`. Returns {'single_file', 'text_encoder', 'tokenizer',
    'root'} ('single_file' is None when not written). Weights are drawn on `device` and stored as `dtype`."""
    from tokenizers import Tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = write_tiny_tokenizer(out_dir / "tokenizer")
    n_tokens = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    vocab = -(-n_tokens // 64) * 64
    pad_id = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).token_to_id("<|endoftext|>")
    sd = _tiny_qwen3_state_dict(vocab, hidden, layers, heads, kv_heads, head_dim, intermediate, seed, device, dtype)

    single = None
    if single_file:
        single = out_dir / "qwen_3_4b_tiny.safetensors"
        save_file({"model." + k: v.cpu() for k, v in sd.items()}, str(single), metadata={"format": "pt"})

    te_dir = out_dir / "text_encoder"
    te_dir.mkdir(exist_ok=True)
    config = {
        "architectures": ["Qwen3Model"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": pad_id,
        "eos_token_id": pad_id,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 40960,
        "max_window_layers": layers,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
    }
    (te_dir / "config.json").write_text(json.dumps(config, indent=2))
    # HF Qwen3Model layout (no `model.` prefix), split into two shards with an index.
    keys = list(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k].cpu() for k in ks}, str(te_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in ks})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (te_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return {"root": out_dir, "single_file": single, "text_encoder": te_dir, "tokenizer": tok_dir}
