#!/usr/bin/env python3
"""Builds the example workflows defined in graphs_basic.py and graphs_advanced.py.

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

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import graphs_advanced as adv  # noqa: E402
import graphs_basic as basic  # noqa: E402
import workflow_support as ws  # noqa: E402
from workflow_format import dumps, index_entry, render  # noqa: E402

GRAPHS = (basic.turbo_t2i, basic.base_cfg, basic.prompt_enhancer_turbo, basic.lora_stack, basic.img2img, basic.inpaint,
          basic.adaln_variety, basic.native_mixed, basic.ksampler_bridge, basic.low_vram_fast, adv.controlnet_canny,
          adv.nag_turbo, adv.controlnet_depth_pose, adv.controlnet_inpaint, adv.controlnet_tile_upscale, adv.nag_ksampler,
          adv.distributed_turbo_t2i, adv.lora_training)


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
