"""The workflow model (Graph, Node) and its two file formats, for build.py.

`render` turns a Graph into ComfyUI's editor format (version 0.4: node positions, links, groups, widget values in
the order of each node's INPUT_TYPES, model download links for the loaders) and the API format (POST /prompt);
`index_entry` is its line of `workflows/meta/index.json`; `dumps` writes JSON the way the committed files are.
"""
from __future__ import annotations

import json
import uuid

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
