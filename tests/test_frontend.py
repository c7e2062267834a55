"""The editor extension (web/js) and the example workflows in ComfyUI's real frontend (headless Chromium).

In the browser, behind COMFYUI_PATH (the plain Node.js checks of web/js are tests/test_web_js.py): one ComfyUI server and one Chromium page for the whole module (see
  tests/frontend.py and tests/README.md). The extension loads and registers without errors, every UI
  workflow in workflows/*.json loads with no missing node type and queues exactly its API twin in
  workflows/api/, the resolution preset picker of ZImageEmptyLatent and the enhanced-prompt display of
  ZImagePromptEnhancer work without changing what is saved or queued.

Run:  python -m pytest -q tests/test_frontend.py
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from frontend import ComfyUIPage, FrontendError, missing_tools, pack_categories  # noqa: E402

REPO_ROOT = HERE.parent
WEB_JS = REPO_ROOT / "web" / "js"
JS_FILES = sorted(WEB_JS.glob("*.js"))
# ZIMAGE_WORKFLOWS_DIR: check another folder of workflows (with its own api/ twins) instead of workflows/.
WORKFLOWS_DIR = Path(os.environ.get("ZIMAGE_WORKFLOWS_DIR") or REPO_ROOT / "workflows").resolve()
WORKFLOWS = sorted(p for p in WORKFLOWS_DIR.glob("*.json") if p.name != "index.json")
API_DIR = WORKFLOWS_DIR / "api"
EXTENSION_NAME = "ZImage.Editor"


# ============================================================================ real ComfyUI + Chromium

# Where each model input of the workflows looks for its file (the ComfyUI folder kind).
MODEL_INPUTS = {"dit_name": "diffusion_models", "text_encoder_name": "text_encoders", "vae_name": "vae",
                "lora_name": "loras", "lora_1": "loras", "lora_2": "loras", "lora_3": "loras", "lora_4": "loras",
                "controlnet_name": "model_patches"}


def _workflow_files():
    """{(kind, name)} of the model files and input images the API twins of the workflows name."""
    out = set()
    for path in sorted(API_DIR.glob("*.json")):
        for node in json.loads(path.read_text(encoding="utf-8")).values():
            for key, value in node.get("inputs", {}).items():
                if not isinstance(value, str) or value == "None":
                    continue
                if key in MODEL_INPUTS:
                    out.add((MODEL_INPUTS[key], value))
                elif node.get("class_type") == "LoadImage" and key == "image":
                    out.add(("input", value))
                elif node.get("class_type") == "LoadImageTextDataSetFromFolder" and key == "folder":
                    out.add(("input_folder", value))
    return out


@pytest.fixture(scope="module")
def workflow_models(comfyui_host, tiny, tmp_path_factory):
    """Every file the workflows name is on the server (tiny models under the real names, a tiny LoRA, a
    small picture), as on a user's machine where the workflows open without red loaders. Files that were
    not there before are removed afterwards."""
    from workflow_support import write_example_image, write_tiny_lora

    host, d = comfyui_host, tmp_path_factory.mktemp("frontend_models")
    src = {"diffusion_models": tiny["dit"], "text_encoders": tiny["text_encoder"], "vae": tiny["vae"],
           "loras": write_tiny_lora(d / "lora.safetensors"),
           "model_patches": tiny["dit"]}  # the editor only checks that the name is listed; nothing loads it here
    host.put_model("text_encoders", "tokenizer", tiny["tokenizer"])  # beside the single file; shared, left there
    added = []
    for kind, name in sorted(_workflow_files()):
        if kind == "input":
            if not (Path(host.input_dir) / name).exists():
                write_example_image(Path(host.input_dir) / name)
                added.append(Path(host.input_dir) / name)
        elif kind == "input_folder":  # a dataset folder in input/ (the dataset node lists input/'s folders)
            folder = Path(host.input_dir) / name
            if not folder.exists():
                write_example_image(folder / "pic.png")
                added.append(folder)
        elif not os.path.lexists(os.path.join(host.model_dir(kind), name)):
            host.put_model(kind, name, src[kind])
            added.append((kind, name))
    yield host
    for a in added:
        if isinstance(a, Path) and a.is_dir():
            shutil.rmtree(a, ignore_errors=True)
        elif isinstance(a, Path):
            a.unlink(missing_ok=True)
        else:
            host.remove_model(*a)


@pytest.fixture(scope="module")
def ui(workflow_models):
    """(host, page): the session's ComfyUI server (with the workflows' model files) and one browser page for
    this module."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    host = workflow_models
    page = ComfyUIPage.open(host)
    try:
        page.wait_for("return app.extensions.some((e) => e.name === arg)", EXTENSION_NAME, timeout=30)
        page.startup_log = page.console(clear=True)
        yield host, page
    finally:
        page.close()


def _is_locale_probe(m, pack):
    """The help panel asks for docs/<Node>/<locale>.md before docs/<Node>.md: that 404 is expected."""
    return re.search(rf"/extensions/{re.escape(pack)}/docs/\w+/[\w-]+\.md$", m["url"]) is not None


def _ours(messages, pack):
    """Messages caused by the pack's frontend code: anything from /extensions/<pack>/ and our log prefix
    (minus the help panel's expected 404 for a translated help page)."""
    marker = f"/extensions/{pack}/"
    out = []
    for m in messages:
        if m["kind"] == "console" and m["type"] not in ("error", "warning", "assert"):
            continue
        if _is_locale_probe(m, pack):
            continue
        if marker in m["url"] or marker in m["text"] or "[Z-Image]" in m["text"]:
            out.append(m)
    return out


def _assert_no_extension_errors(host, page):
    bad = _ours(page.console(clear=True), host.pack_name)
    assert not bad, "the editor extension logged errors/warnings:\n" + json.dumps(bad, indent=1)


def test_extension_loads_and_registers(ui):
    host, page = ui
    assert not host.pack_import_failures(), host.log_tail()
    listed = host.get("/extensions")
    for f in ("zimage.js", "zimage_util.js"):
        assert f"/extensions/{host.pack_name}/js/{f}" in listed, listed
    loaded = page.evaluate("""return performance.getEntriesByType("resource").map((e) => e.name)
                              .filter((n) => n.includes(arg))""", f"/extensions/{host.pack_name}/js/")
    assert any(n.endswith("/zimage.js") for n in loaded) and any(n.endswith("/zimage_util.js") for n in loaded), loaded
    names = page.evaluate("return app.extensions.map((e) => e.name)")
    assert names.count(EXTENSION_NAME) == 1, names

    # ComfyUI logs imports of legacy frontend paths (/scripts/ui/..., /extensions/core/...); ours is the only
    # custom extension on this server, so any such line is ours
    deprecated = [line for line in host.log_text().splitlines() if "DEPRECATION" in line]
    assert not deprecated, deprecated
    log = page.startup_log
    assert not [m for m in log if m["kind"] == "pageerror"], json.dumps(log, indent=1)
    assert not _ours(log, host.pack_name), json.dumps(_ours(log, host.pack_name), indent=1)

    # every node of the pack is registered in the editor and has its category colour (as a class default)
    pack_nodes = host.pack_nodes()
    assert set(pack_categories()) <= set(pack_nodes), sorted(set(pack_categories()) - set(pack_nodes))
    classes = page.evaluate("""
        const out = {};
        for (const t of arg) {
          const c = LiteGraph.registered_node_types[t];
          out[t] = c ? [c.color ?? null, c.bgcolor ?? null] : null;
        }
        return out;""", sorted(pack_nodes))
    assert all(v and v[0] and v[1] for v in classes.values()), classes
    core = page.evaluate("const c = LiteGraph.registered_node_types.KSampler; return [c.color ?? null, c.bgcolor ?? null]")
    assert core == [None, None], "core nodes must keep their colours"


def test_colours_and_badge_never_override_saved_colours(ui):
    host, page = ui
    res = page.evaluate("""
        app.graph.clear();
        const a = LiteGraph.createNode("ZImageVAEDecode");
        const b = LiteGraph.createNode("ZImageVAEDecode");
        app.graph.add(a); app.graph.add(b);
        b.color = "#ff0000"; b.bgcolor = "#00ff00";
        const saved = app.graph.serialize();
        await app.loadGraphData(saved, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
        const a2 = app.graph.getNodeById(a.id), b2 = app.graph.getNodeById(b.id);
        const sa = a2.serialize(), sb = b2.serialize();
        return {
          a_saved: ["color" in sa, "bgcolor" in sa], b_saved: [sb.color, sb.bgcolor],
          a_class: a2.constructor.color, a_badges: (a2.badges ?? []).length, b_color: [b2.color, b2.bgcolor],
        };""")
    assert res["a_saved"] == [False, False], "the category colour must not be written into the workflow"
    assert res["b_saved"] == ["#ff0000", "#00ff00"] and res["b_color"] == ["#ff0000", "#00ff00"]
    assert res["a_class"]
    _assert_no_extension_errors(host, page)


# ---------------------------------------------------------------------------------------- workflows

def _workflow_types(wf):
    """Node types used by a UI workflow (top level and inside subgraph definitions), minus subgraph ids."""
    subgraphs = (wf.get("definitions") or {}).get("subgraphs") or []
    sub_ids = {s.get("id") for s in subgraphs}
    types = {n.get("type") for n in wf.get("nodes", [])}
    for s in subgraphs:
        types |= {n.get("type") for n in s.get("nodes", [])}
    return sorted(t for t in types if t and t not in sub_ids)


def _api_core(graph):
    return {str(k): {"class_type": v.get("class_type"), "inputs": v.get("inputs", {})} for k, v in graph.items()}


def _diff(got, want):
    lines = []
    for k in sorted(set(got) | set(want), key=lambda s: (len(s), s)):
        if k not in got:
            lines.append(f"node {k} ({want[k]['class_type']}) missing from graphToPrompt")
        elif k not in want:
            lines.append(f"node {k} ({got[k]['class_type']}) not in the API twin")
        elif got[k] != want[k]:
            if got[k]["class_type"] != want[k]["class_type"]:
                lines.append(f"node {k}: class {got[k]['class_type']} != {want[k]['class_type']}")
            gi, wi = got[k]["inputs"], want[k]["inputs"]
            for name in sorted(set(gi) | set(wi)):
                if gi.get(name, "<absent>") != wi.get(name, "<absent>"):
                    lines.append(f"node {k} ({got[k]['class_type']}).{name}: UI gives {gi.get(name, '<absent>')!r}, "
                                 f"API twin has {wi.get(name, '<absent>')!r}")
    return "\n".join(lines)


# Load a UI workflow as the editor does and report what would show red: a node flagged with errors
# (has_errors: unknown type, failed configure), a node without its Python definition, or a widget input of
# the definition (INT/FLOAT/STRING/BOOLEAN/COMBO, not forceInput) that has no widget; plus every node's
# widgets_values after loading and the prompt the editor would queue.
LOAD_CHECK_JS = """
await app.loadGraphData(arg, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
// the missing-model check flags loaders (has_errors) after one more request of its own: let it finish
await new Promise((r) => setTimeout(r, 500));
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
const red = [], values = {}, types = {};
for (const n of app.graph.nodes) {
  const label = `${n.id}:${n.type}`;
  types[String(n.id)] = n.type;
  values[String(n.id)] = n.serialize().widgets_values ?? null;
  if (n.has_errors) red.push(`${label}: has_errors`);
  const def = n.constructor.nodeData;
  if (!def) {  // frontend-only nodes (notes) have no Python definition
    if (!n.isVirtualNode) red.push(`${label}: no node definition`);
    continue;
  }
  const widgets = new Set((n.widgets ?? []).map((w) => w.name));
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(def.input?.[section] ?? {})) {
      const type = Array.isArray(spec[0]) ? "COMBO" : spec[0];
      if (WIDGET_TYPES.has(type) && !spec[1]?.forceInput && !widgets.has(name)) red.push(`${label}: no widget ${name}`);
    }
  }
}
const p = await app.graphToPrompt();
return {count: app.graph.nodes.length, red, widgets_values: values, types, output: p.output};
"""


@pytest.mark.parametrize("path", WORKFLOWS or [None], ids=[p.stem for p in WORKFLOWS] or ["none"])
def test_workflow_loads_and_matches_api_twin(ui, path):
    if path is None:
        pytest.skip("no UI workflows in workflows/*.json yet")
    host, page = ui
    wf = json.loads(path.read_text(encoding="utf-8"))
    types = _workflow_types(wf)
    missing = page.evaluate("return arg.filter((t) => !LiteGraph.registered_node_types[t])", types)
    assert not missing, f"{path.name}: node types unknown to the editor: {missing}"

    res = page.evaluate(LOAD_CHECK_JS, wf, timeout=60)
    assert res["count"] == len(wf.get("nodes", [])), f"{path.name}: {res['count']} nodes loaded of {len(wf['nodes'])}"
    assert not res["red"], f"{path.name}: red nodes (errors, missing definition or widgets) after loading:\n" \
        + "\n".join(res["red"])
    saved = {str(n["id"]): n.get("widgets_values") for n in wf.get("nodes", [])}
    changed = [f"node {k} ({res['types'][k]}): file {saved[k]!r}, editor {v!r}"
               for k, v in res["widgets_values"].items() if saved.get(k) is not None and v != saved[k]]
    assert not changed, f"{path.name}: widget values changed by loading:\n" + "\n".join(changed)

    twin_path = API_DIR / path.name
    if not twin_path.is_file():
        pytest.skip(f"{path.name} has no API twin api/{twin_path.name}")
    want = _api_core(json.loads(twin_path.read_text(encoding="utf-8")))
    got = _api_core(res["output"])
    assert got == want, f"{path.name}: the editor would queue something else than {twin_path.name}:\n" + _diff(got, want)
    _assert_no_extension_errors(host, page)


def test_workflows_are_offered_in_the_template_browser(ui):
    """ComfyUI lists a pack's workflows/*.json in its template browser and serves them from
    /api/workflow_templates/<pack>/<name>.json."""
    if not WORKFLOWS or WORKFLOWS_DIR != (REPO_ROOT / "workflows").resolve():
        pytest.skip("no UI workflows in the pack's workflows/ folder yet")
    host, page = ui
    listed = set(host.get("/workflow_templates").get(host.pack_name, []))
    stems = {p.stem for p in WORKFLOWS}
    assert stems <= listed, sorted(stems - listed)
    first = WORKFLOWS[0]
    served = host.get(f"/api/workflow_templates/{host.pack_name}/{first.name}")
    assert served == json.loads(first.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------- empty latent

LATENT_JS = """
const canvas = app.canvas;
const w = (n, name) => n.widgets.find((x) => x.name === name);
const set = (n, name, v) => w(n, name).setValue(v, {e: undefined, node: n, canvas});
const values = (n) => n.serialize().widgets_values;
app.graph.clear();
const n = LiteGraph.createNode("ZImageEmptyLatent");
app.graph.add(n);
const out = {widgets: n.widgets.map((x) => [x.name, x.type]), initial: values(n)};
set(n, "resolution", "1216x832 (3:2)");   out.preset = values(n);
set(n, "width", 1000);                     out.width1000 = values(n);
set(n, "height", 1217);                    out.height1217 = values(n);
set(n, "width", 832);                      out.back_to_preset = values(n);
const swap = n.widgets.find((x) => x.type === "button");
swap.callback();                           out.swapped = values(n);
set(n, "resolution", "custom");            out.custom = values(n);
// a value written directly, then the callback (as other frontends / extensions do)
const wd = w(n, "width"); wd.value = 1000; wd.callback?.(1000, canvas, n, null, undefined);
out.direct = values(n);
wd.value = 1216; wd.callback?.(1216, canvas, n, null, undefined);
const prompt = await app.graphToPrompt();
out.prompt = prompt.output[String(n.id)];

// a saved workflow keeps its values exactly (no handler runs on load), even when they disagree
const saved = app.graph.serialize();
saved.nodes[0].widgets_values = ["1216x832 (3:2)", 1024, 1000, 2];
await app.loadGraphData(saved, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
const m = app.graph.nodes[0];
out.loaded = values(m);
out.loaded_prompt = (await app.graphToPrompt()).output[String(m.id)].inputs;
return out;
"""


def test_empty_latent_preset_picker(ui):
    host, page = ui
    r = page.evaluate(LATENT_JS)
    names = [n for n, _ in r["widgets"]]
    assert names[:4] == ["resolution", "width", "height", "batch_size"], names
    assert r["initial"] == ["custom", 1024, 1024, 1]
    assert r["preset"] == ["1216x832 (3:2)", 1216, 832, 1]
    assert r["width1000"][1] % 16 == 0 and abs(r["width1000"][1] - 1000) <= 8 and r["width1000"][0] == "custom"
    assert r["height1217"][2] == 1216
    assert r["back_to_preset"] == ["832x1216 (2:3)", 832, 1216, 1]  # matches a preset again
    assert r["swapped"] == ["1216x832 (3:2)", 1216, 832, 1]
    assert r["custom"] == ["custom", 1216, 832, 1]
    assert r["direct"] == ["custom", 1008, 832, 1]
    # the swap button is a widget of the node but neither saved nor queued
    assert len(r["custom"]) == 4
    assert r["prompt"] == {"inputs": {"resolution": "1216x832 (3:2)", "width": 1216, "height": 832, "batch_size": 1},
                           "class_type": "ZImageEmptyLatent", "_meta": {"title": "Z-Image Empty Latent"}}
    assert r["loaded"] == ["1216x832 (3:2)", 1024, 1000, 2]
    assert r["loaded_prompt"] == {"resolution": "1216x832 (3:2)", "width": 1024, "height": 1000, "batch_size": 2}
    _assert_no_extension_errors(host, page)


# ---------------------------------------------------------------------------------------- prompt enhancer

ENHANCER_JS = """
const LOAD = {showMissingNodesDialog: false, showMissingModelsDialog: false};
app.graph.clear();
const n = LiteGraph.createNode("ZImagePromptEnhancer");
app.graph.add(n);
const display = (node) => node.widgets.find((x) => x.name === "zimage_enhanced_prompt");
const out = {before: n.serialize().widgets_values, had_display: !!display(n)};
const before_prompt = (await app.graphToPrompt()).output[String(n.id)];
n.onExecuted({text: [arg]});
const d = display(n);
out.shown = d ? d.value : null;
const el = d && (d.inputEl ?? d.element);
out.read_only = el ? !!el.readOnly : null;
out.after = n.serialize().widgets_values;
out.prompt_same = JSON.stringify((await app.graphToPrompt()).output[String(n.id)]) === JSON.stringify(before_prompt);
n.onExecuted({text: ["second run"]});
out.second = display(n).value;
out.display_count = n.widgets.filter((x) => x.name === "zimage_enhanced_prompt").length;
// reopened workflow: the last text is shown again, widget values unchanged
const saved = app.graph.serialize();
await app.loadGraphData(saved, true, true, null, LOAD);
const m = app.graph.getNodeById(n.id);
out.restored = display(m) ? display(m).value : null;
out.restored_values = m.serialize().widgets_values;
// a messages without text (or a broken one) is ignored without an error
m.onExecuted({});
m.onExecuted({text: null});
out.still = display(m).value;
return out;
"""


def test_prompt_enhancer_shows_the_text(ui):
    host, page = ui
    text = 'A cat café poster that says "OPEN LATE", warm neon light, rain on the window.'
    r = page.evaluate(ENHANCER_JS, text)
    assert r["had_display"] is False
    assert r["shown"] == text and r["read_only"] is True
    assert r["after"] == r["before"] and len(r["after"]) == len(r["before"])
    assert r["prompt_same"], "the display must not be part of the queued prompt"
    assert r["second"] == "second run" and r["display_count"] == 1
    assert r["restored"] == "second run" and r["restored_values"] == r["before"]
    assert r["still"] == "second run"
    _assert_no_extension_errors(host, page)


# ---------------------------------------------------------------------------------------- help pages

DOCS = sorted((REPO_ROOT / "web" / "docs").glob("*.md"))

# A new node of type `arg`, alone on the canvas at 100% zoom; returns a point on its title in canvas pixels.
PLACE_NODE_JS = """
app.graph.clear();
const n = LiteGraph.createNode(arg);
n.pos = [700, 300];
app.graph.add(n);
app.canvas.deselectAll?.();
app.canvas.ds.offset = [0, 0];
app.canvas.ds.scale = 1;
app.canvas.setDirty(true, true);
await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + 60, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2]);
return {x: Math.round(x), y: Math.round(y)};
"""

INFO_BUTTON_JS = """return !!document.querySelector("[data-testid='info-button']");"""
CLOSE_TITLE_EDITOR_JS = """
const input = document.querySelector(".node-title-editor input, .group-title-editor input");
if (input) input.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape", bubbles: true}));
document.activeElement?.blur?.();
return !!input;
"""
SELECTED_JS = """return Object.values(app.canvas.selected_nodes || {}).map((n) => n.type);"""

HELP_SHOWN_JS = """
const el = document.querySelector(".node-help-content");
const h1 = el && el.querySelector("h1");
return h1 && h1.textContent.includes(arg) ? {h1: h1.textContent, text: el.innerText, html: el.innerHTML} : null;
"""


def test_every_node_has_a_help_page():
    documented = {p.stem for p in DOCS}
    assert set(pack_categories()) == documented, (sorted(set(pack_categories()) - documented),
                                                   sorted(documented - set(pack_categories())))


def test_help_pages_open_from_the_node_info_button(ui):
    """As a user: click a node's title to select it, click "Node Info" in the selection toolbox; the help
    sidebar fetches /extensions/<pack>/docs/<Node>.md (ComfyUI frontend's place for a custom node's docs) and
    renders it as HTML."""
    host, page = ui
    page.console(clear=True)
    for md in DOCS:
        node = md.stem
        title = md.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").replace("`", "")
        # the browser keeps 250 resource timings by default; earlier tests on this page fill that buffer
        page.evaluate("performance.clearResourceTimings(); return true;")
        for attempt in range(3):  # the selection toolbox appears (and settles) after the canvas took the click
            point = page.evaluate(PLACE_NODE_JS, node)
            time.sleep(0.6)  # two title clicks within the double-click interval open the title editor instead
            page.act("#graph-canvas", "click", position=point)
            try:
                page.wait_for(INFO_BUTTON_JS, timeout=10)
                page.act("[data-testid='info-button']", timeout=10)
                break
            except FrontendError as e:
                if attempt == 2:
                    raise AssertionError(f"{node}: could not open Node Info after selecting the node "
                                         f"(selected: {page.evaluate(SELECTED_JS)}): {e}") from None
                # should a title editor have opened over the canvas anyway, close it before clicking again
                page.evaluate(CLOSE_TITLE_EDITOR_JS)
        shown = page.wait_for(HELP_SHOWN_JS, node, timeout=20)
        assert shown["h1"] == title, (node, shown["h1"])
        assert "<code>" in shown["html"] and len(shown["text"]) > 200, f"{node}: the page did not render as markdown"
        fetched = page.evaluate("""return performance.getEntriesByType("resource").map((e) => e.name)
                                   .filter((u) => u.endsWith(arg))""", f"/extensions/{host.pack_name}/docs/{node}.md")
        assert fetched, f"{node}: the help panel did not fetch the pack's docs/{node}.md"
    page.act("[aria-label='Node Library (n)']")  # close the sidebar again
    _assert_no_extension_errors(host, page)


# ---------------------------------------------------------------------------------------- a real run

ENHANCER_TE = "frontend_qwen_tiny.safetensors"

# Loader -> enhancer -> Preview as Text, built in the editor; returns the enhancer's node id.
ENHANCER_GRAPH_JS = """
await app.refreshComboInNodes();  // what pressing R does: the loaders see the file just placed
app.graph.clear();
const set = (n, name, v) => { n.widgets.find((w) => w.name === name).value = v; };
const te = LiteGraph.createNode("ZImageTextEncoderLoader"); te.pos = [100, 150]; app.graph.add(te);
set(te, "text_encoder_name", arg);
const pe = LiteGraph.createNode("ZImagePromptEnhancer"); pe.pos = [480, 150]; app.graph.add(pe);
set(pe, "prompt", "a lighthouse at dusk"); set(pe, "max_new_tokens", 16); set(pe, "temperature", 0);
const out = LiteGraph.createNode("PreviewAny"); out.pos = [940, 150]; app.graph.add(out);
te.connect(0, pe, 0);
pe.connect(0, out, 0);
return {id: pe.id, display: pe.widgets.some((w) => w.name === "zimage_enhanced_prompt")};
"""

DISPLAYED_JS = """
const w = app.graph.getNodeById(arg).widgets.find((x) => x.name === "zimage_enhanced_prompt");
return w && w.value ? w.value : null;
"""


@pytest.fixture(scope="module")
def talkative_text_encoder(comfyui_host, tiny, tmp_path_factory):
    """The tiny Qwen3 with the embedding of "\\n" set to zero. The random tiny model repeats the last token
    of the chat, "\\n", which the enhancer strips to an empty rewrite; without that embedding it repeats a
    word, so there is visible text to show."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny["text_encoder"]))
    newline = 198  # "\n" in the Qwen vocabulary (and the tiny tokenizer)
    sd["model.embed_tokens.weight"][newline] = 0
    path = tmp_path_factory.mktemp("frontend_te") / ENHANCER_TE
    save_file(sd, str(path))
    comfyui_host.put_model("text_encoders", "tokenizer", tiny["tokenizer"])  # beside the single file
    comfyui_host.put_model("text_encoders", ENHANCER_TE, path)
    yield ENHANCER_TE
    comfyui_host.remove_model("text_encoders", ENHANCER_TE)


def test_prompt_enhancer_text_appears_after_a_real_run(ui, talkative_text_encoder):
    """Queued with the editor's Run button: the server runs the enhancer on the tiny Qwen3, its ui text comes
    over the page's websocket and the extension shows it on the node, the same text /history has."""
    host, page = ui
    before = set(host.history())
    made = page.evaluate(ENHANCER_GRAPH_JS, talkative_text_encoder)
    assert made["display"] is False
    page.act("[data-testid='queue-button']")
    shown = page.wait_for(DISPLAYED_JS, made["id"], timeout=120)
    (new,) = set(host.history()) - before
    entry = host.wait_for(new, timeout=60)
    assert entry["status"]["status_str"] == "success"
    (text,) = entry["outputs"][str(made["id"])]["text"]
    assert shown == text and text.strip(), (shown, text)
    queued = entry["prompt"][2]
    assert queued[str(made["id"])]["class_type"] == "ZImagePromptEnhancer"
    assert "zimage_enhanced_prompt" not in queued[str(made["id"])]["inputs"]
    _assert_no_extension_errors(host, page)


# ---------------------------------------------------------------------------------------- screenshots

SCREENSHOT_WORKFLOWS = ("turbo_t2i", "prompt_enhancer_turbo")
LOD_SETTING = "LiteGraph.Canvas.MinFontSizeForLOD"  # below this font size (px on screen) nodes drop their text


@pytest.mark.parametrize("name", SCREENSHOT_WORKFLOWS)
def test_workflow_screenshot(ui, artifacts_dir, name):
    """A picture of the workflow in the editor, kept in test-artifacts/ for people to look at; it must show
    something (a real PNG of the window, many colours, not one flat colour)."""
    import numpy as np
    from PIL import Image

    path = WORKFLOWS_DIR / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"no workflow {path.name}")
    host, page = ui
    settings = "const s = app.extensionManager.setting; "
    lod = page.evaluate(settings + "return s.get(arg)", LOD_SETTING)
    page.evaluate(settings + "await s.set(arg, 1)", LOD_SETTING)  # the whole graph fits the window: keep the text
    try:
        page.evaluate("""
            await app.loadGraphData(arg, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
            app.canvas.deselectAll?.();
            await new Promise((r) => setTimeout(r, 300));""", json.loads(path.read_text(encoding="utf-8")))
        page.act("#graph-canvas", "press", ".")  # the editor's "fit view" shortcut
        page.evaluate("await new Promise((r) => setTimeout(r, 500));")
        out = Path(artifacts_dir) / f"workflow_{name}.png"
        out.unlink(missing_ok=True)
        page.screenshot(out)
    finally:
        page.evaluate(settings + "await s.set(arg[0], arg[1])", [LOD_SETTING, lod])
    assert out.stat().st_size > 30_000, out.stat().st_size
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (1000, 1600, 3), img.shape
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert colours > 200 and img.std() > 10, (colours, float(img.std()))
    _assert_no_extension_errors(host, page)
