"""zimage_core.model.tokenizer (Qwen BPE on `tokenizers` alone) against transformers' AutoTokenizer as the oracle:
same ids, same decoded strings, same length and pad/eos ids, for both file layouts (tokenizer.json;
vocab.json + merges.txt + tokenizer_config.json), on the tiny tokenizer and on ComfyUI's real 151k-token Qwen
vocabulary; plus clear errors for broken folders and an import that does not pull in transformers."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zimage_core.errors import ZImageError
from zimage_core.tiny.text_encoder import (
    write_tiny_tokenizer,
    write_tiny_tokenizer_vocab_merges,
)
from zimage_core.model.tokenizer import TOKENIZER_HELP, QwenTokenizer, load_tokenizer

TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"  # Z-Image's chat template
PROMPT = "A photograph of a small red fox sitting in the snow at sunrise, soft golden light."
TEXTS = [
    TEMPLATE.format(prompt=PROMPT),
    "",
    " ",
    "   leading and trailing spaces   ",
    "multiple    spaces  between   words",
    "line one\nline two\n\n\nline five\n",
    "windows\r\nline endings\r\n\r\n",
    "\ttabs\tand\t\tmore tabs\t",
    "digits 0123456789 and 3.14159, 1,000,000 and 2024-06-01",
    "punctuation!?.,;:()[]{}<>@#$%^&*-_=+/\\|~`\"'",
    "contractions: it's, I'm, we're, they've, she'd, you'll, don't, IT'S, WE'LL, 'S 'LL 'Re",
    "accents: café, naïve, résumé, Ångström, São Paulo, Zürich, façade, e\u0301 (decomposed)",
    "中文提示词：一只小狐狸坐在雪地里，日出时分，柔和的金色光线。",
    "日本語のプロンプト：雪の中に座っている小さな赤いキツネ、日の出。カタカナとひらがな。",
    "emoji 😀🦊🌅 👩‍👩‍👧‍👦 🇯🇵 ❤️",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nSure.<|endoftext|>",
    "<think>\n\n</think>\n\n",
    "specials glued<|im_end|>to words<|im_start|> and <|endoftext|>",
    "not quite special: <|im_start| <im_end|> <|unknown|> < think >",
    " ".join([PROMPT] * 40),
]


def fuzz_texts(n: int = 60, seed: int = 0) -> list[str]:
    """Deterministic random mixes of words, whitespace runs, specials, digits and non-Latin text."""
    pieces = ["fox", "Snow", " the", "light", "'s", "'LL", " ", "  ", "\n", "\r\n", "\t", "\n\n ", "123", "4",
              "é", "e\u0301", "中文", "日本", "😀", "!", "?!", "...", "<|im_start|>", "<|im_end|>", "<think>",
              "</think>", "<|endoftext|>", "-", "_", "/"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 25))) for _ in range(n)]


def assert_same_as_transformers(folder: Path, texts: list[str]) -> QwenTokenizer:
    """encode / decode (both skip_special_tokens values) / len / pad and eos ids / token_to_id equal."""
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ours = load_tokenizer(folder)
    assert ours.folder == Path(folder)
    assert len(ours) == len(ref)
    assert (ours.pad_token_id, ours.eos_token_id) == (ref.pad_token_id, ref.eos_token_id)
    for token, token_id in ref.added_tokens_encoder.items():
        assert ours.token_to_id(token) == token_id
    for text in texts:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    every_id = list(range(len(ref)))  # decoding the whole vocabulary at once compares the id -> token tables
    for skip in (False, True):
        assert ours.decode(every_id, skip_special_tokens=skip) == ref.decode(every_id, skip_special_tokens=skip)
    return ours


@pytest.fixture(scope="session")
def tiny_json(tmp_path_factory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok_json"))


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory) -> Path:
    return write_tiny_tokenizer_vocab_merges(tmp_path_factory.mktemp("tok_vocab"))


def copy_with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of a tokenizer folder with some tokenizer_config.json keys changed (None: removed)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


# ----------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json+merges.txt"])
def test_tiny_tokenizer_matches_transformers_in_both_layouts(layout, tiny_json, tiny_vocab):
    folder = tiny_json if layout == "tokenizer.json" else tiny_vocab
    assert (folder / "tokenizer.json").is_file() == (layout == "tokenizer.json")
    ours = assert_same_as_transformers(folder, TEXTS + fuzz_texts())
    assert ours.encode("<|im_start|>") == [ours.token_to_id("<|im_start|>")]  # specials are single tokens
    assert ours.token_to_id("no such token") is None


def test_both_layouts_of_the_tiny_tokenizer_give_the_same_ids(tiny_json, tiny_vocab):
    a, b = load_tokenizer(tiny_json), load_tokenizer(tiny_vocab)
    assert len(a) == len(b) == 700
    for text in TEXTS:
        assert a.encode(text) == b.encode(text)


def test_config_special_flags_override_tokenizer_json_like_transformers(tiny_json):
    """The tiny tokenizer.json marks <think> special, its tokenizer_config.json does not: transformers (and we)
    follow the config, so decode(skip_special_tokens=True) keeps <think> but drops <|im_end|>."""
    ours = assert_same_as_transformers(tiny_json, TEXTS)
    ids = ours.encode("<think>hi</think><|im_end|>")
    assert ours.decode(ids, skip_special_tokens=True) == "<think>hi</think>"


@pytest.mark.parametrize("changes", [
    {"pad_token": None, "eos_token": None, "unk_token": None},  # Qwen2Tokenizer defaults: <|endoftext|>
    {"eos_token": "<|new_eos|>"},  # a special token missing from the vocabulary is appended
    {"additional_special_tokens": ["<|im_start|>", "<|extra|>"]},
    {"added_tokens_decoder": None},  # added tokens from tokenizer.json (vocab layout: from the config only)
    {"split_special_tokens": True},  # "<|im_start|>" in the text is split like plain text
    {"add_bos_token": True, "bos_token": "<|endoftext|>"},  # vocab layout prepends it, tokenizer.json ignores it
    {"clean_up_tokenization_spaces": True},  # ignored for BPE by transformers 5
    {"pad_token": {"content": "<|endoftext|>", "special": True, "__type": "AddedToken"}},
], ids=["no-named-specials", "new-eos", "extra-special", "no-added-tokens-decoder", "split-specials", "add-bos",
        "cleanup-spaces", "pad-as-dict"])
@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json+merges.txt"])
def test_tokenizer_config_variants_match_transformers(layout, changes, tiny_json, tiny_vocab, tmp_path):
    src = tiny_json if layout == "tokenizer.json" else tiny_vocab
    assert_same_as_transformers(copy_with_config(src, tmp_path / "tok", **changes), TEXTS[:4] + TEXTS[15:19])


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json+merges.txt"])
def test_named_and_extra_special_tokens_stay_special_when_the_config_says_not_like_transformers(
        layout, tiny_json, tiny_vocab, tmp_path):
    """<|im_end|> (eos, a named special token) and <|im_start|> (additional_special_tokens) flagged special=False,
    lstrip=rstrip=True in added_tokens_decoder: transformers re-adds them as plain special tokens, so both are
    skipped by decode(skip_special_tokens=True) and the spaces around them stay separate tokens."""
    src = tiny_json if layout == "tokenizer.json" else tiny_vocab
    added = json.loads((src / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    for token in added.values():
        if token["content"] in ("<|im_end|>", "<|im_start|>"):
            token.update(special=False, lstrip=True, rstrip=True)
    ours = assert_same_as_transformers(copy_with_config(src, tmp_path / "tok", added_tokens_decoder=added), TEXTS)
    assert ours.decode(ours.encode(TEMPLATE.format(prompt="a")), skip_special_tokens=True) == "user\na\nassistant\n"
    assert ours.decode(ours.encode("a <|im_end|> b"), skip_special_tokens=True) == "a  b"


def test_tokenizer_json_without_config_matches_transformers(tiny_json, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_json, folder)
    (folder / "tokenizer_config.json").unlink()
    ours = assert_same_as_transformers(folder, TEXTS)
    assert ours.pad_token_id is None and ours.eos_token_id is None


def comfyui_qwen_folder() -> Path:
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        pytest.skip("COMFYUI_PATH is not set: no real Qwen vocabulary (ComfyUI's qwen25_tokenizer) to compare on")
    folder = Path(root) / "comfy" / "text_encoders" / "qwen25_tokenizer"
    if not (folder / "vocab.json").is_file():
        pytest.skip(f"{folder} has no vocab.json: no real Qwen vocabulary to compare on")
    return folder


@pytest.mark.comfyui
def test_comfyui_qwen_vocabulary_matches_transformers():
    """151k-token Qwen2.5 vocabulary, vocab.json + merges.txt + tokenizer_config.json layout."""
    ours = assert_same_as_transformers(comfyui_qwen_folder(), TEXTS + fuzz_texts(200))
    assert len(ours) == 151669
    assert ours.encode(TEMPLATE.format(prompt="a cat"))[:3] == [151644, 872, 198]  # <|im_start|> user \n


@pytest.mark.comfyui
def test_comfyui_qwen_vocabulary_saved_as_tokenizer_json_matches_transformers(tmp_path):
    """The same vocabulary in the tokenizer.json layout, as transformers saves it (written to tmp_path)."""
    transformers = pytest.importorskip("transformers")
    folder = comfyui_qwen_folder()
    transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True).save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and not (tmp_path / "vocab.json").exists()
    assert_same_as_transformers(tmp_path, TEXTS + fuzz_texts(100, seed=1))


# ----------------------------------------------------------------------------------------------- errors

def assert_tokenizer_error(folder: Path, *words: str) -> None:
    with pytest.raises(ZImageError) as info:
        load_tokenizer(folder)
    message = str(info.value)
    assert str(folder) in message and message.endswith(TOKENIZER_HELP)
    for word in words:
        assert word in message
    error = info.value  # no chained raw traceback from tokenizers / json
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_folder_without_tokenizer_files_raises_zimage_error(tmp_path):
    assert_tokenizer_error(tmp_path, "no tokenizer.json", "vocab.json + merges.txt")
    assert_tokenizer_error(tmp_path / "missing", "not a folder")


def test_corrupt_tokenizer_json_raises_zimage_error(tiny_json, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_json, folder)
    (folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "mer')
    assert_tokenizer_error(folder, "tokenizer.json", "JSON")
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": "not a dict"}}))
    assert_tokenizer_error(folder, "tokenizer.json is malformed")


def test_tokenizer_json_of_another_model_type_raises_zimage_error(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    assert_tokenizer_error(tmp_path, "WordLevel", "not BPE")


def test_vocab_json_that_is_not_json_raises_zimage_error(tiny_vocab, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_vocab, folder)
    (folder / "vocab.json").write_text("this is not json")
    assert_tokenizer_error(folder, "vocab.json", "JSON")


def test_missing_or_malformed_merges_txt_raises_zimage_error(tiny_vocab, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_vocab, folder)
    (folder / "merges.txt").write_text("#version: 0.2\na b c\n")
    assert_tokenizer_error(folder, "merges.txt", "line 1")
    (folder / "merges.txt").unlink()
    assert_tokenizer_error(folder, "no tokenizer.json", "merges.txt")


def test_broken_tokenizer_config_raises_zimage_error(tiny_json, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_json, folder)
    (folder / "tokenizer_config.json").write_text("[1, 2")
    assert_tokenizer_error(folder, "tokenizer_config.json", "JSON")
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"x": {"content": "<a>"}}}))
    assert_tokenizer_error(folder, "added_tokens_decoder")


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json+merges.txt"])
def test_added_token_ids_that_disagree_with_the_vocabulary_raise_zimage_error(layout, tiny_json, tiny_vocab,
                                                                              tmp_path):
    """transformers silently renumbers added tokens when the config skips one (here <|im_start|>, 696): every
    later special token would then point at another embedding row. We refuse such files."""
    src = tiny_json if layout == "tokenizer.json" else tiny_vocab
    config = json.loads((src / "tokenizer_config.json").read_text())
    added = {i: t for i, t in config["added_tokens_decoder"].items() if t["content"] != "<|im_start|>"}
    folder = copy_with_config(src, tmp_path / "tok", added_tokens_decoder=added)
    assert_tokenizer_error(folder, "'<|im_end|>' should have id 697", "id 696")


# ------------------------------------------------------------------------------------------- import cost

def test_importing_the_tokenizer_does_not_import_transformers():
    code = "import sys, zimage_core.model.tokenizer; print('transformers' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "False"
