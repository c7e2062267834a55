"""Qwen2/Qwen3 byte-level BPE tokenizer on the `tokenizers` library alone (no `transformers` at run time).

Why: `transformers` is heavy to import and changes its tokenizer internals between major versions; the text
encoder only needs `text -> ids` and `ids -> text`. This module rebuilds exactly what
`transformers.AutoTokenizer.from_pretrained(folder)` builds for a Qwen2Tokenizer folder (transformers 5 is
the oracle in tests/test_tokenizer.py), from either layout:

* `tokenizer.json`: the file's BPE model and pipeline (normaliser, pre-tokeniser, decoder, post-processor);
* `vocab.json` + `merges.txt`: the Qwen2 pipeline of transformers' `Qwen2Tokenizer` / `Qwen2Converter`
  (NFC, the Qwen split regex with behaviour "isolated" + ByteLevel without regex, ByteLevel decoder).

Added tokens follow transformers: `tokenizer_config.json` `added_tokens_decoder` replaces the tokenizer.json
list when present (so its `special` flags win), entries are added in id order, named special tokens
(eos/pad/...) and `additional_special_tokens` missing from the vocabulary are appended, and all of those are
marked special. The ids this yields must equal the ids written in the files, else the files disagree with
each other (and with the model's embedding rows) and loading fails with a `ZImageError` (transformers
silently renumbers them).

Known differences, none for Qwen's own files: transformers 5 replaces a tokenizer.json's normaliser /
pre-tokeniser / decoder by Qwen2Tokenizer's built-in ones (we keep the file's, as transformers 4 did), and a
tokenizer_config.json without `tokenizer_class` makes it load a generic tokenizer (we stay Qwen2).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from ..errors import ZImageError

TOKENIZER_HELP = (
    "Put the Qwen tokenizer files (tokenizer.json, or vocab.json + merges.txt, and tokenizer_config.json; "
    "from the 'tokenizer' folder of Tongyi-MAI/Z-Image-Turbo) in a folder named 'tokenizer' next to the "
    "model's 'text_encoder' folder, or inside the text encoder folder itself, or pass the folder as "
    "tokenizer_path."
)

# transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX (also in every Qwen tokenizer.json)
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES, in transformers' order
NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Qwen2Tokenizer.__init__ defaults, used when a Qwen2Tokenizer config leaves the key out
QWEN2_DEFAULTS = {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


class QwenTokenizer:
    """`encode` / `decode` with the ids and strings of transformers' Qwen2Tokenizer for the same folder."""

    def __init__(self, folder: Path, backend: Tokenizer, specials: dict[str, str | None]):
        self.folder = folder
        self.backend = backend  # the tokenizers.Tokenizer; no padding, no truncation
        self.pad_token_id = self.token_to_id(specials["pad_token"]) if specials.get("pad_token") else None
        self.eos_token_id = self.token_to_id(specials["eos_token"]) if specials.get("eos_token") else None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special/added tokens written in the text are single tokens; no BOS/EOS (Qwen)."""
        return self.backend.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        # transformers 5 never applies clean_up_tokenization_spaces to BPE tokenizers (Qwen configs say False)
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"QwenTokenizer({str(self.folder)!r}, {len(self)} tokens)"


def load_tokenizer(folder: str | Path) -> QwenTokenizer:
    """Load the tokenizer in `folder`; every failure is a ZImageError naming the folder + TOKENIZER_HELP."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _error(folder, "not a folder")
    config = _read_config(folder)
    from_json = (folder / "tokenizer.json").is_file()
    if from_json:
        backend, file_added = _from_tokenizer_json(folder)
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        backend, file_added = _from_vocab_merges(folder, config), []
    else:
        raise _error(folder, "no tokenizer.json, and no vocab.json + merges.txt")
    added = _config_added_tokens(folder, config) if "added_tokens_decoder" in config else file_added
    specials = _special_tokens(config)
    _add_tokens(backend, added, specials)
    _check_added_ids(folder, backend, added)
    if not from_json:  # tokenizer.json brings its own post-processor
        _set_bos_eos_template(backend, config, specials)
    backend.no_padding()
    backend.no_truncation()
    backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
    return QwenTokenizer(folder, backend, specials)


# ------------------------------------------------------------------------------------------------ files

def _error(folder: Path, what: str) -> ZImageError:
    return ZImageError(f"{folder}: the tokenizer could not be loaded: {what}. {TOKENIZER_HELP}")


def _read_json(folder: Path, name: str):
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _error(folder, f"{name} is not readable JSON ({type(e).__name__}: {e})") from None


def _read_config(folder: Path) -> dict:
    """tokenizer_config.json as a dict; {} when absent (transformers then loads a plain tokenizers backend)."""
    if not (folder / "tokenizer_config.json").is_file():
        return {}
    config = _read_json(folder, "tokenizer_config.json")
    if not isinstance(config, dict):
        raise _error(folder, "tokenizer_config.json is not a JSON object")
    return config


def _from_tokenizer_json(folder: Path) -> tuple[Tokenizer, list[tuple[int, dict]]]:
    """The tokenizer.json model and pipeline without its added tokens (re-added later the way transformers
    does it), and those added tokens as [(id, {content, special, lstrip, ...})]."""
    try:
        full = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001  (tokenizers raises plain Exception for malformed content)
        _read_json(folder, "tokenizer.json")  # names a file that is not JSON at all
        raise _error(folder, f"tokenizer.json is malformed ({e})") from None
    if not isinstance(full.model, BPE):
        raise _error(folder, f"tokenizer.json holds a {type(full.model).__name__} model, not BPE (not a Qwen tokenizer)")
    tok = Tokenizer(full.model)  # shares the model, starts with no added tokens
    tok.normalizer, tok.pre_tokenizer = full.normalizer, full.pre_tokenizer
    tok.post_processor, tok.decoder = full.post_processor, full.decoder
    added = [(i, {k: getattr(t, k) for k in ADDED_TOKEN_FIELDS}) for i, t in full.get_added_tokens_decoder().items()]
    return tok, sorted(added, key=lambda x: x[0])


def _from_vocab_merges(folder: Path, config: dict) -> Tokenizer:
    """transformers' Qwen2Tokenizer built from vocab.json (token -> id) and merges.txt ('#version' line, then
    one 'left right' pair per line, highest priority first), read by the same Rust reader."""
    try:  # file paths: read in Rust (2x faster than via Python dicts), as transformers does
        model = BPE(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), dropout=None,
                    unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                    byte_fallback=False)
    except Exception as e:  # noqa: BLE001  (tokenizers raises plain Exception)
        _read_json(folder, "vocab.json")  # names vocab.json when that is the broken file
        raise _error(folder, f"vocab.json + merges.txt could not be read ({e})") from None
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space") or False), use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


# ------------------------------------------------------------------------------------------ added tokens

def _token_fields(entry) -> dict:
    """AddedToken keyword arguments from a serialised added token ({content, special, lstrip, ...})."""
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        raise TypeError(f"bad added token {entry!r}")
    return {k: entry[k] for k in ADDED_TOKEN_FIELDS if k in entry}


def _config_added_tokens(folder: Path, config: dict) -> list[tuple[int, dict]]:
    """tokenizer_config.json `added_tokens_decoder` ({"151643": {"content": ..., "special": ...}}) as
    [(id, fields)] sorted by id."""
    table = config["added_tokens_decoder"]
    try:
        return sorted(((int(i), _token_fields(t)) for i, t in table.items()), key=lambda x: x[0])
    except (AttributeError, TypeError, ValueError) as e:
        raise _error(folder, f"tokenizer_config.json has a malformed added_tokens_decoder ({e})") from None


def _content(value) -> str | None:
    """A special token written as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _special_tokens(config: dict) -> dict[str, str | None]:
    """Named special tokens (bos/eos/unk/.../pad, with Qwen2Tokenizer's defaults for keys a Qwen2 config leaves
    out) and "extra" (additional_special_tokens, a list) -> content."""
    qwen2 = str(config.get("tokenizer_class", "")).startswith("Qwen2Tokenizer")
    named = {k: _content(config[k]) if k in config else (QWEN2_DEFAULTS.get(k) if qwen2 else None)
             for k in NAMED_SPECIALS}
    # any other "*_token": "<...>" key is a model-specific named special token in transformers 5
    named.update({k: v for k, v in config.items() if k.endswith("_token") and k not in named and isinstance(v, str)})
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, dict):  # model-specific named tokens, e.g. {"image_token": "<|image_pad|>"}
        named.update({k: _content(v) for k, v in extra.items()})
        extra = config.get("additional_special_tokens") or []
    named["extra"] = [c for c in map(_content, extra) if c] if isinstance(extra, list) else []
    return named


def _add_tokens(backend: Tokenizer, added: list[tuple[int, dict]], specials: dict) -> None:
    """The calls transformers 5 makes: the added tokens in id order plus the special tokens not yet known, in
    one add_tokens; then Qwen2Tokenizer re-adds every special token as a plain AddedToken(special=True), which
    makes it special (and drops its lstrip/rstrip) even where added_tokens_decoder says otherwise."""
    all_special = list(dict.fromkeys([v for k, v in specials.items() if k != "extra" and v] + specials["extra"]))
    tokens = [AddedToken(**fields) for _, fields in added]
    known = {t.content for t in tokens}
    backend.add_tokens(tokens + [AddedToken(s, special=True) for s in all_special if s not in known])
    backend.add_tokens([AddedToken(s, special=True) for s in all_special])


def _check_added_ids(folder: Path, backend: Tokenizer, added: list[tuple[int, dict]]) -> None:
    """Added tokens get the next free id in order; a gap or a clash means the files disagree."""
    for want, fields in added:
        got = backend.token_to_id(fields["content"])
        if got != want:
            raise _error(folder, f"added token {fields['content']!r} should have id {want} but the vocabulary "
                                 f"gives it id {got} (tokenizer files that do not belong together)")


def _set_bos_eos_template(backend: Tokenizer, config: dict, specials: dict) -> None:
    """vocab.json layout: transformers' update_post_processor (BOS/EOS only if add_bos/eos_token; Qwen: none)."""
    bos = specials["bos_token"] if config.get("add_bos_token") else None
    eos = specials["eos_token"] if config.get("add_eos_token") else None
    if bos is None and eos is None:
        return
    single = f"{bos + ':0 ' if bos else ''}$A:0{' ' + eos + ':0' if eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if bos else ''} $B:1{' ' + eos + ':1' if eos else ''}"
    pairs = [(t, backend.token_to_id(t)) for t in (bos, eos) if t]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=pairs)
