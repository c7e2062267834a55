"""Qwen3 text encoder of Z-Image: prompt -> chat template -> tokens -> hidden_states[-2] (no final norm).

Matches `diffusers.ZImagePipeline.encode_prompt`: the prompt is wrapped as a Qwen3 chat user turn with the
generation prompt (thinking enabled, so no empty think block), tokenized right-truncated to `max_length`,
run through the decoder layers 0..n-2 (the last layer and the final norm are never computed), and only the
valid (non-pad) token features are returned, one (L_i, hidden) float32 tensor per prompt.

Weights are read with `WeightSource` (safetensors) or `gguf.GGUFSource` (llama.cpp GGUF: names mapped through
gguf's own tensor-name tables, quantized matrices and the embedding kept packed and dequantized on use)
into our own `Qwen3LM` (`qwen3.py`), built on the
meta device from a config inferred from the weight shapes and filled with `assign=True`. As for the DiT,
the weights keep their stored dtype (bf16, fp8 with or without scale_weight, GGUF blocks; a memory-mapped file
stays mapped, never copied) and each layer is cast to the compute dtype when it runs (`ops.Linear` in the
`cast_workspace`, `ops.RMSNorm`, `ops.Embedding`), so Qwen3-4B bf16 on a CPU needs its 8 GB file, not a 16 GB
fp32 copy; the lm_head is
tied to the embedding (one copy) so the same model can also generate text (prompt enhancer). The tokenizer
runs on the `tokenizers` library (`tokenizer.py`); transformers is not needed at run time.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, ZImageError
from ..weights.checkpoint import WeightSource, identify, wrong_model_error
from ..weights.ops import Embedding, Linear
from ..weights.quant import QuantizedTensor
from .qwen3 import Qwen3Config, Qwen3LM
from .tokenizer import TOKENIZER_HELP, QwenTokenizer, load_tokenizer

WANTED = "a Qwen3 text encoder (qwen_3_4b.safetensors)"
TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_MAX_LENGTH = 512
LAYER_KEY = re.compile(r"^layers\.(\d+)\.")
LAYER_PARAMS = (
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)


class TextEncoder:
    """A loaded Qwen3 (`.model`, a `Qwen3LM` with tied lm_head) and its tokenizer."""

    def __init__(self, model: Qwen3LM, tokenizer: QwenTokenizer, dtype: torch.dtype, device: torch.device):
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.device = torch.device(device)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @staticmethod
    def format_prompt(prompt: str) -> str:
        """The Qwen3 chat template for one user turn + assistant header (enable_thinking=True)."""
        return TEMPLATE.format(prompt=prompt)

    def tokenize(self, prompts: list[str], max_length: int = DEFAULT_MAX_LENGTH) -> list[list[int]]:
        """Token ids per prompt (template included), right-truncated to max_length with a warning."""
        ids = []
        for i, prompt in enumerate(prompts):
            tokens = self.tokenizer.encode(self.format_prompt(prompt))
            if len(tokens) > max_length:
                dropped = len(tokens) - max_length
                warnings.warn(
                    f"Z-Image text encoder: prompt {i} is {len(tokens)} tokens long (chat template included), "
                    f"more than max_length={max_length}; the last {dropped} tokens were dropped.",
                    stacklevel=3,
                )
                tokens = tokens[:max_length]
            ids.append(list(tokens))
        return ids

    @torch.no_grad()  # not inference_mode: callers may still use the features in autograd (training)
    def encode(self, prompts: list[str] | str, max_length: int = DEFAULT_MAX_LENGTH) -> list[torch.Tensor]:
        """Per prompt a (L_i, hidden) float32 tensor: the output of decoder layer n-2 on the valid tokens."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            return []
        if max_length < 1:
            raise ZImageError(f"max_length must be at least 1, got {max_length}.")
        ids = self.tokenize(list(prompts), max_length)
        lengths = [len(t) for t in ids]
        width = max(lengths)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.bool)
        for i, t in enumerate(ids):  # right padding: valid tokens keep positions 0..L-1
            input_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[i, : len(t)] = True
        hidden = self._penultimate_hidden_states(input_ids.to(self.device), mask.to(self.device))
        return [hidden[i, : lengths[i]].float() for i in range(len(ids))]

    def _penultimate_hidden_states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`Qwen3Model(...).hidden_states[-2]`: the last decoder layer and the final norm are never run."""
        return self.model.model.hidden_states(input_ids, mask, n_layers=self.model.config.num_hidden_layers - 1)


# ----------------------------------------------------------------------------------------------- weights

def _weights_location(path: Path) -> Path:
    """The file/folder holding the Qwen3 weights: `<model>/text_encoder` for a whole diffusers folder."""
    if path.is_dir() and (path / "text_encoder").is_dir() and not any(path.glob("*.safetensors")):
        return path / "text_encoder"
    return path


def _split_keys(keys: list[str]) -> tuple[str, str | None]:
    """(prefix in front of `embed_tokens.weight`, full key of lm_head.weight or None)."""
    emb = [k for k in keys if k == "embed_tokens.weight" or k.endswith(".embed_tokens.weight")]
    if len(emb) != 1:
        raise CheckpointError(f"expected exactly one embed_tokens.weight, found {len(emb)}")
    prefix = emb[0][: -len("embed_tokens.weight")]
    head = [k for k in keys if k == "lm_head.weight" or k.endswith(".lm_head.weight")]
    return prefix, (head[0] if len(head) == 1 else None)


def _read_config_json(folder: Path) -> dict:
    f = folder / "config.json"
    if not f.is_file():
        return {}
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) and cfg.get("model_type", "qwen3") == "qwen3" else {}


def infer_qwen3_config(shapes: dict[str, tuple[int, ...]], has_lm_head: bool, extra: dict | None = None) -> Qwen3Config:
    """A `Qwen3Config` from weight shapes (keys without prefix); rope_theta / eps from `extra` (config.json)."""
    extra = extra or {}
    layers = sorted({int(m.group(1)) for k in shapes if (m := LAYER_KEY.match(k))})
    if not layers:
        raise CheckpointError("no decoder layers (layers.N.*) found")
    vocab, hidden = shapes["embed_tokens.weight"]
    head_dim = shapes["layers.0.self_attn.q_norm.weight"][0]
    heads = shapes["layers.0.self_attn.q_proj.weight"][0] // head_dim
    kv_heads = shapes["layers.0.self_attn.k_proj.weight"][0] // head_dim
    if heads % kv_heads:
        raise CheckpointError(f"{heads} attention heads cannot share {kv_heads} key/value heads")
    intermediate = shapes["layers.0.mlp.gate_proj.weight"][0]
    rope = extra.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta") or extra.get("rope_theta") or 1e6)
    return Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=intermediate,
        rms_norm_eps=float(extra.get("rms_norm_eps", 1e-6)), rope_theta=theta, tie_word_embeddings=not has_lm_head,
    )


def _plan(source: WeightSource, extra: dict):
    """Check that the source is a complete Qwen3; returns (config, {file key: model key}, lm_head key)."""
    keys = source.keys()
    ident = identify(keys, source.shape)
    if ident.kind != "text_encoder":
        raise wrong_model_error(source, WANTED, ident)
    try:
        prefix, head_key = _split_keys(keys)
    except CheckpointError as e:
        raise CheckpointError(f"{source.describe()}: not a usable Qwen3 text encoder ({e}).") from None
    names = {k: k[len(prefix):] for k in keys if k.startswith(prefix) and k != head_key}
    # scaled fp8 (ComfyUI's layout): per-tensor `<linear>.scale_weight`, and a `scaled_fp8` marker
    shapes = {short: source.shape(k) for k, short in names.items() if not short.endswith(".scale_weight")}
    try:
        config = infer_qwen3_config(shapes, head_key is not None, extra)
    except (KeyError, IndexError, ZeroDivisionError) as e:
        raise CheckpointError(f"{source.describe()}: incomplete Qwen3 text encoder, cannot read {e}.") from None
    except CheckpointError as e:  # shapes that no Qwen3 has: name the file
        raise CheckpointError(f"{source.describe()}: not a usable Qwen3 text encoder ({e}).") from None

    expected = {"embed_tokens.weight", "norm.weight"} | {
        f"layers.{i}.{p}" for i in range(config.num_hidden_layers) for p in LAYER_PARAMS
    }
    unexpected = sorted(set(keys) - set(names) - ({head_key} if head_key else set()) - {"scaled_fp8"})
    unexpected += sorted(set(shapes) - expected)
    unexpected += sorted(s for s in names.values() if s.endswith(".scale_weight")
                         and s[: -len("scale_weight")] + "weight" not in expected)
    missing = sorted(expected - set(shapes))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(f"{source.describe()}: does not match a Qwen3 text encoder; " + "; ".join(parts) + ".")
    return config, names, head_key


def storage_dtype(stored: torch.dtype, compute: torch.dtype) -> torch.dtype:
    """The dtype a tensor is kept in: as stored (bf16, fp16, fp8: cast one layer at a time when used), unless
    it is wider than the compute dtype (an fp32 file computed in bf16 is kept in bf16: each use would round it
    to bf16 anyway)."""
    return compute if stored.itemsize > compute.itemsize else stored


def _build_model(source: WeightSource, config: Qwen3Config, names: dict[str, str], head_key: str | None, dtype,
                 device) -> Qwen3LM:
    """Qwen3LM on the meta device, filled with assign=True (one copy of the weights). The weights keep their
    stored dtype (`storage_dtype`): a memory-mapped file on the CPU stays mapped, not copied; every layer
    computes in `dtype` (the embedding looks its rows up in `dtype`, ops.Linear casts its weight per call)."""
    with torch.device("meta"):
        model = Qwen3LM(config)
    device = torch.device(device)
    state = {}
    scales = {}  # scaled fp8 (ComfyUI's scale_weight): Linear weight name -> per-tensor factor
    for full, short in names.items():
        if short.endswith(".scale_weight"):
            scales["model." + short[: -len("scale_weight")] + "weight"] = source.get(full).float().to(device)
            continue
        t = source.get(full)
        if isinstance(t, QuantizedTensor):  # GGUF: Linear weights and the embedding stay packed
            module_name, _, leaf = ("model." + short).rpartition(".")
            module = model.get_submodule(module_name)
            if leaf == "weight" and isinstance(module, (Linear, Embedding)):
                packed = t.packed.to(device)
                module.weight = torch.nn.Parameter(packed, requires_grad=False)
                module.quant = t.format
                state["model." + short] = packed
                continue
            t = t.dequantize(dtype)
        if not t.is_floating_point():
            raise CheckpointError(f"{source.describe()}: tensor '{full}' has dtype {t.dtype}, expected floating point.")
        state["model." + short] = t.to(device=device, dtype=storage_dtype(t.dtype, dtype))
    if head_key is not None:
        head = source.get(head_key)
        if isinstance(head, QuantizedTensor):
            model.lm_head.weight = torch.nn.Parameter(head.packed.to(device), requires_grad=False)
            model.lm_head.quant = head.format
            state["lm_head.weight"] = model.lm_head.weight.data
        else:
            state["lm_head.weight"] = head.to(device=device, dtype=storage_dtype(head.dtype, dtype))
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches between layers
        raise CheckpointError(f"{source.describe()}: inconsistent Qwen3 weight shapes: {e}") from None
    del state
    leftover = [k for k in result.missing_keys if not (k == "lm_head.weight" and head_key is None)]
    if leftover or result.unexpected_keys:
        raise CheckpointError(f"{source.describe()}: could not load keys {(leftover + result.unexpected_keys)[:5]}.")
    for name, scale in scales.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if not isinstance(module, Linear):
            raise CheckpointError(f"{source.describe()}: a scale_weight for '{name}', which is not a linear layer.")
        module.scale_weight = scale
    model.model.embed_tokens._compute_dtype = dtype
    if head_key is None:  # tie: one copy of the embedding, used by the lm_head for generation
        model.tie_weights()
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- tokenizer

def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and (
        (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
    )


def tokenizer_candidates(path: Path) -> list[Path]:
    """Folders next to / inside a model path where its tokenizer may live, in order."""
    path = Path(path)
    folder = path if path.is_dir() else (path.parent if path.parent.name == "text_encoder" else None)
    if folder is None:
        return []
    if folder.name == "text_encoder":
        return [folder.parent / "tokenizer", folder]
    return [folder / "tokenizer", folder]


def resolve_tokenizer_dir(path, tokenizer_path=None, fallback_dirs: list[Path] | None = None) -> Path:
    """Where the tokenizer is: explicit path, beside/inside the model, then fallback_dirs (e.g. ComfyUI's
    bundled qwen25_tokenizer, passed by the ComfyUI adapter). Raises ZImageError saying where to put it."""
    if tokenizer_path is not None:
        tp = Path(tokenizer_path)
        if tp.is_file():
            tp = tp.parent
        if not _has_tokenizer(tp):
            raise ZImageError(f"{tp}: no tokenizer files found there. {TOKENIZER_HELP}")
        return tp
    tried = tokenizer_candidates(Path(path)) + [Path(d) for d in (fallback_dirs or [])]
    for d in tried:
        if _has_tokenizer(d):
            return d
    where = ", ".join(str(d) for d in tried) or "(no folder to search next to a single file)"
    raise ZImageError(f"{Path(path).name}: no tokenizer found for this Qwen3 text encoder (looked in: {where}). "
                      f"{TOKENIZER_HELP}")


# ----------------------------------------------------------------------------------------------- loading

def load_text_encoder(path, dtype: torch.dtype = torch.float32, device="cpu", tokenizer_path=None,
                      fallback_dirs: list[Path] | None = None) -> TextEncoder:
    """Load a Qwen3 text encoder from a ComfyUI single file, a HF `text_encoder/` folder (sharded or not) or a
    whole diffusers model folder, plus its tokenizer (see `resolve_tokenizer_dir`).

    dtype: the compute dtype (fp32 on the CPU); the weights keep their stored dtype (`storage_dtype`)."""
    path = Path(path)
    location = _weights_location(path)
    if location.suffix.lower() == ".gguf":
        source, extra = _gguf_source(location)
    else:
        source = WeightSource(location)
        config_dir = location if location.is_dir() else location.parent
        extra = _read_config_json(config_dir) if (config_dir / "config.json").is_file() and (
            location.is_dir() or config_dir.name == "text_encoder") else {}
    config, names, head_key = _plan(source, extra)  # wrong/incomplete files fail before anything is read
    tok_dir = resolve_tokenizer_dir(path, tokenizer_path, fallback_dirs)
    model = _build_model(source, config, names, head_key, dtype, device)
    tokenizer = load_tokenizer(tok_dir)
    if isinstance(source, _RenamedSource):
        _check_gguf_tokenizer(source, tokenizer, tok_dir)
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(
            f"{source.describe()}: the tokenizer in {tok_dir} has {len(tokenizer)} tokens but the model's embedding "
            f"has only {model.config.vocab_size} rows; this tokenizer does not belong to this text encoder."
        )
    return TextEncoder(model, tokenizer, dtype, device)


# -------------------------------------------------------------------------------------------------- GGUF

class _RenamedSource:
    """A GGUFSource seen under Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...)."""

    def __init__(self, src, to_gguf: dict[str, str]):
        self.src, self.to_gguf = src, to_gguf

    def keys(self) -> list[str]:
        return list(self.to_gguf)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.src.shape(self.to_gguf[key])

    def get(self, key: str):
        return self.src.get(self.to_gguf[key])

    def describe(self) -> str:
        return self.src.describe()


def _gguf_source(path: Path) -> tuple[_RenamedSource, dict]:
    """A llama.cpp Qwen3 GGUF under Hugging Face names, mapped through gguf's own tensor-name table for
    the qwen3 architecture (every name of the file must map), and rope/eps from the file's metadata."""
    import gguf as gguf_lib

    from ..weights.gguf import TEXT_ENCODER_ARCHS, GGUFSource, check_arch

    src = GGUFSource(path)
    check_arch(src, TEXT_ENCODER_ARCHS, WANTED.replace(".safetensors", ".safetensors or Qwen3-4B-Q8_0.gguf"),
               {"lumina2": "a Z-Image DiT; load it with the ZImageDiTLoader node"})
    n_layers = 1 + max((int(k.split(".")[1]) for k in src.keys() if k.startswith("blk.")), default=-1)
    table = gguf_lib.get_tensor_name_map(gguf_lib.MODEL_ARCH.QWEN3, n_layers)
    hf = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{p}" for i in range(n_layers) for p in LAYER_PARAMS]
    from_hf = {table.get_name(k, try_suffixes=(".weight",)): k for k in hf}
    unknown = [k for k in src.keys() if k not in from_hf]
    if src.arch is None or unknown:
        ident = identify([from_hf.get(k, k) for k in src.keys()])
        if ident.kind != "text_encoder":
            raise wrong_model_error(src, WANTED, ident)
        raise CheckpointError(f"{src.describe()}: {len(unknown)} tensor name(s) that a llama.cpp Qwen3 does not have: "
                              f"{', '.join(unknown[:5])}.")
    extra = {}
    theta = src.field(f"{src.arch}.rope.freq_base")
    eps = src.field(f"{src.arch}.attention.layer_norm_rms_epsilon")
    if theta is not None:
        extra["rope_theta"] = theta
    if eps is not None:
        extra["rms_norm_eps"] = eps
    return _RenamedSource(src, {from_hf[k]: k for k in src.keys()}), extra


def _check_gguf_tokenizer(source: _RenamedSource, tokenizer: QwenTokenizer, tok_dir: Path) -> None:
    """When the GGUF stores its vocabulary (tokenizer.ggml.tokens), the tokenizer used must map every one of
    those tokens to the same id."""
    tokens = source.src.field("tokenizer.ggml.tokens")
    if not tokens:
        return
    wrong = [(i, t) for i, t in enumerate(tokens) if tokenizer.token_to_id(t) not in (i, None)]
    missing = [(i, t) for i, t in enumerate(tokens) if tokenizer.token_to_id(t) is None]
    if wrong or missing:
        i, t = (wrong or missing)[0]
        raise CheckpointError(
            f"{source.describe()}: the tokenizer in {tok_dir} does not match the vocabulary stored in the GGUF "
            f"({len(wrong)} token(s) with another id, {len(missing)} missing; e.g. token {i} {t!r}). Use the "
            "tokenizer of this model.")
