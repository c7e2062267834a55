"""Prompt enhancer: local generation on the tiny random Qwen3, output cleaning, shared weights, the
OpenAI-compatible endpoint backend (against a local http.server), and the node."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from zimage_core import prompt_enhancer as pe
from zimage_core.errors import InputError, ZImageError
from zimage_core.model.text_encoder import load_text_encoder
from zimage_core.tiny.text_encoder import write_tiny_text_encoder

# The tiny random model with tied embeddings mostly repeats its last token; a high temperature makes the
# sampled text seed-dependent (what the determinism tests need).
HOT = dict(temperature=30.0, top_p=1.0)


@pytest.fixture(scope="module")
def te(tmp_path_factory):
    d = write_tiny_text_encoder(tmp_path_factory.mktemp("pe_te"))
    return load_text_encoder(d["text_encoder"], tokenizer_path=d["tokenizer"])


def _capture_generate(monkeypatch, model):
    """Record (model, prompt ids) of every generation: the first `next_logits` call of each run is the
    prefill of the whole chat (a fresh, empty KV cache). The real model still runs."""
    calls = []
    real = model.next_logits

    def spy(ids, cache):
        if cache.length == 0:
            calls.append((model, ids.clone()))
        return real(ids, cache)

    monkeypatch.setattr(model, "next_logits", spy)
    return calls


# ------------------------------------------------------------------------------------------- generation

def test_chat_string_sent_to_model(te, monkeypatch):
    calls = _capture_generate(monkeypatch, te.model)
    pe.enhance(te, "  a red fox in the snow ", preset="custom", system_prompt="Rewrite the prompt.",
               max_new_tokens=4, temperature=0)
    (_, ids), = calls
    sent = te.tokenizer.decode(ids[0].tolist(), skip_special_tokens=False)
    assert sent == ("<|im_start|>system\nRewrite the prompt.<|im_end|>\n"
                    "<|im_start|>user\na red fox in the snow<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert sent == pe.build_chat("Rewrite the prompt.", "a red fox in the snow")

    calls.clear()
    pe.enhance(te, "a cat", preset="official", max_new_tokens=2, temperature=0.5)
    sent = te.tokenizer.decode(calls[0][1][0].tolist(), skip_special_tokens=False)
    assert sent.startswith("<|im_start|>system\n" + pe.OFFICIAL_SYSTEM_PROMPT + "<|im_end|>\n")


def test_chat_equals_the_qwen3_template_with_thinking_off(te):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(te.tokenizer.folder), local_files_only=True)
    msgs = [{"role": "system", "content": "Rewrite."}, {"role": "user", "content": "a fox\nin snow"}]
    assert pe.build_chat("Rewrite.", "a fox\nin snow") == ref.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def _reference_lm(te):
    """transformers' Qwen3ForCausalLM with the text encoder's weights (the oracle for decoding)."""
    import transformers

    c = te.model.config
    ref = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
        intermediate_size=c.intermediate_size, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=True, attention_bias=False)).eval()
    ref.load_state_dict(te.model.state_dict())
    return ref


@pytest.mark.parametrize("options", [dict(temperature=0), dict(temperature=0.7, top_p=0.9), HOT,
                                     dict(temperature=3.0, top_p=0.5)], ids=["greedy", "default", "hot", "top_p"])
def test_tokens_equal_transformers_generate_for_the_same_seed(te, options):
    from transformers import LogitsProcessor, LogitsProcessorList

    ref = _reference_lm(te)
    n_real = len(te.tokenizer)

    class MaskPadding(LogitsProcessor):
        def __call__(self, ids, scores):
            scores[:, n_real:] = -float("inf")
            return scores

    chat = pe.build_chat(pe.CONCISE_SYSTEM_PROMPT, "a lighthouse on a cliff")
    prompt = torch.tensor([te.tokenizer.encode(chat)])
    stops = [te.tokenizer.token_to_id(t) for t in pe.STOP_TOKENS]
    sampling = dict(do_sample=False) if options["temperature"] == 0 else dict(
        do_sample=True, temperature=options["temperature"], top_p=options["top_p"])
    for seed in (0, 7):
        torch.manual_seed(seed)
        out = ref.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24,
                           eos_token_id=stops, pad_token_id=stops[-1],
                           logits_processor=LogitsProcessorList([MaskPadding()]), **sampling)
        expected = [t for t in out[0, prompt.shape[1]:].tolist()]
        while expected and expected[-1] in stops:
            expected.pop()
        assert pe.generate_ids(te, chat, seed=seed, max_new_tokens=24, **options) == expected


def test_generation_stops_at_a_stop_token(te, monkeypatch):
    real, stop = te.model.next_logits, te.tokenizer.token_to_id("<|im_end|>")
    steps = []

    def forced(ids, cache):  # the third generated token is <|im_end|>
        logits = real(ids, cache)
        steps.append(cache.length)
        if len(steps) == 3:
            logits[:, stop] = 1e9
        return logits

    monkeypatch.setattr(te.model, "next_logits", forced)
    seen = []
    ids = pe.generate_ids(te, pe.build_chat("s", "a fox"), max_new_tokens=20, temperature=0, chunk=1,
                         progress=lambda d, t: seen.append(d))
    assert len(ids) == 2 and stop not in ids and len(steps) == 3 and seen == [1, 2, 3]


def test_deterministic_per_seed_and_max_new_tokens(te):
    chat = pe.build_chat(pe.CONCISE_SYSTEM_PROMPT, "a lighthouse")
    a = pe.generate_ids(te, chat, seed=1, max_new_tokens=12, **HOT)
    b = pe.generate_ids(te, chat, seed=1, max_new_tokens=12, **HOT)
    c = pe.generate_ids(te, chat, seed=2, max_new_tokens=12, **HOT)
    assert a == b and a != c
    assert 1 <= len(a) <= 12 and len(c) <= 12
    assert max(a + c) < len(te.tokenizer)  # padded embedding rows past the tokenizer are never sampled
    greedy = pe.generate_ids(te, chat, seed=5, max_new_tokens=7, temperature=0)
    assert len(greedy) == 7  # no stop token sampled by this model greedily: exactly max_new_tokens
    assert greedy == pe.generate_ids(te, chat, seed=6, max_new_tokens=7, temperature=0)
    # the global RNG is not disturbed
    torch.manual_seed(123)
    x = torch.rand(3)
    torch.manual_seed(123)
    pe.generate_ids(te, chat, seed=9, max_new_tokens=3, **HOT)
    assert torch.equal(torch.rand(3), x)
    # the text level is deterministic too
    assert pe.enhance(te, "a lighthouse", seed=3, max_new_tokens=8, **HOT) == \
        pe.enhance(te, "a lighthouse", seed=3, max_new_tokens=8, **HOT)


def test_progress_per_chunk_and_interrupt(te):
    chat = pe.build_chat("s", "a fox")
    seen = []
    pe.generate_ids(te, chat, max_new_tokens=20, temperature=0, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(8, 20), (16, 20), (20, 20)]

    class Interrupted(Exception):
        pass

    def stop(done, total):
        raise Interrupted

    with pytest.raises(Interrupted):
        pe.generate_ids(te, chat, max_new_tokens=20, temperature=0, progress=stop)


def test_bad_options(te):
    with pytest.raises(InputError, match="preset"):
        pe.enhance(te, "a fox", preset="nope")
    with pytest.raises(InputError, match="system_prompt"):
        pe.enhance(te, "a fox", preset="custom", system_prompt="  ")
    with pytest.raises(InputError, match="empty"):
        pe.enhance(te, "   ")
    with pytest.raises(InputError, match="max_new_tokens"):
        pe.enhance(te, "a fox", max_new_tokens=0)


def test_one_model_serves_encoding_and_enhancing(te, monkeypatch):
    model = te.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, one copy
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    feats_before = te.encode(["a fox"])[0]
    calls = _capture_generate(monkeypatch, model)
    pe.enhance(te, "a fox", max_new_tokens=3, temperature=0)
    assert len(calls) == 1 and calls[0][0] is model
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == before
    assert torch.equal(te.encode(["a fox"])[0], feats_before)


# ------------------------------------------------------------------------------------------------ cleaning

@pytest.mark.parametrize("raw, clean", [
    ("A red fox sits in fresh snow.", "A red fox sits in fresh snow."),
    ("<think>\nThe user wants a fox.\n</think>\n\nA red fox sits in snow.<|im_end|>", "A red fox sits in snow."),
    ("reasoning without an opening tag</think>\nA fox.", "A fox."),
    ("A fox in snow.\n<think>I should also add", "A fox in snow."),
    ("<think>never closed, all reasoning", ""),
    ("Here is the enhanced prompt:\n\nA fox at dawn.", "A fox at dawn."),
    ("Sure! Here's a detailed version: A fox at dawn.", "A fox at dawn."),
    ("**Enhanced prompt:** A fox at dawn.", "A fox at dawn."),
    ("Rewritten prompt: \"A fox at dawn.\"", "A fox at dawn."),
    ("\u201cA fox at dawn.\u201d", "A fox at dawn."),
    ("```\nA fox at dawn.\n```", "A fox at dawn."),
    ("  'A fox at dawn.'<|endoftext|><|im_end|>  \n", "A fox at dawn."),
    ('A poster with "OPEN" at the top and "LATE" below', 'A poster with "OPEN" at the top and "LATE" below'),
    ('"OPEN" is written on the sign, and "LATE" below it', '"OPEN" is written on the sign, and "LATE" below it'),
    ("优化后的提示词：一只红狐狸坐在雪地里。", "一只红狐狸坐在雪地里。"),
    ("Here is a fox sitting in the snow.", "Here is a fox sitting in the snow."),  # no colon: not a preamble
])
def test_clean_output(raw, clean):
    assert pe.clean_output(raw) == clean


# ------------------------------------------------------------------------------------------------ endpoint

class _Handler(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Handler.requests.append((self.path, dict(self.headers), json.loads(body)))
        try:
            if self.path.startswith("/slow"):
                time.sleep(1.0)
            if self.path.startswith("/error"):
                self._send(500, b'{"error": "model not loaded"}')
            elif self.path.startswith("/badjson"):
                self._send(200, b"<html>not json</html>")
            elif self.path.startswith("/shape"):
                self._send(200, b'{"choices": []}')
            else:
                reply = {"choices": [{"message": {"role": "assistant",
                                                  "content": "<think>ok</think>Enhanced prompt: \"A fox at dawn.\""}}]}
                self._send(200, json.dumps(reply).encode())
        except OSError:  # the client gave up (timeout test)
            pass

    def _send(self, code, data):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def test_endpoint_success(server):
    _Handler.requests.clear()
    out = pe.enhance_via_endpoint(server + "/ok/v1", "qwen3:8b", "SYS", "a fox", timeout=5, api_key="k",
                                  seed=4, max_new_tokens=100, temperature=0.7, top_p=0.9)
    assert out == "A fox at dawn."
    (path, headers, body), = _Handler.requests
    assert path == "/ok/v1/chat/completions"
    assert headers["Authorization"] == "Bearer k"
    assert body["model"] == "qwen3:8b" and body["stream"] is False
    assert body["messages"] == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "a fox"}]
    assert body["seed"] == 4 and body["max_tokens"] == 100
    # full endpoint path kept as is; bare server gets /v1/chat/completions
    pe.enhance_via_endpoint(server + "/ok/v1/chat/completions", "m", "s", "p", timeout=5)
    pe.enhance_via_endpoint(server + "/ok", "m", "s", "p", timeout=5)
    assert [r[0] for r in _Handler.requests[1:]] == ["/ok/v1/chat/completions"] * 2
    assert "Authorization" not in _Handler.requests[1][1]


def test_endpoint_errors(server):
    with pytest.raises(ZImageError, match="HTTP 500.*model not loaded"):
        pe.enhance_via_endpoint(server + "/error/v1", "m", "s", "p", timeout=5)
    with pytest.raises(ZImageError, match="not an OpenAI chat completion"):
        pe.enhance_via_endpoint(server + "/badjson/v1", "m", "s", "p", timeout=5)
    with pytest.raises(ZImageError, match="not an OpenAI chat completion"):
        pe.enhance_via_endpoint(server + "/shape/v1", "m", "s", "p", timeout=5)
    t = time.monotonic()
    with pytest.raises(ZImageError, match="did not answer within 0.2 s"):
        pe.enhance_via_endpoint(server + "/slow/v1", "m", "s", "p", timeout=0.2)
    assert time.monotonic() - t < 0.9
    with pytest.raises(ZImageError, match="http://"):
        pe.enhance_via_endpoint("127.0.0.1:1/v1", "m", "s", "p")


def test_endpoint_unreachable():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ZImageError, match="cannot be reached|failed"):
        pe.enhance_via_endpoint(f"http://127.0.0.1:{port}", "m", "s", "p", timeout=2)


# ---------------------------------------------------------------------------------------------------- node

def test_node(pack, te, server, monkeypatch):
    import importlib

    mod = importlib.import_module(f"{pack.__name__}.nodes.prompt_enhancer")
    loaders = importlib.import_module(f"{pack.__name__}.nodes.loaders")
    node_cls = mod.NODE_CLASS_MAPPINGS["ZImagePromptEnhancer"]
    spec = node_cls.INPUT_TYPES()
    for group in spec.values():
        for name, (_, opts) in group.items():
            assert opts.get("tooltip"), name
    assert spec["required"]["preset"][0] == ["official", "concise", "custom"]
    assert spec["optional"]["endpoint_url"][1]["default"] == ""
    assert node_cls.CATEGORY == "Z-Image/conditioning" and node_cls.OUTPUT_NODE is False
    assert node_cls.RETURN_TYPES == ("STRING",) and node_cls.DESCRIPTION

    node = node_cls()
    calls = _capture_generate(monkeypatch, te.model)
    holder = loaders.TextEncoderModel(te)  # the ZIMAGE_TEXT_ENCODER object of the loader
    out = node.enhance(holder, "a fox", "official", 3, 16, 0.0)
    text = out["result"][0]
    assert out == {"ui": {"text": [text]}, "result": (text,)} and isinstance(text, str)
    assert calls[0][0] is te.model
    assert node.enhance(te, "a fox", "official", 3, 16, 0.0) == out  # a bare TextEncoder works too

    _Handler.requests.clear()
    out = node.enhance(holder, "a fox", "concise", 1, 64, 0.5, system_prompt="", endpoint_url=server + "/ok/v1",
                       endpoint_model="m")
    assert out["result"] == ("A fox at dawn.",) and len(calls) == 2  # the local model was not used
    assert _Handler.requests[0][2]["messages"][0]["content"] == pe.CONCISE_SYSTEM_PROMPT
