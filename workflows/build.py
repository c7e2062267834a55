#!/usr/bin/env python3
"""Builds the example workflows from the definitions in this file.

    python workflows/build.py           # (re)write the files
    python workflows/build.py --check   # exit 1 when a committed file differs from what this script makes

For each workflow it writes `workflows/<name>.json` (ComfyUI editor format, version 0.4: what ComfyUI's
template browser lists and the editor loads), `workflows/api/<name>.json` (API format: POST /prompt,
`python -m zimage_core.client`) and one entry of `workflows/meta/index.json` (see README.md).

A graph is defined once, with widget values by input name; the widget order of the editor format comes
from the nodes' INPUT_TYPES (the pack is imported like ComfyUI imports it) and, for ComfyUI's core nodes,
from the table in tests/workflow_support.py. tests/test_workflows.py checks the result independently.
"""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import workflow_support as ws

HF_TURBO = "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files"
HF_BASE = "https://huggingface.co/Comfy-Org/z_image/resolve/main/split_files"
MODELS = {  # Comfy-Org repackaged files, as users have them in ComfyUI/models/<directory>/
    "z_image_turbo_bf16.safetensors": ("diffusion_models", f"{HF_TURBO}/diffusion_models/z_image_turbo_bf16.safetensors"),
    "z_image_bf16.safetensors": ("diffusion_models", f"{HF_BASE}/diffusion_models/z_image_bf16.safetensors"),
    "qwen_3_4b.safetensors": ("text_encoders", f"{HF_TURBO}/text_encoders/qwen_3_4b.safetensors"),
    "ae.safetensors": ("vae", f"{HF_TURBO}/vae/ae.safetensors"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors": (
        "model_patches", "https://huggingface.co/alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.0/resolve/main/"
                         "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors"),
    "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8steps.safetensors": (
        "model_patches", "https://huggingface.co/alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1/resolve/main/"
                         "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8steps.safetensors"),
}
CONTROLNET = "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors"
CONTROLNET_TILE = "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8steps.safetensors"
TURBO, BASE, TE, VAE = "z_image_turbo_bf16.safetensors", "z_image_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors"
BASE_GGUF = "z_image-Q8_0.gguf"  # a GGUF of the base model (placeholder name: any Z-Image GGUF works)
DATASET_FOLDER = "zimage_lora_dataset"  # a folder in ComfyUI/input/
MODEL_INPUTS = {"dit_name": "diffusion_models", "text_encoder_name": "text_encoders", "vae_name": "vae",
                "lora_name": "loras", "lora_1": "loras", "lora_2": "loras", "lora_3": "loras", "lora_4": "loras",
                "controlnet_name": "model_patches"}

GAP_X, GAP_Y, TITLE_H = 60, 50, 30
GROUP_PAD, GROUP_TITLE = 15, 45
NOTE_COLOR, NOTE_BG = "#432", "#653"


# ------------------------------------------------------------------------------------------------ model

class Node:
    def __init__(self, graph, nid, type_, col, title, widgets, inputs, size, control, note):
        self.graph, self.id, self.type, self.col, self.title = graph, nid, type_, col, title
        self.widgets, self.inputs, self.size, self.control, self.note = widgets, inputs, size, control, note
        self.pos = None

    def __getitem__(self, slot: int):
        return (self, slot)


class Graph:
    def __init__(self, name, title, description, tags=(), default=False):
        self.name, self.title, self.description, self.tags, self.default = name, title, description, list(tags), default
        self.nodes: list[Node] = []
        self.groups: list[tuple[str, int, str]] = []

    def add(self, type_, col, title=None, widgets=None, inputs=None, size=(320, 100), control=None):
        n = Node(self, len(self.nodes) + 1, type_, col, title, dict(widgets or {}), dict(inputs or {}), list(size),
                 control, note=False)
        self.nodes.append(n)
        return n

    def note(self, col, title, text, size=(420, 400)):
        n = Node(self, len(self.nodes) + 1, "MarkdownNote", col, title, {"text": text.strip() + "\n"}, {}, list(size),
                 None, note=True)
        self.nodes.append(n)
        return n

    def group(self, title, col, color="#3f789e"):
        self.groups.append((title, col, color))


# ----------------------------------------------------------------------------------------------- render

def _layout(g: Graph) -> None:
    cols = sorted({n.col for n in g.nodes})
    x = 0
    for c in cols:
        members = [n for n in g.nodes if n.col == c]
        y = 0
        for n in members:
            n.pos = [x, y]
            y += n.size[1] + TITLE_H + GAP_Y
        x += max(n.size[0] for n in members) + GAP_X


def _order(g: Graph) -> dict[int, int]:
    """Execution order like LiteGraph's computeExecutionOrder: sources first, ties by id."""
    deps = {n.id: {src.id for src, _ in n.inputs.values()} for n in g.nodes}
    order, done = {}, set()
    while len(done) < len(deps):
        ready = sorted(nid for nid, d in deps.items() if nid not in done and d <= done)
        for nid in ready:
            order[nid] = len(order)
            done.add(nid)
    return order


def render(g: Graph, mappings: dict, display_names: dict) -> tuple[dict, dict]:
    """(editor-format workflow, API-format prompt) of a graph."""
    _layout(g)
    order = _order(g)
    specs = {n.id: ws.node_spec(n.type, mappings, display_names) for n in g.nodes}
    links, link_of = [], {}
    for n in g.nodes:  # link ids in node order, then input order
        for inp in specs[n.id].inputs:
            if inp.name in n.inputs:
                src, slot = n.inputs[inp.name]
                lid = len(links) + 1
                links.append([lid, src.id, slot, n.id, None, specs[src.id].outputs[slot][1]])
                link_of[(n.id, inp.name)] = lid

    ui_nodes, api = [], {}
    for n in g.nodes:
        spec = specs[n.id]
        unknown = (set(n.widgets) | set(n.inputs)) - {i.name for i in spec.inputs}
        assert not unknown, f"{g.name}: {n.type} has no input {unknown}"
        ui_inputs = []
        for inp in spec.inputs:
            if inp.is_widget and inp.name not in n.inputs:
                continue
            entry = {"localized_name": inp.name, "name": inp.name, "type": inp.type}
            if inp.is_widget:
                entry["widget"] = {"name": inp.name}
            entry["link"] = link_of.get((n.id, inp.name))
            if entry["link"] is not None:
                links[entry["link"] - 1][4] = len(ui_inputs)
            elif inp.required:
                raise AssertionError(f"{g.name}: {n.type}.{inp.name} is required and not connected")
            ui_inputs.append(entry)
        ui_outputs = [{"localized_name": name, "name": name, "type": typ,
                       "links": [lk[0] for lk in links if lk[1] == n.id and lk[2] == slot]}
                      for slot, (name, typ) in enumerate(spec.outputs)]
        values, api_inputs = [], {}
        for w in ws.frontend_widgets(spec):
            if w.input is None:
                values.append(n.control if (w.name == "control_after_generate" and n.control) else w.default)
                continue
            v = n.widgets.get(w.input, w.default)
            assert v is not None, f"{g.name}: {n.type}.{w.input} needs a value"
            values.append(v)
            if spec.input(w.input).opts.get("dynamicPrompts"):
                assert ws.process_dynamic_prompt(v) == v, f"{g.name}: dynamic-prompt syntax in {n.type}.{w.input}"
            if w.input not in n.inputs:
                api_inputs[w.input] = v
        for inp in spec.inputs:
            if inp.name in n.inputs:
                src, slot = n.inputs[inp.name]
                api_inputs[inp.name] = [str(src.id), slot]
        title = n.title or spec.display
        node = {"id": n.id, "type": n.type, "pos": n.pos, "size": n.size, "flags": {}, "order": order[n.id],
                "mode": 0, "inputs": ui_inputs, "outputs": ui_outputs}
        if n.title and n.title != spec.display:
            node["title"] = n.title
        props = {} if n.note else {"Node name for S&R": n.type}
        models = [{"name": v, "url": MODELS[v][1], "directory": MODELS[v][0]}
                  for k, v in n.widgets.items() if k in MODEL_INPUTS and v in MODELS]
        if models:
            props["models"] = models
        node["properties"] = props
        node["widgets_values"] = values
        if n.note:
            node["color"], node["bgcolor"] = NOTE_COLOR, NOTE_BG
        ui_nodes.append(node)
        if not spec.virtual:
            api[str(n.id)] = {"inputs": api_inputs, "class_type": n.type, "_meta": {"title": title}}

    groups = []
    for i, (title, col, color) in enumerate(g.groups, 1):
        members = [n for n in g.nodes if n.col == col]
        x0 = min(n.pos[0] for n in members) - GROUP_PAD
        y0 = min(n.pos[1] for n in members) - TITLE_H - GROUP_TITLE
        x1 = max(n.pos[0] + n.size[0] for n in members) + GROUP_PAD
        y1 = max(n.pos[1] + n.size[1] for n in members) + GROUP_PAD
        groups.append({"id": i, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                       "font_size": 24, "flags": {}})

    ui = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"zimage-nodes/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": max(n.id for n in g.nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.65, "offset": [120, 220]}},
        "version": 0.4,
    }
    return ui, api


def index_entry(g: Graph) -> dict:
    models = []
    for n in g.nodes:
        for k, v in n.widgets.items():
            if k in MODEL_INPUTS and v != "None" and not any(m["name"] == v for m in models):
                m = {"name": v, "directory": MODEL_INPUTS[k]}
                if v in MODELS:
                    m["url"] = MODELS[v][1]
                models.append(m)
    e = {"name": g.name, "title": g.title, "description": g.description, "ui": f"{g.name}.json",
         "api": f"api/{g.name}.json", "models": models, "tags": g.tags}
    if g.default:
        e["default"] = True
    return e


# ------------------------------------------------------------------------------------------ the graphs

FOX = ("Photograph of a red fox sitting in fresh snow at sunrise. Warm golden light grazes its thick winter fur "
       "and the frost on its whiskers, its breath is visible in the cold air. A snow-covered pine forest is softly "
       "out of focus behind it, long blue shadows lie across the snow. Shot at eye level on a 300mm telephoto lens, "
       "shallow depth of field, natural colours, crisp fine detail.")
MODELS_MD = """
**Models** (Comfy-Org repack, in `ComfyUI/models/`):
- `diffusion_models/{dit}`
- `text_encoders/qwen_3_4b.safetensors` (its tokenizer ships with ComfyUI)
- `vae/ae.safetensors` (the Flux VAE)
"""


def loaders(g: Graph, dit=TURBO, col=1, te_device="default", weight_dtype="auto", memory="auto"):
    d = g.add("ZImageDiTLoader", col, "Load Z-Image DiT",
              {"dit_name": dit, "weight_dtype": weight_dtype, "memory": memory}, size=(340, 130))
    t = g.add("ZImageTextEncoderLoader", col, "Load Qwen3 Text Encoder",
              {"text_encoder_name": TE, "dtype": "auto", "device": te_device}, size=(340, 130))
    return d, t


def vae_loader(g: Graph, col=1):
    return g.add("ZImageVAELoader", col, "Load Flux VAE", {"vae_name": VAE}, size=(340, 60))


def prompt(g: Graph, te, text, col=2, title="Prompt", size=(440, 230), link=None):
    return g.add("ZImageTextEncode", col, title, {"text": "" if link else text},
                 {"text_encoder": te[0], **({"text": link} if link else {})}, size=size)


def sampler(g: Graph, dit, pos, latent, col, seed=42, steps=8, cfg=1.0, denoise=1.0, negative=None,
            control="randomize", title="Z-Image Sampler"):
    inputs = {"dit": dit, "positive": pos[0], "latent": latent[0]}
    if negative is not None:
        inputs["negative"] = negative[0]
    return g.add("ZImageSampler", col, title,
                 {"seed": seed, "steps": steps, "cfg": cfg, "shift": 3.0, "denoise": denoise,
                  "cfg_truncation": 1.0, "cfg_normalization": 0.0, "sampler_name": "euler", "scheduler": "zimage"},
                 inputs, size=(340, 380), control=control)


def decode_save(g: Graph, vae, samp, col, prefix):
    d = g.add("ZImageVAEDecode", col, "Decode", {"tiled": False}, {"vae": vae[0], "latent": samp[0]}, size=(340, 80))
    s = g.add("SaveImage", col + 1, "Save Image", {"filename_prefix": prefix}, {"images": d[0]}, size=(520, 560))
    return d, s


def turbo_t2i() -> Graph:
    g = Graph("turbo_t2i", "Z-Image-Turbo: text to image",
              "The default Z-Image graph: Z-Image-Turbo, 8 steps at cfg 1, 1024x1024. Loaders for the DiT, the "
              "Qwen3 text encoder and the Flux VAE, one prompt, the Z-Image sampler, decode and save.",
              tags=["text-to-image", "turbo"], default=True)
    g.note(0, "About this workflow", f"""
## Z-Image-Turbo: text to image

The everyday Z-Image graph. Turbo is distilled: **8 steps, cfg 1.0, shift 3** and no negative prompt.
{MODELS_MD.format(dit=TURBO)}
**Tips**
- Turbo likes long, concrete prompts: subject, setting, light, lens, colours. English or Chinese; text to
  render goes in double quotes.
- Any size that is a multiple of 16 works; the official ones are in the Empty Latent's *resolution* list.
- The seed is randomised after each run; set *control after generate* to `fixed` to keep a picture.
- Low on VRAM? Set the DiT loader's *weight_dtype* to `fp8_e4m3fn` or *memory* to `8GB`.
""", size=(420, 520))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    pos = prompt(g, te, FOX)
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, dit[0], pos, lat, 3)
    decode_save(g, vae, samp, 3, "z-image-turbo")
    return g


def base_cfg() -> Graph:
    g = Graph("base_cfg", "Z-Image (Base): CFG with a negative prompt",
              "The undistilled Z-Image base model: 28 steps, cfg 4 and a real negative prompt, at 1216x832. "
              "Slower than Turbo but more varied and more responsive to negatives and styles.",
              tags=["text-to-image", "base", "cfg"])
    g.note(0, "About this workflow", f"""
## Z-Image (Base): CFG and a negative prompt

The base model is not distilled: it needs **~25-50 steps and cfg 3-5**, and it reads a **negative prompt**
(every step runs twice, so it is about 2x slower per step than Turbo).
{MODELS_MD.format(dit=BASE)}
**Tips**
- *cfg_truncation* below 1.0 (e.g. 0.9) skips guidance on the last steps; *cfg_normalization* 1.0 tames
  over-saturated colours at high cfg.
- The resolution preset `1216x832 (3:2)` overrides width/height; pick `custom` to type your own.
""", size=(420, 440))
    dit, te = loaders(g, dit=BASE)
    vae = vae_loader(g)
    g.group("Models", 1)
    pos = prompt(g, te, "Cinematic photograph of an old lighthouse keeper in a yellow raincoat standing on wet black "
                        "rocks during a storm, huge waves breaking behind him, the lighthouse beam cutting through rain "
                        "and sea spray, dramatic overcast sky, muted teal and amber colour grade, 35mm film grain.",
                 title="Positive Prompt")
    neg = prompt(g, te, "blurry, out of focus, low quality, jpeg artifacts, oversaturated, cartoon, 3d render, "
                        "deformed hands, extra fingers, watermark, signature, text",
                 title="Negative Prompt", size=(440, 160))
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "1216x832 (3:2)", "width": 1216, "height": 832, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, dit[0], pos, lat, 3, seed=1234, steps=28, cfg=4.0, negative=neg)
    decode_save(g, vae, samp, 3, "z-image-base")
    return g


def prompt_enhancer_turbo() -> Graph:
    g = Graph("prompt_enhancer_turbo", "Prompt enhancer + Z-Image-Turbo",
              "A short idea is rewritten into a long, detailed prompt by the Qwen3 text encoder that is already "
              "loaded (no extra model, nothing sent anywhere), then encoded and rendered with Turbo.",
              tags=["text-to-image", "turbo", "prompt-enhancer"])
    g.note(0, "About this workflow", f"""
## Prompt enhancer + Turbo

**Z-Image Prompt Enhancer** turns a short idea into the long, concrete description Turbo works best
with. It runs on the **same Qwen3 text encoder** that encodes the prompt: no second model.
Its output is wired into the *text* input of **Z-Image Text Encode**.
{MODELS_MD.format(dit=TURBO)}
**Tips**
- The rewrite is cached: it only runs again when the enhancer's inputs change, so changing the image
  seed does not rewrite the prompt. Change the enhancer's *seed* for another rewrite.
- *preset* `concise` gives 2-3 sentences; `custom` uses your own *system_prompt*.
- *endpoint_url* (e.g. `http://127.0.0.1:11434/v1` for Ollama) uses a local chat server instead.
""", size=(420, 560))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    enh = g.add("ZImagePromptEnhancer", 2, "Prompt Enhancer",
                {"prompt": 'a cat cafe poster that says "OPEN LATE"', "preset": "official", "seed": 0,
                 "max_new_tokens": 512, "temperature": 0.7, "system_prompt": "", "endpoint_url": "",
                 "endpoint_model": ""}, {"text_encoder": te[0]}, size=(440, 460), control="fixed")
    pos = prompt(g, te, "", col=3, title="Encode Enhanced Prompt", size=(340, 150), link=enh[0])
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "832x1216 (2:3)", "width": 832, "height": 1216, "batch_size": 1}, size=(340, 160))
    samp = sampler(g, dit[0], pos, lat, 4, seed=7)
    decode_save(g, vae, samp, 4, "z-image-enhanced")
    return g


def lora_stack() -> Graph:
    g = Graph("lora_stack", "LoRAs with Z-Image-Turbo",
              "Z-Image LoRAs applied between the DiT loader and the sampler: one LoRA Loader, then a LoRA Stack "
              "with more slots, each with its own strength and on/off switch. Files go in models/loras.",
              tags=["text-to-image", "turbo", "lora"])
    g.note(0, "About this workflow", f"""
## LoRAs

Put Z-Image LoRA files in `ComfyUI/models/loras/` and pick them in the nodes below (the names here are
placeholders). Every common format works: diffusers/PEFT, ai-toolkit, kohya/musubi, ComfyUI-native, LoKr.
LoRAs made for SDXL or Flux are refused with a message.

- **LoRA Loader**: one LoRA and its strength (1.0 as trained, 0.5-0.8 for a lighter touch).
- **LoRA Stack**: up to four; `None`, *enabled* off or strength 0 skip a slot.

LoRAs are applied as runtime patches: changing a strength does not reload the DiT.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 520))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    l1 = g.add("ZImageLoraLoader", 2, "Style LoRA",
               {"lora_name": "my_style_lora.safetensors", "strength": 0.8}, {"dit": dit[0]}, size=(360, 110))
    l2 = g.add("ZImageLoraStack", 2, "More LoRAs",
               {"lora_1": "my_detail_lora.safetensors", "strength_1": 0.6, "enabled_1": True,
                "lora_2": "my_character_lora.safetensors", "strength_2": 1.0, "enabled_2": False,
                "lora_3": "None", "strength_3": 1.0, "enabled_3": True,
                "lora_4": "None", "strength_4": 1.0, "enabled_4": True}, {"dit": l1[0]}, size=(360, 340))
    g.group("LoRAs", 2, color="#8a5a8a")
    pos = prompt(g, te, "Watercolour illustration of a small harbour town at dusk, pastel houses stacked up a steep "
                        "hill, fishing boats with reflections in calm water, warm lamps in the windows, loose "
                        "brushwork and paper texture.", col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, l2[0], pos, lat, 4, seed=99)
    decode_save(g, vae, samp, 4, "z-image-lora")
    return g


def img2img() -> Graph:
    g = Graph("img2img", "Image to image with Z-Image-Turbo",
              "An uploaded picture is encoded with the Flux VAE and re-rendered by Turbo at denoise 0.6: "
              "composition and colours are kept, the prompt sets the new look.",
              tags=["image-to-image", "turbo"])
    g.note(0, "About this workflow", f"""
## Image to image

**Load Image** -> **Z-Image VAE Encode** -> sampler with **denoise < 1**.
*denoise* is how much is repainted: 0.3 keeps nearly everything, 0.6 keeps the composition,
0.9 keeps only rough colours. 8 steps at denoise 0.6 run the last 8 steps of a 13-step schedule
(as KSampler does).

The output has the size of the input image (cropped to multiples of 16).
{MODELS_MD.format(dit=TURBO)}""", size=(420, 440))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    img = g.add("LoadImage", 2, "Input Image", {"image": "example.png"}, size=(440, 420))
    enc = g.add("ZImageVAEEncode", 2, "Encode Image", {"tiled": False}, {"vae": vae[0], "image": img[0]},
                size=(440, 80))
    pos = prompt(g, te, "Oil painting in the style of the Dutch golden age, rich dark background, soft window light "
                        "from the left, visible brush strokes and craquelure, warm earthy palette.", col=3)
    samp = sampler(g, dit[0], pos, enc, 4, seed=5, denoise=0.6)
    decode_save(g, vae, samp, 4, "z-image-img2img")
    return g


def inpaint() -> Graph:
    g = Graph("inpaint", "Inpainting with Z-Image-Turbo",
              "Repaint part of a picture: the mask painted on the image in ComfyUI's mask editor becomes a latent "
              "noise mask (native Set Latent Noise Mask); only the masked area is regenerated.",
              tags=["inpainting", "turbo"])
    g.note(0, "About this workflow", f"""
## Inpainting

1. Load a picture, right-click **Input Image** > *Open in MaskEditor* and paint the area to change.
2. Describe what should be there in the prompt (describe the whole picture, not only the hole).

The image's MASK goes through native **Set Latent Noise Mask** into the sampler: masked latent cells are
regenerated, the rest is kept exactly. *denoise* 0.85-1.0 replaces the content; lower values keep more
of the original colours under the mask.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 460))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    img = g.add("LoadImage", 2, "Input Image (paint the mask)", {"image": "example.png"}, size=(440, 420))
    enc = g.add("ZImageVAEEncode", 2, "Encode Image", {"tiled": False}, {"vae": vae[0], "image": img[0]},
                size=(440, 80))
    mask = g.add("SetLatentNoiseMask", 2, "Set Latent Noise Mask", inputs={"samples": enc[0], "mask": img[1]},
                 size=(440, 50))
    g.group("Image and mask", 2, color="#88a")
    pos = prompt(g, te, "A sunlit kitchen table with a blue ceramic bowl full of ripe lemons, a linen cloth and a "
                        "glass of water, soft morning light, photograph.", col=3)
    samp = sampler(g, dit[0], pos, mask, 4, seed=11, denoise=0.85)
    decode_save(g, vae, samp, 4, "z-image-inpaint")
    return g


def adaln_variety() -> Graph:
    g = Graph("adaln_variety", "Detail and seed variety controls (adaLN)",
              "Turbo with the pack's adaLN controls: Detail (more or less fine detail), Scale (strength of "
              "chosen blocks) and Conditioning Variance, which brings back seed-to-seed variety in composition.",
              tags=["text-to-image", "turbo", "adaln", "variety"])
    g.note(0, "About this workflow", f"""
## Detail and variety controls

These nodes sit between the DiT loader and the sampler and change how the model is conditioned,
without extra models or steps:

- **adaLN Detail**: tells the modulation a slightly later time in the middle of the schedule.
  `amount` 0.1 adds fine detail, -0.1 smooths; 0 = off.
- **adaLN Scale**: multiplies the modulation of a block range (here the last 10 main layers,
  texture). 1.0 = off, stay within 0.9-1.1.
- **Conditioning Variance**: Turbo gives very similar compositions for different seeds. Noise on the
  prompt tokens in the first 30% of the steps restores variety; its own seed picks the variation.
- **Conditioning Combine**: joins a subject prompt and a separate style prompt (`concat`: the model
  reads both; `average`: a token-wise blend weighted by *weight*), so the style can be swapped alone.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 620))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    a = g.add("ZImageAdaLNDetail", 2, "adaLN Detail", {"amount": 0.1, "start": 0.2, "end": 0.8}, {"dit": dit[0]},
              size=(340, 130))
    b = g.add("ZImageAdaLNScale", 2, "adaLN Scale (late blocks)",
              {"scale": 1.05, "gate": 1.0, "first_block": 20, "last_block": -1, "include_refiner": False},
              {"dit": a[0]}, size=(340, 180))
    c = g.add("ZImageConditioningVariance", 2, "Seed Variety",
              {"strength": 0.3, "until": 0.3, "seed": 2024}, {"dit": b[0]}, size=(340, 150), control="randomize")
    g.group("Detail and variety", 2, color="#8a8a5a")
    subject = prompt(g, te, "A lone hiker with a red backpack on a mountain ridge above a sea of clouds, early "
                            "morning, jagged peaks in the distance, crisp alpine air.", col=3, title="Subject Prompt",
                     size=(440, 170))
    style = prompt(g, te, "Wide-angle landscape photograph, soft golden light, muted film colours, fine grain.",
                   col=3, title="Style Prompt", size=(440, 150))
    pos = g.add("ZImageConditioningCombine", 3, "Subject + Style", {"mode": "concat", "weight": 0.5},
                {"conditioning_a": subject[0], "conditioning_b": style[0]}, size=(440, 110))
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "1216x832 (3:2)", "width": 1216, "height": 832, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, c[0], pos, lat, 4, seed=3)
    decode_save(g, vae, samp, 4, "z-image-variety")
    return g


def native_mixed() -> Graph:
    g = Graph("native_mixed", "Z-Image nodes mixed with native ComfyUI nodes",
              "The Z-Image sampler inside a graph of native ComfyUI nodes: EmptySD3LatentImage, ConditioningZeroOut "
              "as the negative, and the native VAE Loader + VAE Decode on ae.safetensors. LATENT and CONDITIONING "
              "are interchangeable between the pack and ComfyUI.",
              tags=["text-to-image", "turbo", "interop"])
    g.note(0, "About this workflow", f"""
## Mixing with native ComfyUI nodes

The pack's LATENT (raw Flux-VAE space, 16 channels) and CONDITIONING are ComfyUI's own formats, so native
nodes plug in directly:

- native **EmptySD3LatentImage** makes the starting latent,
- native **ConditioningZeroOut** of the prompt is the negative (only used when *cfg* is above 1, e.g. 4
  with the base model),
- native **Load VAE** + **VAE Decode** decode the sampler's latent with `ae.safetensors`.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 440))
    dit, te = loaders(g)
    vae = g.add("VAELoader", 1, "Load VAE (native)", {"vae_name": VAE}, size=(340, 60))
    g.group("Models", 1)
    pos = prompt(g, te, "Isometric miniature diorama of a tiny bookshop on a rainy street corner, warm light spilling "
                        "from the windows, wet cobblestones, tilt-shift photograph, soft pastel colours.")
    zero = g.add("ConditioningZeroOut", 2, "Negative (zeroed prompt)", inputs={"conditioning": pos[0]},
                 size=(440, 30))
    lat = g.add("EmptySD3LatentImage", 2, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1},
                size=(440, 110))
    samp = sampler(g, dit[0], pos, lat, 3, seed=21, negative=zero)
    dec = g.add("VAEDecode", 3, "VAE Decode (native)", inputs={"samples": samp[0], "vae": vae[0]}, size=(340, 50))
    g.add("SaveImage", 4, "Save Image", {"filename_prefix": "z-image-native"}, {"images": dec[0]}, size=(520, 560))
    return g


def ksampler_bridge() -> Graph:
    g = Graph("ksampler_bridge", "Z-Image DiT with a LoRA into the native KSampler",
              "The pack's DiT Loader and LoRA Loader, handed to ComfyUI as a MODEL by Z-Image DiT to MODEL, then the "
              "native ModelSamplingAuraFlow (shift 3) and KSampler with res_multistep, as in ComfyUI's Z-Image "
              "template. Any node that takes a MODEL can take its place.",
              tags=["text-to-image", "turbo", "lora", "interop"])
    g.note(0, "About this workflow", f"""
## The pack's model in native nodes

**Z-Image DiT to MODEL** turns the DiT (with the LoRA attached before it) into a native ComfyUI MODEL:
KSampler, KSamplerAdvanced, SamplerCustomAdvanced, LoraLoaderModelOnly, DifferentialDiffusion and other
packs' nodes take it. The LoRA name is a placeholder: put a Z-Image LoRA in `ComfyUI/models/loras/`.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 440))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    lora = g.add("ZImageLoraLoader", 2, "Style LoRA",
                 {"lora_name": "my_style_lora.safetensors", "strength": 0.8}, {"dit": dit[0]}, size=(360, 110))
    model = g.add("ZImageDiTToModel", 2, "DiT to MODEL", inputs={"dit": lora[0]}, size=(360, 50))
    shift = g.add("ModelSamplingAuraFlow", 2, "ModelSamplingAuraFlow", {"shift": 3.0}, {"model": model[0]},
                  size=(360, 60))
    pos = prompt(g, te, "A lighthouse on a rocky cliff under a starry sky, long exposure photograph, the beam "
                        "sweeping over a calm sea, faint aurora on the horizon.", col=3)
    zero = g.add("ConditioningZeroOut", 3, "Negative (zeroed prompt)", inputs={"conditioning": pos[0]},
                 size=(440, 30))
    lat = g.add("EmptySD3LatentImage", 3, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1},
                size=(440, 110))
    samp = g.add("KSampler", 4, "KSampler",
                 {"seed": 7, "steps": 8, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple",
                  "denoise": 1.0},
                 {"model": shift[0], "positive": pos[0], "negative": zero[0], "latent_image": lat[0]},
                 size=(360, 260), control="randomize")
    decode_save(g, vae, samp, 4, "z-image-ksampler")
    return g


def low_vram_fast() -> Graph:
    g = Graph("low_vram_fast", "Z-Image-Turbo on an 8 GB GPU: fp8, block streaming, torch.compile",
              "Z-Image-Turbo at 1024x1024 within 8 GB of VRAM: fp8 weights, the DiT loader's 8GB memory preset "
              "(blocks that do not fit are streamed from pinned CPU memory), the text encoder on the CPU, and "
              "torch.compile of the transformer blocks.",
              tags=["text-to-image", "turbo", "low-vram", "speed"])
    g.note(0, "About this workflow", f"""
## Z-Image-Turbo on a small GPU

- **weight_dtype `fp8_e4m3fn`** halves the DiT (5.7 GiB instead of 11.5 GiB) at a small quality cost.
- **memory `8GB`** keeps as many of the 34 transformer blocks on the GPU as fit 8 GB (with 2 GiB left for
  the activations) and streams the others from pinned CPU memory while the previous block computes. With
  fp8 the whole DiT fits 8 GB, so nothing is streamed; with bf16, 15 blocks stay. `6GB` / `12GB` work the
  same way; `auto` decides from your card.
- **Text encoder on the CPU** keeps the 8 GB of Qwen3-4B off the GPU (encoding a prompt takes a few
  seconds on the CPU).
- **Torch Compile** compiles the blocks on the first run (tens of seconds; again for a new size), then
  steps are faster. Remove it if your setup has no Triton.
- The decoder tiles by itself when the image would not fit in free memory.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 560))
    dit, te = loaders(g, te_device="cpu", weight_dtype="fp8_e4m3fn", memory="8GB")
    vae = vae_loader(g)
    g.group("Models", 1)
    fast = g.add("ZImageTorchCompile", 2, "Torch Compile", {"mode": "default", "dynamic": False}, {"dit": dit[0]},
                 size=(360, 110))
    pos = prompt(g, te, FOX)
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, fast[0], pos, lat, 3, seed=7)
    decode_save(g, vae, samp, 3, "z-image-8gb")
    return g


def controlnet_models(g: Graph, controlnet: str = CONTROLNET, title: str = "Load ControlNet"):
    """The DiT, text encoder, VAE and ControlNet loaders in the Models group: (dit, te, vae, controlnet)."""
    dit, te = loaders(g)
    vae = vae_loader(g)
    cn = g.add("ZImageControlNetLoader", 1, title, {"controlnet_name": controlnet, "weight_dtype": "auto"},
               size=(340, 90))
    g.group("Models", 1)
    return dit, te, vae, cn


def controlnet_canny() -> Graph:
    g = Graph("controlnet_canny", "ControlNet (canny) with Z-Image-Turbo",
              "The edges of an uploaded picture (native Canny node) steer Z-Image-Turbo through the ControlNet Union "
              "(alibaba-pai Fun-Controlnet-Union): the layout is kept, the prompt sets everything else.",
              tags=["controlnet", "turbo"])
    g.note(0, "About this workflow", f"""
## ControlNet Union: canny edges

**Load Image** -> native **Canny** -> **Z-Image ControlNet Apply** -> sampler. Any preprocessor works the
same way (depth, pose, scribble, a gray or blurred picture for tile); chain a second Apply node to stack
two controls, each with its own strength and range.

- *strength* 0.65-0.9 for Turbo; *end_percent* below 1 frees the last steps for detail.
- The control image is resized to the generated size.
- The hints act on the whole image+caption sequence as in the reference (diffusers / VideoX-Fun); ComfyUI's
  native ZImageFunControlnet adds them to image tokens only, so its pictures differ.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET}` (1.0, 2.1, lite and tile files load the same way)
""", size=(420, 560))
    dit, te, vae, cn = controlnet_models(g)
    img = g.add("LoadImage", 2, "Control Picture", {"image": "example.png"}, size=(440, 420))
    edges = g.add("Canny", 2, "Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": img[0]},
                  size=(440, 90))
    g.group("Control image", 2, color="#88a")
    pos = prompt(g, te, "A cozy reading nook by a tall window, a green velvet armchair, stacks of old books and a "
                        "brass lamp, late afternoon light, photograph.", col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    ctl = g.add("ZImageControlNetApply", 3, "ControlNet Apply",
                {"strength": 0.75, "start_percent": 0.0, "end_percent": 1.0},
                {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": edges[0]}, size=(440, 190))
    samp = sampler(g, ctl[0], pos, lat, 4, seed=3)
    decode_save(g, vae, samp, 4, "z-image-controlnet")
    return g


def controlnet_depth_pose() -> Graph:
    g = Graph("controlnet_depth_pose", "Two ControlNets stacked: depth + pose",
              "A depth map and a pose skeleton steer Z-Image-Turbo together: two Z-Image ControlNet Apply nodes are "
              "chained, their hints add up, each with its own strength and range.",
              tags=["controlnet", "turbo"])
    g.note(0, "About this workflow", f"""
## Stacked controls: depth + pose

Two **Z-Image ControlNet Apply** nodes in a chain, both with the same Union file (it knows canny, depth,
pose, MLSD, HED, scribble and gray). Their hints are summed in every step; each keeps its own
*strength* and *start/end percent*.

- **Depth Map** and **Pose Skeleton**: load pictures made by any preprocessor (a depth estimator, an
  OpenPose renderer; no annotator models are bundled). They are resized to the generated size.
- Depth (0.55, whole schedule) sets the space; pose (0.6, until 0.8) sets the figure and leaves the last
  steps free for detail. Keep the sum of the strengths below about 1.3 for Turbo.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET}` (any Union file: 1.0, 2.1, lite)
""", size=(420, 560))
    dit, te, vae, cn = controlnet_models(g)
    depth = g.add("LoadImage", 2, "Depth Map", {"image": "example.png"}, size=(440, 420))
    pose = g.add("LoadImage", 2, "Pose Skeleton", {"image": "example.png"}, size=(440, 420))
    g.group("Control images", 2, color="#88a")
    pos = prompt(g, te, "A dancer in a flowing red dress mid-spin on an empty theatre stage, a single spotlight, dust "
                        "in the light beam, photograph.", col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    c1 = g.add("ZImageControlNetApply", 3, "ControlNet Apply (depth)",
               {"strength": 0.55, "start_percent": 0.0, "end_percent": 1.0},
               {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": depth[0]}, size=(440, 190))
    c2 = g.add("ZImageControlNetApply", 3, "ControlNet Apply (pose)",
               {"strength": 0.6, "start_percent": 0.0, "end_percent": 0.8},
               {"dit": c1[0], "controlnet": cn[0], "vae": vae[0], "image": pose[0]}, size=(440, 190))
    samp = sampler(g, c2[0], pos, lat, 4, seed=21)
    decode_save(g, vae, samp, 4, "z-image-depth-pose")
    return g


def controlnet_inpaint() -> Graph:
    g = Graph("controlnet_inpaint", "Inpainting with a ControlNet (2.0+ inpaint input)",
              "Repaint the masked part of a picture while the ControlNet keeps its structure: the Union 2.x file gets "
              "the picture and the mask through its inpaint input, the latent noise mask keeps the rest exactly.",
              tags=["controlnet", "inpainting", "turbo"])
    g.note(0, "About this workflow", f"""
## Inpainting with the ControlNet's inpaint input

1. Load a picture, right-click **Input Image** > *Open in MaskEditor*, paint the area to change.
2. Describe the whole picture in the prompt.

The picture and its mask go twice into the graph:
- into **Z-Image ControlNet Apply** as `inpaint_image` / `inpaint_mask` (the 33-channel 2.0+ files read
  control latent + keep mask + masked picture, as diffusers' `ZImageControlNetInpaintPipeline`), with the
  picture's **Canny** edges as the control image, so the new content follows the old outlines;
- into native **Set Latent Noise Mask**, so everything outside the mask stays exactly as it was.

Use a pose or depth picture instead of the edges to change more than the surface.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET}` (2.0, 2.1 or lite: the 1.0 file has no inpaint input)
""", size=(420, 600))
    dit, te, vae, cn = controlnet_models(g)
    img = g.add("LoadImage", 2, "Input Image (paint the mask)", {"image": "example.png"}, size=(440, 420))
    edges = g.add("Canny", 2, "Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": img[0]},
                  size=(440, 90))
    enc = g.add("ZImageVAEEncode", 2, "Encode Image", {"tiled": False}, {"vae": vae[0], "image": img[0]},
                size=(440, 80))
    mask = g.add("SetLatentNoiseMask", 2, "Set Latent Noise Mask", inputs={"samples": enc[0], "mask": img[1]},
                 size=(440, 50))
    g.group("Image and mask", 2, color="#88a")
    pos = prompt(g, te, "A sunlit kitchen table with a blue ceramic bowl full of ripe lemons, a linen cloth and a "
                        "glass of water, soft morning light, photograph.", col=3)
    ctl = g.add("ZImageControlNetApply", 3, "ControlNet Apply (inpaint)",
                {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0},
                {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": edges[0], "inpaint_image": img[0],
                 "inpaint_mask": img[1]}, size=(440, 230))
    samp = sampler(g, ctl[0], pos, mask, 4, seed=13, denoise=1.0)
    decode_save(g, vae, samp, 4, "z-image-controlnet-inpaint")
    return g


def controlnet_tile_upscale() -> Graph:
    g = Graph("controlnet_tile_upscale", "Tile ControlNet upscale",
              "A small picture is enlarged 2x (native Upscale Image By) and re-rendered by Turbo with the tile "
              "ControlNet, which keeps the picture's layout and colours while the sampler adds fine detail.",
              tags=["controlnet", "upscale", "tile", "turbo"])
    g.note(0, "About this workflow", f"""
## Tile upscale

**Load Image** -> native **Upscale Image By** (2x, lanczos) -> the enlarged picture is both
- the **control image** of the tile ControlNet (strength 0.85, as VideoX-Fun's tile example), and
- the **start latent** (VAE Encode, denoise 0.75): the sampler redraws it at the new size.

The tile model keeps what is where; the prompt and the sampler add the detail the small picture
lacked. Lower *denoise* keeps more of the enlarged picture; lower *strength* lets the prompt change more.
Pictures over ~1.5 megapixels: use the pack's tiled VAE options.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET_TILE}` (or the tile lite file)
""", size=(420, 560))
    dit, te, vae, cn = controlnet_models(g, CONTROLNET_TILE, "Load Tile ControlNet")
    img = g.add("LoadImage", 2, "Small Picture", {"image": "example.png"}, size=(440, 420))
    big = g.add("ImageScaleBy", 2, "Upscale Image By", {"upscale_method": "lanczos", "scale_by": 2.0},
                {"image": img[0]}, size=(440, 90))
    enc = g.add("ZImageVAEEncode", 2, "Encode Enlarged Picture", {"tiled": False}, {"vae": vae[0], "image": big[0]},
                size=(440, 80))
    g.group("Picture", 2, color="#88a")
    pos = prompt(g, te, "A detailed photograph of an old stone harbour town at golden hour, fishing boats, sharp "
                        "textures of stone and wood, natural colours.", col=3)
    ctl = g.add("ZImageControlNetApply", 3, "ControlNet Apply (tile)",
                {"strength": 0.85, "start_percent": 0.0, "end_percent": 1.0},
                {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": big[0]}, size=(440, 190))
    samp = sampler(g, ctl[0], pos, enc, 4, seed=7, denoise=0.75)
    decode_save(g, vae, samp, 4, "z-image-tile-upscale")
    return g


def nag_turbo() -> Graph:
    g = Graph("nag_turbo", "Z-Image-Turbo with a negative prompt (NAG)",
              "Turbo at cfg 1 with a working negative prompt: the Z-Image NAG node (Normalized Attention Guidance) "
              "steers the image tokens' attention away from the negative prompt in every layer, at the cost of one "
              "extra attention per layer instead of a second full CFG pass.",
              tags=["text-to-image", "turbo", "nag", "negative prompt"])
    g.note(0, "About this workflow", f"""
## Negative prompt for Turbo (NAG)

Turbo samples at **cfg 1**, where the sampler's negative input does nothing. The **Z-Image NAG** node
brings the negative prompt back: in every main layer the image tokens also look at the negative prompt,
and their attention output is pushed away from that answer.

- `scale` 5: strength (0 = off, the same picture as without the node).
- `tau` 2.5: cap on how far a token's output may grow; lower is gentler.
- `alpha` 0.25: share of the guided output that is mixed in.
- `start` / `end`: the part of the schedule with NAG (fractions of the steps).

The sampler stays at 8 steps, cfg 1. Remove a thing the picture keeps showing by naming it in the
negative prompt (here: text and watermarks, blur, oversaturated colours).
{MODELS_MD.format(dit=TURBO)}""", size=(420, 560))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    neg = prompt(g, te, "blurry, low quality, oversaturated colours, text, watermark, logo, frame", col=2,
                 title="Negative Prompt", size=(440, 150))
    nag = g.add("ZImageNAG", 2, "Z-Image NAG", {"scale": 5.0, "tau": 2.5, "alpha": 0.25, "start": 0.0, "end": 1.0},
                {"dit": dit[0], "negative": neg[0]}, size=(340, 200))
    g.group("Negative prompt (NAG)", 2, color="#8a8a5a")
    pos = prompt(g, te, FOX, col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, nag[0], pos, lat, 4, seed=42)
    decode_save(g, vae, samp, 4, "z-image-nag")
    return g


def nag_ksampler() -> Graph:
    g = Graph("nag_ksampler", "Z-Image-Turbo with a NAG negative prompt in the native KSampler",
              "The pack's DiT handed to ComfyUI as a MODEL, Z-Image NAG on MODEL for a working negative prompt at "
              "cfg 1, then the native ModelSamplingAuraFlow (shift 3) and KSampler with res_multistep.",
              tags=["text-to-image", "turbo", "nag", "negative prompt", "interop"])
    g.note(0, "About this workflow", f"""
## A negative prompt for Turbo in native samplers

Turbo samples at **cfg 1**, where KSampler's negative input does nothing. **Z-Image NAG on MODEL**
(Normalized Attention Guidance) attaches the negative prompt to the MODEL instead: in every main layer the
image tokens also look at the negative prompt and their attention output is pushed away from it. Any
sampler node that takes a MODEL then uses it.

- `scale` 5 (0 = off, the same picture as without the node), `tau` 2.5, `alpha` 0.25.
- LoRA / adaLN nodes of this pack go before **Z-Image DiT to MODEL**; LoraLoaderModelOnly may go
  anywhere on the MODEL.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 480))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    model = g.add("ZImageDiTToModel", 2, "DiT to MODEL", inputs={"dit": dit[0]}, size=(340, 50))
    neg = prompt(g, te, "blurry, low quality, oversaturated colours, text, watermark, logo, frame", col=2,
                 title="Negative Prompt (NAG)", size=(440, 150))
    nag = g.add("ZImageNAGModel", 2, "Z-Image NAG on MODEL",
                {"scale": 5.0, "tau": 2.5, "alpha": 0.25, "start": 0.0, "end": 1.0},
                {"model": model[0], "negative": neg[0]}, size=(340, 200))
    shift = g.add("ModelSamplingAuraFlow", 2, "ModelSamplingAuraFlow", {"shift": 3.0}, {"model": nag[0]},
                  size=(340, 60))
    pos = prompt(g, te, FOX, col=3)
    zero = g.add("ConditioningZeroOut", 3, "Negative (zeroed prompt)", inputs={"conditioning": pos[0]},
                 size=(440, 30))
    lat = g.add("EmptySD3LatentImage", 3, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1},
                size=(440, 110))
    samp = g.add("KSampler", 4, "KSampler",
                 {"seed": 42, "steps": 8, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple",
                  "denoise": 1.0},
                 {"model": shift[0], "positive": pos[0], "negative": zero[0], "latent_image": lat[0]},
                 size=(360, 260), control="randomize")
    decode_save(g, vae, samp, 4, "z-image-nag-ksampler")
    return g


def distributed_turbo_t2i() -> Graph:
    g = Graph("distributed_turbo_t2i", "Z-Image-Turbo on several GPUs or machines (ComfyUI-Distributed)",
              "The Turbo text-to-image graph with ComfyUI-Distributed's Distributed Seed and Distributed Collector: "
              "the master and each worker make one picture with their own seed, the master saves them all. "
              "Alone (no workers) it is the plain Turbo graph.",
              tags=["text-to-image", "turbo", "distributed"])
    g.note(0, "About this workflow", f"""
## One graph, many GPUs (ComfyUI-Distributed)

Needs the **ComfyUI-Distributed** pack on the master and on every worker, and this pack and the same model
files on every machine. Add the workers in the Distributed panel (or `gpu_config.json`), then *Queue*:
the master and each worker render one picture. **Distributed Seed** gives the master the seed *s* and
worker *i* the seed *s + i*; **Distributed Collector** brings the workers' pictures to the master
(master's first), and Save Image saves them all. Headless:
`python -m zimage_core.client run workflows/api/distributed_turbo_t2i.json --server MASTER:8188 --workers all`
{MODELS_MD.format(dit=TURBO)}""", size=(420, 520))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    pos = prompt(g, te, FOX)
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    seed = g.add("DistributedSeed", 2, "Distributed Seed", {"seed": 42}, size=(440, 90), control="randomize")
    samp = sampler(g, dit[0], pos, lat, 3, control="fixed")
    samp.inputs["seed"] = seed[0]
    dec = g.add("ZImageVAEDecode", 3, "Decode", {"tiled": False}, {"vae": vae[0], "latent": samp[0]}, size=(340, 80))
    coll = g.add("DistributedCollector", 4, "Distributed Collector", {"load_balance": False}, {"images": dec[0]},
                 size=(320, 80))
    g.add("SaveImage", 4, "Save Image", {"filename_prefix": "z-image-distributed"}, {"images": coll[0]},
          size=(520, 560))
    return g


def lora_training() -> Graph:
    g = Graph("lora_training", "Train a Z-Image LoRA on a GGUF base (ComfyUI's training nodes)",
              "A folder of pictures with captions (ComfyUI's dataset nodes) encoded by the pack's VAE and text "
              "encoder, ComfyUI's Train LoRA on the pack's DiT from a GGUF file (kept quantized), Save LoRA, and a "
              "test picture with the fresh LoRA through Load LoRA Model and the native KSampler.",
              tags=["training", "lora", "gguf", "interop"])
    g.note(0, "About this workflow", f"""
## Train a LoRA (on a GGUF base)

1. Put 10-30 pictures in `ComfyUI/input/{DATASET_FOLDER}/` (png, jpg, webp), each with a caption in a
   `.txt` of the same name (`cat_01.png` + `cat_01.txt`); start every caption with a trigger word
   (here `zmg_style`). Press **R** so the folder shows up in *Load Image and Text Dataset from Folder*.
2. *Queue*. Training runs first (progress bar on **Train LoRA**), then **Save LoRA Weights** writes
   `output/loras/zimage_lora_<steps>_steps_<n>_.safetensors` (move it to `models/loras/` to use it
   later, e.g. in LoraLoaderModelOnly or the Z-Image LoRA Loader), then the test picture is made.

**The graph**: pictures resized to 1024 on the longer edge (mixed sizes are fine: then every picture
trains on its own; sizes are cropped to multiples of 16) -> Z-Image VAE Encode, captions ->
Z-Image Text Encode -> **Train LoRA** on the DiT from a GGUF file: the base stays quantized, each
layer's LoRA learns against its dequantized weight (QLoRA style). The trained LoRA also goes straight
into **Load LoRA Model** -> KSampler for a test picture.

**Settings** (Train LoRA): rank 16, AdamW at learning rate 0.0001, 1000 steps (about 50-100 steps per
picture), batch 1, bf16, gradient checkpointing on. Rank above a layer's size adds nothing (the log
says so). Lower memory: 768 on the longer edge, *offloading* on. Training at cfg 1 on Turbo slowly
undoes its distillation: train on the base model and test at cfg 4 (as here).
Interrupting (the queue's X) writes no file; it takes effect at Train LoRA's next progress update
(ComfyUI sends one every 0.5% of the steps: every 5 steps at 1000).

**Models**: `diffusion_models/{BASE_GGUF}` (a GGUF of Z-Image base, e.g. ComfyUI-GGUF's files; the
bf16 `{BASE}` works too), `text_encoders/{TE}`, `vae/{VAE}`.
""", size=(440, 760))
    dit = g.add("ZImageDiTLoader", 1, "Load Z-Image DiT (GGUF)",
                {"dit_name": BASE_GGUF, "weight_dtype": "auto", "memory": "auto"}, size=(340, 130))
    te = g.add("ZImageTextEncoderLoader", 1, "Load Qwen3 Text Encoder",
               {"text_encoder_name": TE, "dtype": "auto", "device": "default"}, size=(340, 130))
    vae = vae_loader(g)
    model = g.add("ZImageDiTToModel", 1, "DiT to MODEL", inputs={"dit": dit[0]}, size=(340, 50))
    g.group("Models", 1)
    ds = g.add("LoadImageTextDataSetFromFolder", 2, "Pictures and Captions", {"folder": DATASET_FOLDER},
               size=(400, 80))
    small = g.add("ResizeImagesByLongerEdge", 2, "Resize (longer edge)", {"longer_edge": 1024},
                  {"images": ds[0]}, size=(400, 80))
    lat = g.add("ZImageVAEEncode", 2, "Encode Pictures", {"tiled": False}, {"vae": vae[0], "image": small[0]},
                size=(400, 80))
    caps = prompt(g, te, "", col=2, title="Encode Captions", size=(400, 100), link=ds[1])
    g.group("Dataset", 2, color="#88a")
    train = g.add("TrainLoraNode", 3, "Train LoRA",
                  {"batch_size": 1, "grad_accumulation_steps": 1, "steps": 1000, "learning_rate": 0.0001,
                   "rank": 16, "optimizer": "AdamW", "loss_function": "MSE", "seed": 42, "training_dtype": "bf16",
                   "lora_dtype": "bf16", "quantized_backward": False, "algorithm": "LoRA",
                   "gradient_checkpointing": True, "checkpoint_depth": 1, "offloading": False,
                   "existing_lora": "[None]", "bucket_mode": False, "bypass_mode": False},
                  {"model": model[0], "latents": lat[0], "positive": caps[0]}, size=(360, 560), control="fixed")
    g.add("SaveLoRA", 3, "Save LoRA Weights", {"prefix": "loras/zimage_lora", "steps": 0},
          {"lora": train[0], "steps": train[2]}, size=(360, 90))
    g.add("LossGraphNode", 3, "Loss Graph", {"filename_prefix": "zimage_lora_loss"}, {"loss": train[1]},
          size=(360, 320))
    g.group("Training", 3, color="#a1309b")
    with_lora = g.add("LoraModelLoader", 4, "Load LoRA Model", {"strength_model": 1.0, "bypass": False},
                      {"model": model[0], "lora": train[0]}, size=(360, 110))
    pos = prompt(g, te, "zmg_style, a lighthouse on a rocky cliff at dusk, waves breaking below, warm light in "
                        "the lantern room.", col=4, title="Test Prompt", size=(360, 160))
    neg = prompt(g, te, "blurry, low quality, distorted, watermark, text", col=4, title="Negative Prompt",
                 size=(360, 110))
    empty = g.add("EmptySD3LatentImage", 4, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1},
                  size=(360, 110))
    samp = g.add("KSampler", 5, "KSampler",
                 {"seed": 42, "steps": 28, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple",
                  "denoise": 1.0},
                 {"model": with_lora[0], "positive": pos[0], "negative": neg[0], "latent_image": empty[0]},
                 size=(340, 260), control="fixed")
    g.group("Test picture", 4, color="#8a8a5a")
    decode_save(g, vae, samp, 5, "zimage-lora-test")
    return g


GRAPHS = (turbo_t2i, base_cfg, prompt_enhancer_turbo, lora_stack, img2img, inpaint, adaln_variety, native_mixed,
          ksampler_bridge, low_vram_fast, controlnet_canny, nag_turbo, controlnet_depth_pose, controlnet_inpaint,
          controlnet_tile_upscale, nag_ksampler, distributed_turbo_t2i, lora_training)


# ------------------------------------------------------------------------------------------------ files

def _dump(obj, level: int) -> str:
    """JSON with 2-space indentation; short lists of scalars (links, pos, size) on one line."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dump(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if not obj:
            return "[]"
        flat = json.dumps(obj, ensure_ascii=False)
        if all(not isinstance(v, (dict, list)) for v in obj) and len(flat) <= 80:
            return flat
        return "[\n" + ",\n".join(inner + _dump(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def dumps(obj) -> str:
    return _dump(obj, 0) + "\n"


def build(mappings=None, display_names=None) -> dict[str, str]:
    """{path relative to workflows/: file text} of every generated file."""
    if mappings is None:
        pack = ws.load_pack()
        mappings, display_names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    files, index = {}, []
    for make in GRAPHS:
        g = make()
        ui, api = render(g, mappings, display_names)
        files[f"{g.name}.json"] = dumps(ui)
        files[f"api/{g.name}.json"] = dumps(api)
        index.append(index_entry(g))
    files["meta/index.json"] = dumps({"schema": "zimage-nodes/workflow-index/1", "workflows": index})
    return files


def main(argv=None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for rel, text in build().items():
        path = HERE / rel
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(rel)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    print(("out of date: " if check else "wrote: ") + (", ".join(stale) or "nothing"))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
