"""Support code for the example workflows (tests/test_workflows.py, workflows/build.py).

- `CORE_NODES` (from comfy_core_nodes.py): the ComfyUI core nodes the workflows use, as ComfyUI v0.18.1
  defines them, written out so that nothing imports ComfyUI.
- `node_spec` / `frontend_widgets`: a node's inputs and the widgets the ComfyUI frontend (1.42) creates for
  it, in the order it writes `widgets_values` (control_after_generate after every seed, the LoadImage
  upload button after its combo).
- `validate_ui`, `validate_api`, `check_value`: structural and value checks of both workflow formats.
- `ui_to_api`: the frontend's graphToPrompt for the plain graphs used here (no subgraphs, reroutes or
  primitive nodes; bypassed / muted nodes are refused).
- `Executor` and `make_stand_ins` live in workflow_executor.py: an API-format graph run on the node classes
  without ComfyUI, with small STAND-INS for the core nodes.
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

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL_NODES = ("Note", "MarkdownNote")  # frontend-only: never sent to the server
SIZE, STEPS, TRAIN_STEPS = 64, 3, 2  # the tiny runs of the workflows: pixels, sampling steps, training steps
LORA_NAMES = ("my_style_lora.safetensors", "my_detail_lora.safetensors", "my_character_lora.safetensors")


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))


def workflow_names() -> list[str]:
    """The workflows of workflows/meta/index.json, in its order."""
    return [w["name"] for w in json.loads(INDEX_PATH.read_text(encoding="utf-8"))["workflows"]]


from comfy_core_nodes import CORE_NODES


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
