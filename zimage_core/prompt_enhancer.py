"""Prompt enhancer (PE): rewrite a short user prompt into the long, concrete prompt Z-Image works best with.

The Z-Image authors' PE is only a system prompt for a hosted chat LLM (reference section 13). Here the same
idea runs locally on the Qwen3 text encoder that is already loaded: `TextEncoder.model` is a `Qwen3LM`
whose lm_head is tied to the embeddings, so it can generate text with no second copy of the weights and no
network. Decoding follows transformers' `generate` sampling exactly (temperature, top-k 50, top-p, then
one multinomial draw per token; greedy when temperature is 0), so a seed gives the same text as before;
it is tested token for token against transformers. The system prompts are our own, written from the PE's
documented behaviour.

Optional second backend: an OpenAI-compatible `/v1/chat/completions` endpoint (Ollama, LM Studio, ...)
through `urllib.request` only; it is contacted only when a URL is given.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from typing import Callable

import torch

from .errors import InputError, ZImageError

OFFICIAL_SYSTEM_PROMPT = """\
You are a prompt engineer for a text-to-image model. Rewrite the user's image request into one detailed, \
faithful image description that the model can render directly.

Rules:
1. The user's request is fixed. Keep every fact it gives exactly: subjects, their number, actions, poses, \
states, named people/characters/brands/places, colours, styles, and any text that must appear. Do not \
remove, replace or contradict anything, and do not add new main subjects.
2. If the request needs thinking before it can be drawn (a riddle, a question, a maths or logic problem, a \
design task, a location given by coordinates, "the answer to ..."), first work out a concrete, visual answer \
yourself and then describe that answer as the image. Never describe the question instead of the answer.
3. Enrich the description with what a painter or photographer would decide: composition and camera angle, \
the spatial layout (foreground, middle ground, background, left/right), lighting (source, direction, time \
of day), materials and surface textures, and the colour scheme.
4. Every piece of text that should be visible in the image (signs, posters, titles, labels, UI elements, \
captions) is copied verbatim inside English double quotes, e.g. the words "OPEN DAILY", and you describe \
its font or lettering style, colour, size and where it is placed. Never translate or change that text.
5. Be concrete and objective: describe what is visible. No metaphors, no emotional or poetic rhetoric, no \
quality or meta tags such as "8K", "masterpiece", "best quality", "ultra detailed", "trending".
6. Answer with the rewritten prompt only, as one flowing paragraph: no title, no preamble such as "Here is", \
no explanations, no lists, no quotes around the whole answer. Write in the same language as the user's \
request unless the user asks for another language."""

CONCISE_SYSTEM_PROMPT = """\
You are a prompt engineer for a text-to-image model. Rewrite the user's image request as one clear image \
description of two or three sentences (at most about 80 words). Keep every fact the user gave unchanged \
(subjects, counts, actions, names, colours, and any text to render, copied verbatim inside double quotes). \
If the request is a question or a puzzle, describe a concrete picture of its answer. Add only the most \
important details of composition, lighting and colour. Be concrete; no meta tags such as "8K" or \
"masterpiece". Answer with the rewritten prompt only, in the user's language, without any preamble."""

SYSTEM_PROMPTS: dict[str, str | None] = {
    "official": OFFICIAL_SYSTEM_PROMPT,
    "concise": CONCISE_SYSTEM_PROMPT,
    "custom": None,  # the user's own system prompt
}
PRESETS = tuple(SYSTEM_PROMPTS)

ProgressFn = Callable[[int, int], None]  # (tokens generated so far, max_new_tokens); may raise to interrupt


def system_prompt_for(preset: str, system_prompt: str | None = None) -> str:
    """The system prompt of a preset; `custom` uses `system_prompt`. A non-empty `system_prompt` given with
    another preset is ignored (the preset wins) so a stale text box cannot silently change the preset."""
    if preset not in SYSTEM_PROMPTS:
        raise InputError(f"unknown prompt enhancer preset '{preset}'; expected one of {', '.join(PRESETS)}.")
    if preset == "custom":
        if not system_prompt or not system_prompt.strip():
            raise InputError("preset 'custom' needs a system_prompt (the instructions for the rewriting model).")
        return system_prompt.strip()
    return SYSTEM_PROMPTS[preset]


CHAT_TEMPLATE = ("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
                 "<|im_start|>assistant\n<think>\n\n</think>\n\n")
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
TOP_K = 50  # transformers' default for sampling, kept so seeds give the same text as with `generate`


def build_chat(system: str, prompt: str) -> str:
    """The exact string the model sees: Qwen3's chat template for a system + user turn and the assistant
    header with thinking disabled (an empty `<think>\n\n</think>\n\n` block pre-filled)."""
    return CHAT_TEMPLATE.format(system=system, prompt=prompt)


def _stop_ids(tokenizer) -> list[int]:
    ids = [i for i in (tokenizer.token_to_id(t) for t in STOP_TOKENS) if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _unwrap(text_encoder):
    """A TextEncoder from a TextEncoder or a holder with `.encoder` (the ZIMAGE_TEXT_ENCODER object)."""
    return getattr(text_encoder, "encoder", text_encoder)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row of fp32 logits [B, V] the way transformers samples: temperature, top-k, top-p
    (smallest set with probability > top_p, at least one token), softmax, multinomial."""
    logits = logits / temperature
    kth = torch.topk(logits, min(TOP_K, logits.shape[-1])).values[..., -1:]
    logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -float("inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def generate_ids(text_encoder, chat: str, seed: int = 0, max_new_tokens: int = 512, temperature: float = 0.7,
                 top_p: float = 0.9, progress: ProgressFn | None = None, chunk: int = 8) -> list[int]:
    """Generate token ids after `chat` with the encoder's own Qwen3 (no copy) and a KV cache. Deterministic
    per seed (a private generator; the global RNG is not touched). `progress(done, max_new_tokens)` runs
    every `chunk` tokens and may raise (e.g. ComfyUI's interrupt) to stop generation. Stops at
    <|im_end|> / <|endoftext|>; the returned ids exclude the stop token."""
    te = _unwrap(text_encoder)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}.")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}.")
    model, tok = te.model, te.tokenizer
    device = model.model.embed_tokens.weight.device
    prompt = tok.encode(chat)
    n_real = len(tok)  # the embedding is padded past the tokenizer (Qwen3: 151936 rows, ~151669 tokens)
    stop = _stop_ids(tok)
    generator = torch.Generator(device).manual_seed(int(seed))
    new: list[int] = []
    with torch.inference_mode():
        cache = model.new_cache(1, len(prompt) + int(max_new_tokens))
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        for done in range(1, int(max_new_tokens) + 1):
            logits = model.next_logits(ids, cache)
            logits[:, n_real:] = -float("inf")
            nxt = logits.argmax(-1) if temperature == 0 else _sample(logits, temperature, top_p, generator)
            token = int(nxt[0])
            new.append(token)
            if progress is not None and (done % chunk == 0 or done >= max_new_tokens):
                progress(done, max_new_tokens)
            if token in stop:
                break
            ids = nxt[:, None]
    while new and new[-1] in stop:
        new.pop()
    return new


_THINK_CLOSED = re.compile(r"<think>.*?</think>", re.S | re.I)
_THINK_OPEN = re.compile(r"<think>.*\Z", re.S | re.I)
_SPECIAL = re.compile(r"<\|[a-z_]+\|>|</?think>", re.I)
_PREAMBLE = re.compile(
    r"\A\s*(?:\*\*)?(?:"
    r"(?:sure|okay|ok|certainly|of course)[!,.]?\s*(?:here(?:'s| is| are)[^\n:]*)?"
    r"|here(?:'s| is| are)[^\n:]*"
    r"|(?:the\s+)?(?:enhanced|rewritten|improved|refined|expanded|final|optimi[sz]ed|detailed)\s+(?:image\s+)?prompt"
    r"|prompt"
    r"|(?:优化后|改写后|扩写后|增强后)的?提示词"
    r")\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
    re.I)
_QUOTES = [('"', '"'), ("'", "'"), ("“", "”"), ("「", "」"), ("«", "»"), ("```", "```")]


def clean_output(text: str) -> str:
    """The bare rewritten prompt: think blocks (closed, or unclosed at the end) removed, a leading
    "Here is ..."/"Enhanced prompt:" line removed, special tokens removed, quotes/code fences wrapping the
    whole prompt removed, surrounding whitespace stripped."""
    text = _THINK_CLOSED.sub("", text)
    if "</think>" in text.lower():  # the opening tag was pre-filled in the chat: drop everything up to it
        text = text[text.lower().rfind("</think>") + len("</think>"):]
    text = _THINK_OPEN.sub("", text)
    text = _SPECIAL.sub("", text).strip()
    for _ in range(3):  # e.g. 'Here is the prompt:\n"..."' -> preamble, then quotes
        before = text
        m = _PREAMBLE.match(text)
        if m and text[m.end():].strip():
            text = text[m.end():].strip()
        for a, b in _QUOTES:
            if len(text) > len(a) + len(b) and text.startswith(a) and text.endswith(b):
                inner = text[len(a): len(text) - len(b)]
                if a == "```":
                    inner = re.sub(r"\A[a-z]*\n", "", inner)
                if a not in inner and b not in inner:  # '"A" and "B"' is not wrapped as a whole
                    text = inner.strip()
        if text == before:
            break
    return text


def enhance(text_encoder, prompt: str, preset: str = "official", system_prompt: str | None = None, seed: int = 0,
            max_new_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.9,
            progress: ProgressFn | None = None) -> str:
    """Rewrite `prompt` with the loaded Qwen3 text encoder (a TextEncoder, or an object with `.encoder`)."""
    if not prompt or not prompt.strip():
        raise InputError("the prompt to enhance is empty.")
    te = _unwrap(text_encoder)
    chat = build_chat(system_prompt_for(preset, system_prompt), prompt.strip())
    ids = generate_ids(te, chat, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       progress=progress)
    return clean_output(te.tokenizer.decode(ids, skip_special_tokens=False))


# -------------------------------------------------------------------------------------- HTTP endpoint

def _endpoint_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"\Ahttps?://", url, re.I):
        raise InputError(f"endpoint_url '{url}' must start with http:// or https:// "
                         "(e.g. http://127.0.0.1:11434/v1 for Ollama).")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def enhance_via_endpoint(url: str, model: str, system: str, prompt: str, timeout: float = 60,
                         api_key: str | None = None, seed: int | None = None, max_new_tokens: int | None = None,
                         temperature: float | None = None, top_p: float | None = None) -> str:
    """Rewrite `prompt` with an OpenAI-compatible chat endpoint (`.../v1/chat/completions`). `url` may be the
    full endpoint, a `/v1` base or a bare server address. Raises ZImageError on timeout, HTTP errors,
    unreachable servers and malformed replies."""
    if not prompt or not prompt.strip():
        raise InputError("the prompt to enhance is empty.")
    full = _endpoint_url(url)
    body = {"model": model or "", "stream": False,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}]}
    for key, value in (("seed", seed), ("max_tokens", max_new_tokens), ("temperature", temperature),
                       ("top_p", top_p)):
        if value is not None:
            body[key] = value
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(full, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = ""
        try:
            detail = e.read().decode("utf-8", "replace").strip()[:300]
        except Exception:
            pass
        raise ZImageError(f"prompt enhancer endpoint {full} answered HTTP {e.code} {e.reason}"
                          f"{': ' + detail if detail else ''}. Check the URL and the model name '{model}'.") from None
    except (TimeoutError, socket.timeout) as e:
        raise ZImageError(f"prompt enhancer endpoint {full} did not answer within {timeout} s ({e}).") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise ZImageError(f"prompt enhancer endpoint {full} did not answer within {timeout} s.") from None
        raise ZImageError(f"prompt enhancer endpoint {full} cannot be reached ({e.reason}); is the server "
                          "running?") from None
    except OSError as e:  # connection reset etc.
        raise ZImageError(f"prompt enhancer endpoint {full} failed ({type(e).__name__}: {e}).") from None
    try:
        data = json.loads(raw.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ZImageError(f"prompt enhancer endpoint {full} sent a reply that is not an OpenAI chat completion "
                          f"({type(e).__name__}: {e}); first bytes: {raw[:200]!r}.") from None
    return clean_output(content)
