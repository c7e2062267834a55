"""ZImagePromptEnhancer: rewrite a short prompt into a long, concrete one with the loaded Qwen3 text encoder
(no second model, no network), or optionally with an OpenAI-compatible chat endpoint."""

from __future__ import annotations

from ..zimage_core.prompt_enhancer import (
    PRESETS,
    enhance,
    enhance_via_endpoint,
    system_prompt_for,
)
from . import host

TOP_P = 0.9
ENDPOINT_TIMEOUT_S = 120


def _encoder(text_encoder):
    """The TextEncoder of a ZIMAGE_TEXT_ENCODER (loaded onto its device through ComfyUI) or a bare one."""
    if hasattr(text_encoder, "load") and hasattr(text_encoder, "encoder"):
        return text_encoder.load()
    return getattr(text_encoder, "encoder", text_encoder)


class ZImagePromptEnhancer:
    DESCRIPTION = ("Prompt enhancer: rewrites a short prompt into the long, detailed, concrete description Z-Image "
                   "Turbo works best with, keeping every fact you wrote (subjects, counts, colours, names, text to "
                   "render in double quotes) and adding composition, lighting, materials and colours. It runs on "
                   "the Qwen3 text encoder you already loaded (no extra download, nothing sent anywhere), or on a "
                   "local OpenAI-compatible server (Ollama, LM Studio) if you set endpoint_url. Wire the output into "
                   "ZImageTextEncode's text input (right-click it > convert to input). The result is cached: it is "
                   "only regenerated when the inputs of this node change.")
    CATEGORY = "Z-Image/conditioning"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("enhanced_prompt",)
    OUTPUT_TOOLTIPS = ("The rewritten prompt, for ZImageTextEncode's text input.",)
    FUNCTION = "enhance"
    OUTPUT_NODE = False

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": ("ZIMAGE_TEXT_ENCODER", {
                    "tooltip": "The Qwen3 text encoder from ZImageTextEncoderLoader; the same loaded weights write the "
                               "prompt and later encode it (no second copy in memory)."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "Your short prompt, e.g. 'a cat café poster that says OPEN LATE'. Every fact in it is "
                               "kept; text to appear in the image is best written in double quotes."}),
                "preset": (list(PRESETS), {
                    "default": "official",
                    "tooltip": "official: faithful, detailed rewrite in the spirit of Z-Image's own prompt enhancer. "
                               "concise: 2-3 sentences. custom: use your own system_prompt."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": "fixed",
                    "tooltip": "Seed of the text sampling: the same seed and inputs give the same rewrite. Independent "
                               "of the image seed, so changing the sampler seed does not rewrite the prompt."}),
                "max_new_tokens": ("INT", {
                    "default": 512, "min": 16, "max": 2048, "step": 16,
                    "tooltip": "Longest rewrite in tokens. The text encoder reads at most 512 tokens of prompt, so "
                               "more than ~450 is wasted."}),
                "temperature": ("FLOAT", {
                    "default": 0.7, "min": 0.0, "max": 2.0, "step": 0.05,
                    "tooltip": "Creativity of the rewrite. 0: always the single most likely text (seed ignored); "
                               "0.6-0.8: varied but faithful; above 1: increasingly random."}),
            },
            "optional": {
                "system_prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "Only for preset 'custom': the instructions given to the model (what to do with the "
                               "prompt). Ignored by the other presets."}),
                "endpoint_url": ("STRING", {
                    "default": "",
                    "tooltip": "Empty (default): run locally on the text encoder. Otherwise an OpenAI-compatible chat "
                               "server, e.g. http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:1234/v1 (LM "
                               "Studio); the prompt and system prompt are sent there. Nothing is contacted when "
                               "empty."}),
                "endpoint_model": ("STRING", {
                    "default": "",
                    "tooltip": "The model name on the endpoint server, e.g. 'qwen3:8b'. Only used with endpoint_url."}),
            },
        }

    def enhance(self, text_encoder, prompt, preset="official", seed=0, max_new_tokens=512, temperature=0.7,
                system_prompt="", endpoint_url="", endpoint_model=""):
        system = system_prompt_for(preset, system_prompt)
        if endpoint_url and endpoint_url.strip():
            host.check_interrupt()
            text = enhance_via_endpoint(endpoint_url, endpoint_model, system, prompt.strip(),
                                        timeout=ENDPOINT_TIMEOUT_S, seed=int(seed), max_new_tokens=int(max_new_tokens),
                                        temperature=float(temperature), top_p=TOP_P)
        else:
            encoder = _encoder(text_encoder)
            bar = host.progress(int(max_new_tokens))
            text = enhance(encoder, prompt, preset=preset, system_prompt=system_prompt, seed=int(seed),
                           max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=TOP_P,
                           progress=lambda done, total: bar.update(done))
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"ZImagePromptEnhancer": ZImagePromptEnhancer}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImagePromptEnhancer": "Z-Image Prompt Enhancer"}
