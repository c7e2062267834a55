"""The editor extension's JavaScript with plain Node.js, no ComfyUI: `node --check` on every web/js file and unit
checks of the pure helpers in web/js/zimage_util.js (skipped when `node` is missing; the browser tests are
tests/test_frontend.py).

Run:  python -m pytest -q tests/test_web_js.py
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from frontend import node_executable, pack_categories  # noqa: E402

REPO_ROOT = HERE.parent
WEB_JS = REPO_ROOT / "web" / "js"
JS_FILES = sorted(WEB_JS.glob("*.js"))


def _node():
    node = node_executable()
    if not node:
        pytest.skip("Node.js (`node`) is not installed: the JavaScript checks need it")
    return node


def test_web_js_exists():
    assert (WEB_JS / "zimage.js").is_file() and (WEB_JS / "zimage_util.js").is_file()
    assert not list((REPO_ROOT / "web").rglob("node_modules")), "node_modules must never be in the pack"


@pytest.mark.parametrize("path", JS_FILES, ids=[p.name for p in JS_FILES])
def test_js_syntax(path, tmp_path):
    node = _node()
    copy = tmp_path / (path.stem + ".mjs")  # .mjs: parsed as an ES module by every Node version
    shutil.copyfile(path, copy)
    r = subprocess.run([node, "--check", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{path.name} has a syntax error:\n{r.stderr}"


HELPER_CASES_JS = r"""
import * as u from "./zimage_util.mjs";
const values = ["custom", "1024x1024 (1:1)", "1216x832 (3:2)", "832x1216 (2:3)"];
const out = {
  parse: ["1216x832 (3:2)", "custom", "", null, "640x1536 (5:12)", "0x5"].map(u.parsePreset),
  snap: [1000, 1008, 1016, 7, 5000, -3, "1200", NaN, 24].map((v) => u.snapSize(v)),
  snap_limits: u.snapSize(1000, { step: 64, min: 64, max: 960 }),
  match: [u.matchPreset(values, 1216, 832), u.matchPreset(values, 1000, 832), u.matchPreset(values, "832", "1216")],
  match_no_custom: u.matchPreset(["1216x832 (3:2)"], 5, 5),
  style: ["Z-Image/loaders", "Z-Image/adaLN", "Z-Image/nope", "loaders", "", null].map((c) => u.categoryStyle(c)),
  pack: [u.packNameFromUrl("http://h:1/extensions/my%20pack/js/zimage.js"), u.packNameFromUrl("nonsense")],
  ours: [
    u.isPackNode({ name: "ZImageSampler", category: "Z-Image/sampling", python_module: "custom_nodes.p" }, "p"),
    u.isPackNode({ name: "Foo", category: "x", python_module: "custom_nodes.p" }, "p"),
    u.isPackNode({ name: "ZImageSampler", category: "Z-Image/sampling", python_module: "custom_nodes.q" }, "p"),
    u.isPackNode({ name: "ZImageFunControlnet", category: "advanced/loaders", python_module: "comfy_extras.x" }, "p"),
    u.isPackNode({ name: "KSampler", category: "sampling", python_module: "nodes" }, null),
    u.isPackNode(null, "p"),
  ],
  text: [u.messageText(["a", "b"]), u.messageText("c"), u.messageText(null), u.messageText([["x", "y"]])],
  styles: Object.keys(u.CATEGORY_STYLES),
};
console.log(JSON.stringify(out));
"""


def test_js_helpers(tmp_path):
    node = _node()
    shutil.copyfile(WEB_JS / "zimage_util.js", tmp_path / "zimage_util.mjs")
    (tmp_path / "cases.mjs").write_text(HELPER_CASES_JS, encoding="utf-8")
    r = subprocess.run([node, str(tmp_path / "cases.mjs")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["parse"] == [[1216, 832], None, None, None, [640, 1536], None]
    assert out["snap"] == [1008, 1008, 1024, 16, 4096, 16, 1200, 16, 32]
    assert out["snap_limits"] == 960
    assert out["match"] == ["1216x832 (3:2)", "custom", "832x1216 (2:3)"]
    assert out["match_no_custom"] == "1216x832 (3:2)"
    assert out["style"][0]["color"] and out["style"][1]["color"] and out["style"][2:] == [None] * 4
    assert out["pack"] == ["my pack", None]
    assert out["ours"] == [True, True, True, False, False, False]
    assert out["text"] == ["a\n\nb", "c", None, "xy"]
    # every category of the pack has a colour
    cats = {c.split("/", 1)[1].lower() for c in pack_categories().values()}
    assert cats and cats <= set(out["styles"]), sorted(cats - set(out["styles"]))
