"""Support code for the example workflows (tests/test_workflows.py, workflows/build.py).

- `CORE_NODES`: the ComfyUI core nodes the workflows use, with their inputs, types and outputs as
  ComfyUI v0.18.1 defines them (nodes.py, comfy_extras/nodes_sd3.py), plus the frontend-only note nodes.
  Written out here so that nothing imports ComfyUI.
- `node_spec` / `frontend_widgets`: a node's inputs and the widgets the ComfyUI frontend (1.42) creates for
  it, in the order it writes `widgets_values` (control_after_generate after every seed, the LoadImage
  upload button after its combo).
- `validate_ui`, `validate_api`, `check_value`: structural and value checks of both workflow formats.
- `ui_to_api`: the frontend's graphToPrompt for the plain graphs used here (no subgraphs, reroutes or
  primitive nodes; bypassed / muted nodes are refused).
- `Executor`: runs an API-format graph on the node classes without ComfyUI, with small STAND-INS for the
  core nodes (`make_stand_ins`) that follow ComfyUI's semantics on CPU tensors.
- `run_overrides`: the per-node input changes that turn a shipped workflow into a quick run on the tiny
  models (file names, 64x64, 3 steps).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
INDEX_PATH = WORKFLOWS_DIR / "meta" / "index.json"
PACK_NAME = "zimage_nodes_pack"

MAX_RESOLUTION = 16384  # nodes.MAX_RESOLUTION
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL_NODES = ("Note", "MarkdownNote")  # frontend-only: never sent to the server


# ------------------------------------------------------------------------------------- ComfyUI core nodes

def _core(display, required, outputs=(), category="", output_node=False, optional=None):
    return {"display": display, "category": category, "required": required, "optional": optional or {},
            "outputs": tuple(outputs), "output_node": output_node}


# Options "files:<kind>" mark combos whose choices are files found at run time (empty outside ComfyUI).
CORE_NODES = {
    "SaveImage": _core("Save Image", {
        "images": ("IMAGE", {}),
        "filename_prefix": ("STRING", {"default": "ComfyUI"}),
    }, category="image", output_node=True),
    "LoadImage": _core("Load Image", {
        "image": ("files:image", {"image_upload": True}),
    }, outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")), category="image"),
    "SetLatentNoiseMask": _core("Set Latent Noise Mask", {
        "samples": ("LATENT", {}),
        "mask": ("MASK", {}),
    }, outputs=(("LATENT", "LATENT"),), category="latent/inpaint"),
    "Canny": _core("Canny", {
        "image": ("IMAGE", {}),
        "low_threshold": ("FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}),
        "high_threshold": ("FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99, "step": 0.01}),
    }, outputs=(("IMAGE", "IMAGE"),), category="image/preprocessors"),
    "EmptySD3LatentImage": _core("EmptySD3LatentImage", {
        "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
        "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
    }, outputs=(("LATENT", "LATENT"),), category="latent/sd3"),
    "ConditioningZeroOut": _core("ConditioningZeroOut", {
        "conditioning": ("CONDITIONING", {}),
    }, outputs=(("CONDITIONING", "CONDITIONING"),), category="advanced/conditioning"),
    "VAELoader": _core("Load VAE", {
        "vae_name": ("files:vae", {}),
    }, outputs=(("VAE", "VAE"),), category="loaders"),
    "VAEDecode": _core("VAE Decode", {
        "samples": ("LATENT", {}),
        "vae": ("VAE", {}),
    }, outputs=(("IMAGE", "IMAGE"),), category="latent"),
    "ModelSamplingAuraFlow": _core("ModelSamplingAuraFlow", {
        "model": ("MODEL", {}),
        "shift": ("FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01}),
    }, outputs=(("MODEL", "MODEL"),), category="advanced/model"),
    "KSampler": _core("KSampler", {
        "model": ("MODEL", {}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}),
        "sampler_name": (["euler", "res_multistep"], {}),  # the samplers the example workflows use
        "scheduler": (["simple", "normal"], {}),
        "positive": ("CONDITIONING", {}),
        "negative": ("CONDITIONING", {}),
        "latent_image": ("LATENT", {}),
        "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
    }, outputs=(("LATENT", "LATENT"),), category="sampling"),
    "ImageScaleBy": _core("Upscale Image By", {
        "image": ("IMAGE", {}),
        "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}),
        "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
    }, outputs=(("IMAGE", "IMAGE"),), category="image/upscaling"),
    # ComfyUI-Distributed v1.4.4 (robertvoy; nodes/utilities.py, nodes/collector.py): hidden inputs not listed
    "DistributedSeed": _core("Distributed Seed", {
        "seed": ("INT", {"default": 1125899906842, "min": 0, "max": 1125899906842624}),
    }, outputs=(("seed", "INT"),), category="utils"),
    "DistributedCollector": _core("Distributed Collector", {
        "images": ("IMAGE", {}),
        "load_balance": ("BOOLEAN", {"default": False}),
    }, outputs=(("images", "IMAGE"), ("audio", "AUDIO")), category="image", optional={"audio": ("AUDIO", {})}),
    # ComfyUI's dataset and training nodes (comfy_extras/nodes_dataset.py, nodes_train.py; V3 schema nodes)
    "LoadImageTextDataSetFromFolder": _core("Load Image and Text Dataset from Folder", {
        "folder": ("files:input_folder", {}),
    }, outputs=(("images", "IMAGE"), ("texts", "STRING")), category="dataset"),
    "ResizeImagesByLongerEdge": _core("Resize Images by Longer Edge", {
        "images": ("IMAGE", {}),
        "longer_edge": ("INT", {"default": 1024, "min": 1, "max": 8192}),
    }, outputs=(("images", "IMAGE"),), category="dataset/image"),
    "TrainLoraNode": _core("Train LoRA", {
        "model": ("MODEL", {}),
        "latents": ("LATENT", {}),
        "positive": ("CONDITIONING", {}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 10000}),
        "grad_accumulation_steps": ("INT", {"default": 1, "min": 1, "max": 1024}),
        "steps": ("INT", {"default": 16, "min": 1, "max": 100000}),
        "learning_rate": ("FLOAT", {"default": 0.0005, "min": 0.0000001, "max": 1.0, "step": 0.0000001}),
        "rank": ("INT", {"default": 8, "min": 1, "max": 128}),
        "optimizer": (["AdamW", "Adam", "SGD", "RMSprop"], {"default": "AdamW"}),
        "loss_function": (["MSE", "L1", "Huber", "SmoothL1"], {"default": "MSE"}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
        "training_dtype": (["bf16", "fp32", "none"], {"default": "bf16"}),
        "lora_dtype": (["bf16", "fp32"], {"default": "bf16"}),
        "quantized_backward": ("BOOLEAN", {"default": False}),
        "algorithm": (["LoRA", "LoHa", "LoKr", "OFT"], {"default": "LoRA"}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True}),
        "checkpoint_depth": ("INT", {"default": 1, "min": 1, "max": 5}),
        "offloading": ("BOOLEAN", {"default": False}),
        "existing_lora": (["[None]"], {"default": "[None]"}),  # + the files in models/loras
        "bucket_mode": ("BOOLEAN", {"default": False}),
        "bypass_mode": ("BOOLEAN", {"default": False}),
    }, outputs=(("lora", "LORA_MODEL"), ("loss_map", "LOSS_MAP"), ("steps", "INT")), category="training"),
    "SaveLoRA": _core("Save LoRA Weights", {
        "lora": ("LORA_MODEL", {}),
        "prefix": ("STRING", {"default": "loras/ComfyUI_trained_lora"}),
    }, category="loaders", output_node=True, optional={"steps": ("INT", {})}),
    "LossGraphNode": _core("Plot Loss Graph", {
        "loss": ("LOSS_MAP", {}),
        "filename_prefix": ("STRING", {"default": "loss_graph"}),
    }, category="training", output_node=True),
    "LoraModelLoader": _core("Load LoRA Model", {
        "model": ("MODEL", {}),
        "lora": ("LORA_MODEL", {}),
        "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}),
        "bypass": ("BOOLEAN", {"default": False}),
    }, outputs=(("model", "MODEL"),), category="loaders"),
    # registered by the frontend itself (no Python class; graphToPrompt skips them)
    "Note": _core("Note", {"text": ("STRING", {"multiline": True})}),
    "MarkdownNote": _core("Markdown Note", {"text": ("STRING", {"multiline": True})}),
}


# ------------------------------------------------------------------------------------------- node specs

@dataclass
class InputSpec:
    name: str
    type: str  # "INT", "COMBO", "LATENT", ...
    opts: dict
    required: bool
    choices: list | str | None = None  # COMBO: the list, or "files:<kind>"

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.opts.get("forceInput")


@dataclass
class NodeSpec:
    class_type: str
    display: str
    inputs: list[InputSpec]
    outputs: list[tuple[str, str]]  # (name, type)
    virtual: bool = False
    output_node: bool = False

    def input(self, name: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def sockets(self) -> list[InputSpec]:
        return [i for i in self.inputs if not i.is_widget]


def _input_specs(required: dict, optional: dict) -> list[InputSpec]:
    out = []
    for section, req in ((required, True), (optional, False)):
        for name, spec in section.items():
            t = spec[0]
            opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(t, (list, tuple)):
                out.append(InputSpec(name, "COMBO", opts, req, list(t)))
            elif isinstance(t, str) and t.startswith("files:"):
                out.append(InputSpec(name, "COMBO", opts, req, t))
            else:
                out.append(InputSpec(name, t, opts, req))
    return out


def node_spec(class_type: str, mappings: dict, display_names: dict | None = None) -> NodeSpec:
    """The spec of one of our nodes (from its class) or of a core node of CORE_NODES; KeyError if unknown."""
    if class_type in mappings:
        cls = mappings[class_type]
        it = cls.INPUT_TYPES()
        types = tuple(cls.RETURN_TYPES)
        names = tuple(getattr(cls, "RETURN_NAMES", None) or types)
        return NodeSpec(class_type, (display_names or {}).get(class_type, class_type),
                        _input_specs(it.get("required", {}), it.get("optional", {})), list(zip(names, types)),
                        output_node=bool(getattr(cls, "OUTPUT_NODE", False)))
    c = CORE_NODES[class_type]
    return NodeSpec(class_type, c["display"], _input_specs(c["required"], c["optional"]), list(c["outputs"]),
                    virtual=class_type in VIRTUAL_NODES, output_node=c["output_node"])


@dataclass
class Widget:
    name: str
    input: str | None  # the input it sets; None for the frontend's helper widgets
    serialize: bool  # False: kept in widgets_values but never sent to the server
    default: object = None


def frontend_widgets(spec: NodeSpec) -> list[Widget]:
    """The widgets the frontend creates for a node, in `widgets_values` order: one per widget input
    (required, then optional), a `control_after_generate` combo after an INT with control_after_generate
    (default "randomize", or the option's string) or named seed / noise_seed without the option, and an
    `upload` button (value "image") after a combo with image_upload."""
    out = []
    for i in spec.inputs:
        if not i.is_widget:
            continue
        out.append(Widget(i.name, i.name, True, i.opts.get("default")))
        if i.type == "INT":
            cag = i.opts.get("control_after_generate")
            if cag is None:
                cag = i.name in ("seed", "noise_seed")
            if cag:
                out.append(Widget("control_after_generate", None, False, cag if isinstance(cag, str) else "randomize"))
        if i.type == "COMBO" and i.opts.get("image_upload"):
            out.append(Widget("upload", None, False, "image"))
    return out


CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
MODEL_SUFFIXES = (".safetensors", ".sft", ".gguf")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tiff")


def _precision(step: float) -> int:
    return max(0, -math.floor(math.log10(step)))


def check_value(inp: InputSpec, value) -> str | None:
    """Why `value` is not valid for this widget input (None when it is). Model-file combos are empty outside
    ComfyUI: any *.safetensors name or diffusers/<folder> is accepted there (LoRA slots: also "None")."""
    o = inp.opts
    if inp.type == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not an int"
        lo, hi, step = o.get("min", -math.inf), o.get("max", math.inf), o.get("step", 1)
        if not lo <= value <= hi:
            return f"{value} outside [{lo}, {hi}]"
        base = o.get("min", 0) % step  # the frontend rounds to (min % step) + k * step
        if step != 1 and (value - base) % step:
            return f"{value} is not on the widget's step grid ({base} + k * {step})"
    elif inp.type == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"{value!r} is not a number"
        lo, hi = o.get("min", -math.inf), o.get("max", math.inf)
        if not lo <= value <= hi:
            return f"{value} outside [{lo}, {hi}]"
        p = _precision(o.get("step", 0.5))
        if abs(value - round(value, p)) > 1e-9:
            return f"{value} has more decimals than the widget's precision ({p})"
    elif inp.type == "BOOLEAN":
        if not isinstance(value, bool):
            return f"{value!r} is not a boolean"
    elif inp.type == "STRING":
        if not isinstance(value, str):
            return f"{value!r} is not a string"
    elif inp.type == "COMBO":
        if not isinstance(value, str):
            return f"{value!r} is not a string"
        choices = inp.choices
        if choices == "files:image":
            return None if value.lower().endswith(IMAGE_SUFFIXES) else f"{value!r} is not an image file name"
        if choices == "files:input_folder":  # a folder in ComfyUI's input/ (the dataset nodes' combo)
            ok = value and not value.startswith(("/", ".")) and "\\" not in value
            return None if ok else f"{value!r} is not a folder name inside ComfyUI's input folder"
        if choices == "files:vae" or (isinstance(choices, list) and not [c for c in choices if c != "None"]):
            ok = value.endswith(MODEL_SUFFIXES) or value.startswith("diffusers/") or \
                (isinstance(choices, list) and value in choices)
            return None if ok else f"{value!r} is not a model file name (*.safetensors or diffusers/<folder>)"
        if value not in choices and not (value.endswith(MODEL_SUFFIXES) and "None" in choices):
            return f"{value!r} not in {choices}"
    return None


def types_match(out_type: str, in_type: str) -> bool:
    return out_type == in_type or "*" in (out_type, in_type)


# ------------------------------------------------------------------------------------------ UI format

def ui_links(wf: dict) -> dict[int, tuple]:
    """{link id: (origin id, origin slot, target id, target slot, type)} of a version-0.4 workflow."""
    out = {}
    for link in wf.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link["type"]]
        out[link[0]] = tuple(link[1:])
    return out


def validate_ui(wf: dict, mappings: dict, display_names: dict | None = None) -> list[str]:
    """Everything wrong with an editor-format (version 0.4) workflow, as messages (empty = valid)."""
    errs = []
    if wf.get("version") != 0.4:
        errs.append(f"version {wf.get('version')!r}, expected 0.4")
    nodes = {}
    for n in wf.get("nodes", []):
        if n["id"] in nodes:
            errs.append(f"duplicate node id {n['id']}")
        nodes[n["id"]] = n
    if nodes and wf.get("last_node_id", 0) < max(nodes):
        errs.append("last_node_id is below the highest node id")
    links = ui_links(wf)
    if links and wf.get("last_link_id", 0) < max(links):
        errs.append("last_link_id is below the highest link id")

    for lid, (o, oslot, t, tslot, ltype) in links.items():
        if o not in nodes or t not in nodes:
            errs.append(f"link {lid}: node {o if o not in nodes else t} does not exist")
            continue
        outs, ins = nodes[o].get("outputs") or [], nodes[t].get("inputs") or []
        if oslot >= len(outs) or lid not in (outs[oslot].get("links") or []):
            errs.append(f"link {lid}: not listed by output {oslot} of node {o}")
            continue
        if tslot >= len(ins) or ins[tslot].get("link") != lid:
            errs.append(f"link {lid}: not the link of input {tslot} of node {t}")
            continue
        if ltype != outs[oslot]["type"]:
            errs.append(f"link {lid}: type {ltype} but the output is {outs[oslot]['type']}")
        if not types_match(outs[oslot]["type"], ins[tslot]["type"]):
            errs.append(f"link {lid}: {outs[oslot]['type']} output into {ins[tslot]['type']} input "
                        f"{nodes[t]['type']}.{ins[tslot]['name']}")

    for nid, n in nodes.items():
        where = f"node {nid} ({n.get('type')})"
        try:
            spec = node_spec(n["type"], mappings, display_names)
        except KeyError:
            errs.append(f"{where}: unknown node type")
            continue
        for key in ("pos", "size"):
            if not (isinstance(n.get(key), list) and len(n[key]) == 2):
                errs.append(f"{where}: no {key}")
        if n.get("mode", 0) != 0:
            errs.append(f"{where}: mode {n.get('mode')} (muted/bypassed nodes are not used in examples)")
        # inputs: every socket input in spec order, plus the widget inputs that are linked
        listed = [i["name"] for i in n.get("inputs") or []]
        expected = [i.name for i in spec.inputs if not i.is_widget or i.name in listed]
        if listed != expected:
            errs.append(f"{where}: inputs {listed}, the frontend lists {expected}")
        for entry in n.get("inputs") or []:
            inp = spec.input(entry["name"])
            if inp is None:
                continue
            if entry.get("type") != inp.type:
                errs.append(f"{where}: input {inp.name} has type {entry.get('type')}, spec {inp.type}")
            if inp.is_widget and (entry.get("widget") or {}).get("name") != inp.name:
                errs.append(f"{where}: widget input {inp.name} without widget.name")
            if inp.is_widget and entry.get("link") is None:
                errs.append(f"{where}: unlinked widget input {inp.name} listed (the frontend drops those)")
            if entry.get("link") is not None and entry["link"] not in links:
                errs.append(f"{where}: input {inp.name} refers to missing link {entry['link']}")
            if not inp.is_widget and inp.required and entry.get("link") is None:
                errs.append(f"{where}: required input {inp.name} is not connected")
        # outputs
        outs = n.get("outputs") or []
        if [(x["name"], x["type"]) for x in outs] != spec.outputs:
            errs.append(f"{where}: outputs {[(x['name'], x['type']) for x in outs]}, spec {spec.outputs}")
        for slot, x in enumerate(outs):
            for lid in x.get("links") or []:
                if lid not in links or links[lid][0] != nid or links[lid][1] != slot:
                    errs.append(f"{where}: output {slot} lists link {lid} that does not start there")
        # widgets
        widgets = frontend_widgets(spec)
        values = n.get("widgets_values", [])
        if len(values) != len(widgets):
            errs.append(f"{where}: {len(values)} widget values for widgets {[w.name for w in widgets]}")
            continue
        for w, v in zip(widgets, values):
            if w.name == "control_after_generate":
                if v not in CONTROL_VALUES:
                    errs.append(f"{where}: control_after_generate {v!r}")
            elif w.name == "upload":
                if v != "image":
                    errs.append(f"{where}: upload widget value {v!r}")
            elif (e := check_value(spec.input(w.input), v)) is not None:
                errs.append(f"{where}: {w.name}: {e}")
    return errs


def process_dynamic_prompt(text: str) -> str:
    """What the frontend sends for a dynamicPrompts widget: comments (/* */ and // to the end of the line)
    removed, backslash escapes of { } | resolved. A {a|b} choice is random in the frontend, so it is refused."""
    import re

    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i:i + 2])
            i += 2
            continue
        if c == "{":
            raise ValueError("a {a|b} dynamic-prompt choice is random in the frontend; examples must not use one")
        out.append(c)
        i += 1
    return re.sub(r"\\([{}|])", r"\1", "".join(out))


def ui_to_api(wf: dict, mappings: dict, display_names: dict | None = None) -> dict:
    """The API-format prompt the frontend's graphToPrompt makes of a plain editor-format workflow: virtual
    nodes left out; widget values by input name (helper widgets such as control_after_generate and upload
    dropped; dynamicPrompts strings processed); a linked input becomes [origin id as a string, origin slot]."""
    links = ui_links(wf)
    out = {}
    for n in sorted(wf["nodes"], key=lambda n: n["id"]):
        spec = node_spec(n["type"], mappings, display_names)
        if spec.virtual:
            continue
        if n.get("mode", 0) != 0:
            raise ValueError(f"node {n['id']}: mode {n['mode']} (bypass/mute) is not handled")
        inputs = {}
        for w, v in zip(frontend_widgets(spec), n.get("widgets_values", [])):
            if not w.serialize:
                continue
            if spec.input(w.input).opts.get("dynamicPrompts") and isinstance(v, str):
                v = process_dynamic_prompt(v)
            inputs[w.name] = v
        for entry in n.get("inputs") or []:
            if entry.get("link") is not None:
                o, oslot = links[entry["link"]][:2]
                inputs[entry["name"]] = [str(o), oslot]
        out[str(n["id"])] = {"inputs": inputs, "class_type": n["type"],
                             "_meta": {"title": n.get("title") or spec.display}}
    return out


def strip_meta(graph: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in graph.items()}


def node_boxes(wf: dict, title_height: int = 30) -> dict[int, tuple[float, float, float, float]]:
    """{node id: (x0, y0, x1, y1)} including the title bar drawn above `pos`."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - title_height, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in wf["nodes"]}


def boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def box_inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


# ----------------------------------------------------------------------------------------- API format

def is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def validate_api(graph: dict, mappings: dict, display_names: dict | None = None) -> list[str]:
    """Everything wrong with an API-format graph (what ComfyUI's validate_prompt would refuse, and more)."""
    errs = []
    for nid, node in graph.items():
        where = f"node {nid} ({node.get('class_type')})"
        try:
            spec = node_spec(node["class_type"], mappings, display_names)
        except KeyError:
            errs.append(f"{where}: unknown node type")
            continue
        if spec.virtual:
            errs.append(f"{where}: frontend-only node in an API graph")
        inputs = node.get("inputs", {})
        for name in inputs:
            if spec.input(name) is None:
                errs.append(f"{where}: unknown input {name}")
        for inp in spec.inputs:
            if inp.name not in inputs:
                if inp.required:
                    errs.append(f"{where}: required input {inp.name} missing")
                continue
            v = inputs[inp.name]
            if is_link(v):
                src = graph.get(v[0])
                if src is None:
                    errs.append(f"{where}: {inp.name} links to missing node {v[0]}")
                    continue
                try:
                    outs = node_spec(src["class_type"], mappings, display_names).outputs
                except KeyError:
                    continue
                if v[1] >= len(outs):
                    errs.append(f"{where}: {inp.name} links to output {v[1]} of {src['class_type']} ({len(outs)} outputs)")
                elif not types_match(outs[v[1]][1], inp.type):
                    errs.append(f"{where}: {inp.name} ({inp.type}) linked to a {outs[v[1]][1]} output")
            elif not inp.is_widget:
                errs.append(f"{where}: {inp.name} ({inp.type}) must be a link, got {v!r}")
            elif (e := check_value(inp, v)) is not None:
                errs.append(f"{where}: {inp.name}: {e}")
    return errs


def find_nodes(graph: dict, class_type: str) -> list[str]:
    return sorted((k for k, v in graph.items() if v["class_type"] == class_type), key=int)


def find_node(graph: dict, class_type: str) -> str:
    ids = find_nodes(graph, class_type)
    assert len(ids) == 1, f"{len(ids)} {class_type} nodes"
    return ids[0]


def with_inputs(graph: dict, changes: dict[str, dict]) -> dict:
    """A deep copy of `graph` with {node id: {input: value}} applied."""
    g = copy.deepcopy(graph)
    for nid, inputs in changes.items():
        g[nid]["inputs"].update(inputs)
    return g


# ------------------------------------------------------------------------------------ tiny-run overrides

@dataclass
class TinyModels:
    """Model names to use for a quick run (paths standalone, file names inside a real ComfyUI)."""
    dit: str
    text_encoder: str
    vae: str
    loras: dict[str, str] = field(default_factory=dict)  # workflow LoRA name -> name to use
    image: str | None = None  # replaces LoadImage's image
    controlnet: str | None = None  # replaces ZImageControlNetLoader's file


def run_overrides(graph: dict, models: TinyModels | None, size: int = 64, steps: int = 3,
                  max_new_tokens: int = 16, dit_layers: int | None = 2, train_steps: int = 2) -> dict[str, dict]:
    """{node id: {input: value}} that make a shipped workflow a quick run: model names replaced (when
    `models` is given), empty latents `size` x `size`, samplers `steps` steps, the enhancer `max_new_tokens`
    tokens, adaLN block ranges clipped to a DiT of `dit_layers` main layers, TrainLoraNode `train_steps` steps
    on dataset pictures resized to `size` on the longer edge."""
    ch: dict[str, dict] = {}
    for nid, node in graph.items():
        t, inp = node["class_type"], node["inputs"]
        c = {}
        if models is not None:
            if t == "ZImageDiTLoader":
                c["dit_name"] = models.dit
            elif t == "ZImageTextEncoderLoader":
                c["text_encoder_name"] = models.text_encoder
            elif t in ("ZImageVAELoader", "VAELoader"):
                c["vae_name"] = models.vae
            elif t == "ZImageLoraLoader":
                c["lora_name"] = models.loras[inp["lora_name"]]
            elif t == "ZImageLoraStack":
                for k, v in inp.items():
                    if k.startswith("lora_") and v != "None":
                        c[k] = models.loras[v]
            elif t == "LoadImage" and models.image:
                c["image"] = models.image
            elif t == "ZImageControlNetLoader" and models.controlnet:
                c["controlnet_name"] = models.controlnet
        if t == "ZImageEmptyLatent":
            c.update(resolution="custom", width=size, height=size)
        elif t == "EmptySD3LatentImage":
            c.update(width=size, height=size)
        elif t == "ZImageSampler":
            c["steps"] = steps
        elif t == "ZImagePromptEnhancer":
            c["max_new_tokens"] = max_new_tokens
        elif t == "TrainLoraNode":
            c["steps"] = train_steps
        elif t == "ResizeImagesByLongerEdge":
            c["longer_edge"] = size
        elif t == "ImageScaleBy":  # the upscale workflow's output stays `size` x `size`
            c["scale_by"] = 1.0
        elif t == "ZImageAdaLNScale" and dit_layers is not None and inp.get("first_block", 0) >= dit_layers:
            c["first_block"] = 0
        if c:
            ch[nid] = c
    return ch


def overrides_as_strings(changes: dict[str, dict]) -> list[str]:
    """The same changes as "<node id>.<input>=<value>" strings (zimage_core.client.apply_overrides)."""
    return [f"{nid}.{k}={json.dumps(v) if not isinstance(v, str) else v}"
            for nid, c in changes.items() for k, v in c.items()]


# -------------------------------------------------------------------------------------- test helpers

def load_pack():
    """The repository imported as a package, like ComfyUI does (see tests/conftest.py)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    # standalone, also when a test imported ComfyUI's modules in this process (in-process parity tests): the
    # host adapter decides at import whether it runs inside ComfyUI
    hidden = {m: sys.modules.get(m) for m in ("folder_paths", "comfy", "latent_preview")}
    sys.modules.update(dict.fromkeys(hidden))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_NAME]
        raise
    finally:
        for m, mod in hidden.items():
            if mod is None:
                del sys.modules[m]
            else:
                sys.modules[m] = mod
    return module


def write_tiny_lora(path, seed: int = 0, rank: int = 4, scale: float = 0.3) -> Path:
    """A PEFT-style LoRA for the tiny DiT (zimage_core.tiny.TINY_DIT) on every 2-D weight."""
    import torch
    from safetensors.torch import save_file

    from zimage_core.model.dit_loader import native_to_diffusers
    from zimage_core.tiny.dit import TINY_DIT, random_dit_state

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in native_to_diffusers(random_dit_state(TINY_DIT)).items():
        if v.ndim == 2 and k.endswith(".weight") and "pad_token" not in k:
            base = k[: -len(".weight")]
            sd[f"transformer.{base}.lora_A.weight"] = torch.randn(rank, v.shape[1], generator=g) * scale / v.shape[1] ** 0.5
            sd[f"transformer.{base}.lora_B.weight"] = torch.randn(v.shape[0], rank, generator=g) * scale
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def write_example_image(path, size: int = 64, hole: tuple[int, int, int, int] | None = (0, 0, 32, 64)) -> Path:
    """A smooth RGBA test picture; alpha is 0 inside `hole` (x0, y0, x1, y1), which LoadImage turns into
    MASK = 1 (the area to repaint), as an image painted in ComfyUI's mask editor."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x) * np.cos(5 * y)], -1)
    alpha = np.ones((size, size))
    if hole is not None:
        x0, y0, x1, y1 = hole
        alpha[y0:y1, x0:x1] = 0
    arr = (np.concatenate([rgb, alpha[..., None]], -1) * 255).round().astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGBA").save(path)
    return path


# ------------------------------------------------------------------------------- executor + stand-ins

def make_stand_ins(input_dir: Path, output_dir: Path) -> dict:
    """TEST STAND-INS for the ComfyUI core nodes the workflows use (ComfyUI itself is not imported). Each
    follows the semantics of ComfyUI v0.18.1's node on CPU float32 tensors: LoadImage (RGB 0..1, MASK =
    1 - alpha, or a 64x64 zero mask without alpha), SaveImage (PNG files, the `ui.images` list),
    SetLatentNoiseMask, Canny (kornia, as ComfyUI calls it), ImageScaleBy, EmptySD3LatentImage, ConditioningZeroOut,
    VAELoader / VAEDecode (here the Flux VAE of zimage_core, loaded from a file path, decoding to
    [B, H, W, 3] in 0..1 as comfy.sd.VAE does)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from zimage_core.model.vae import load_vae

    input_dir, output_dir = Path(input_dir), Path(output_dir)

    class LoadImage:
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        def load_image(self, image):
            img = ImageOps.exif_transpose(Image.open(input_dir / image))
            rgb = torch.from_numpy(np.asarray(img.convert("RGB")).astype(np.float32) / 255.0)[None]
            if "A" in img.getbands():
                mask = 1.0 - torch.from_numpy(np.asarray(img.getchannel("A")).astype(np.float32) / 255.0)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            return rgb, mask[None]

    class DistributedSeed:  # on a server without workers (the master alone) the seed passes through
        RETURN_TYPES = ("INT",)
        FUNCTION = "distribute"

        def distribute(self, seed):
            return (seed,)

    class DistributedCollector:  # no job id (no workers): the images pass through, audio empty
        RETURN_TYPES = ("IMAGE", "AUDIO")
        FUNCTION = "run"

        def run(self, images, load_balance=False, audio=None):
            return images, audio if audio is not None else {"waveform": torch.zeros(1, 2, 1), "sample_rate": 44100}

    class SaveImage:
        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        counter = 0

        def save_images(self, images, filename_prefix="ComfyUI"):
            output_dir.mkdir(parents=True, exist_ok=True)
            results = []
            for image in images:
                SaveImage.counter += 1
                name = f"{filename_prefix}_{SaveImage.counter:05}_.png"
                arr = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(output_dir / name)
                results.append({"filename": name, "subfolder": "", "type": "output"})
            return {"ui": {"images": results}}

    class SetLatentNoiseMask:
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "set_mask"

        def set_mask(self, samples, mask):
            s = samples.copy()
            s["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
            return (s,)

    class Canny:  # kornia's canny, as comfy_extras/nodes_canny.py calls it
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "execute"

        def execute(self, image, low_threshold, high_threshold):
            from kornia.filters import canny

            edges = canny(image.float().movedim(-1, 1), low_threshold, high_threshold)[1]
            return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)

    class ImageScaleBy:  # size round(side * scale_by); lanczos through PIL per image, as comfy.utils.lanczos
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "upscale"

        def upscale(self, image, upscale_method, scale_by):
            h, w = round(image.shape[1] * scale_by), round(image.shape[2] * scale_by)
            if upscale_method == "lanczos":
                out = [torch.from_numpy(np.asarray(Image.fromarray(np.clip(255.0 * i.numpy(), 0, 255).round()
                                                                   .astype(np.uint8)).resize((w, h), Image.LANCZOS))
                                        .astype(np.float32) / 255.0) for i in image]
                return (torch.stack(out),)
            mode = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic"}
            x = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(h, w), mode=mode[upscale_method])
            return (x.movedim(1, -1),)

    class EmptySD3LatentImage:
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "execute"

        def execute(self, width, height, batch_size=1):
            return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8]), "downscale_ratio_spacial": 8},)

    class ConditioningZeroOut:
        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "zero_out"

        def zero_out(self, conditioning):
            c = []
            for t in conditioning:
                d = t[1].copy()
                if d.get("pooled_output") is not None:
                    d["pooled_output"] = torch.zeros_like(d["pooled_output"])
                c.append([torch.zeros_like(t[0]), d])
            return (c,)

    class StandInVAE:
        def __init__(self, path):
            self.model = load_vae(path)

        def decode(self, latent):
            with torch.no_grad():
                x = self.model.decode(latent.float())
            return x.add(1.0).div(2.0).clamp(0.0, 1.0).movedim(1, -1)

    class VAELoader:
        RETURN_TYPES = ("VAE",)
        FUNCTION = "load_vae"

        def load_vae(self, vae_name):
            return (StandInVAE(vae_name),)

    class VAEDecode:
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "decode"

        def decode(self, vae, samples):
            return (vae.decode(samples["samples"]),)

    return {c.__name__: c for c in (LoadImage, SaveImage, SetLatentNoiseMask, Canny, ImageScaleBy, EmptySD3LatentImage,
                                    ConditioningZeroOut, VAELoader, VAEDecode, DistributedSeed, DistributedCollector)}


@dataclass
class RunResult:
    outputs: dict  # node id -> output tuple
    inputs: dict  # node id -> the keyword arguments the node was called with
    ui: dict  # node id -> its "ui" dict (output nodes, the prompt enhancer)
    order: list  # node ids in execution order


class Executor:
    """Runs an API-format graph like ComfyUI's executor does for a fresh prompt: the output nodes and,
    depth first, everything they need; each node's class instantiated and its FUNCTION called with the
    inputs by name (links resolved to the origin's output tuple element). A return value of the form
    {"ui": ..., "result": (...)} is split as ComfyUI does."""

    def __init__(self, node_classes: dict, cache_types=()):
        """cache_types: node types (the loaders) whose outputs are kept across runs for the same widget values,
        as ComfyUI keeps the outputs of unchanged nodes between prompts."""
        self.node_classes = node_classes
        self.cache_types = set(cache_types)
        self._cache: dict = {}

    def run(self, graph: dict) -> RunResult:
        res = RunResult({}, {}, {}, [])

        def output_node(nid):
            return bool(getattr(self.node_classes[graph[nid]["class_type"]], "OUTPUT_NODE", False))

        def execute(nid, stack=()):
            if nid in res.outputs:
                return res.outputs[nid]
            if nid in stack:
                raise ValueError(f"cycle through node {nid}")
            node = graph[nid]
            kwargs = {}
            for k, v in node["inputs"].items():
                kwargs[k] = execute(v[0], stack + (nid,))[v[1]] if is_link(v) else v
            cls = self.node_classes[node["class_type"]]
            key = None
            if node["class_type"] in self.cache_types and not any(is_link(v) for v in node["inputs"].values()):
                key = (node["class_type"], json.dumps(node["inputs"], sort_keys=True))
            out = self._cache[key] if key in self._cache else getattr(cls(), cls.FUNCTION)(**kwargs)
            if key is not None:
                self._cache[key] = out
            if isinstance(out, dict):
                if "ui" in out:
                    res.ui[nid] = out["ui"]
                out = out.get("result", ())
            res.inputs[nid], res.outputs[nid] = kwargs, tuple(out)
            res.order.append(nid)
            return res.outputs[nid]

        targets = [nid for nid in sorted(graph, key=int) if output_node(nid)]
        if not targets:
            raise ValueError("the graph has no output node")
        for nid in targets:
            execute(nid)
        return res
