"""API-format workflows: read and check a file, set inputs by node id / title / class, set seeds."""
from __future__ import annotations

import copy
import difflib
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

from .errors import OverrideError, OverrideWarning, WorkflowError


def _is_link(value) -> bool:
    """A link in the API format: ``[source_node_id, output_index]``."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


UI_FORMAT_HELP = ("This is an editor (UI) workflow, the format ComfyUI's Save writes; the API needs the API "
                  "format. In ComfyUI open the workflow and use Workflow > Export (API) (older versions: enable "
                  "'Dev mode' in the settings, then 'Save (API Format)'), and pass that file instead.")


def check_graph(data, source: str = "workflow") -> dict:
    """Check that ``data`` is an API-format graph ``{node_id: {"class_type", "inputs"}}`` and return it.
    Accepts a ``{"prompt": graph, ...}`` wrapper (a saved /prompt request). Raises WorkflowError."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and ("links" in data or "version" in data):
        raise WorkflowError(f"{source}: {UI_FORMAT_HELP}")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]
    if not isinstance(data, dict):
        raise WorkflowError(f"{source}: an API-format workflow is a JSON object mapping node ids to "
                            f"{{'class_type': ..., 'inputs': {{...}}}}, not a {type(data).__name__}.")
    if not data:
        raise WorkflowError(f"{source}: the workflow has no nodes.")
    for nid, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            hint = (f" {UI_FORMAT_HELP}" if isinstance(node, (list, dict)) and nid in ("nodes", "links",
                                                                                      "groups", "extra") else "")
            raise WorkflowError(f"{source}: node '{nid}' is not an API-format node (an object with a "
                                f"'class_type' string and an 'inputs' object).{hint}")
        if not isinstance(node.get("inputs", None), dict):
            raise WorkflowError(f"{source}: node '{nid}' ({node['class_type']}) has no 'inputs' object.")
    return data


def load_workflow(path) -> dict:
    """Read an API-format workflow (JSON file; ``"-"`` = stdin). Raises WorkflowError with the reason."""
    path = str(path)
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise WorkflowError(f"{name}: no such workflow file.") from None
    except IsADirectoryError:
        raise WorkflowError(f"{name}: is a folder, not a workflow file.") from None
    except UnicodeDecodeError:
        raise WorkflowError(f"{name}: not a text (UTF-8) file; give the workflow's .json file.") from None
    except OSError as e:
        raise WorkflowError(f"{name}: cannot read ({e.strerror or e}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{name}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
    return check_graph(data, name)


def _describe(graph: dict, nid: str) -> str:
    node = graph.get(nid) or {}
    title = (node.get("_meta") or {}).get("title")
    ct = node.get("class_type", "?")
    return f"{nid} ({ct}{', ' + repr(title) if title and title != ct else ''})"


def resolve_node(graph: dict, ref: str) -> str:
    """Node id for ``ref``: an id, else a title (``_meta.title``), else a class_type; each must be unique.
    Raises OverrideError naming the candidates."""
    ref = str(ref)
    if ref in graph:
        return ref
    for what, key in (("title", lambda n: (n.get("_meta") or {}).get("title")),
                      ("class_type", lambda n: n.get("class_type"))):
        hits = [nid for nid, n in graph.items() if key(n) == ref]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise OverrideError(f"'{ref}' is ambiguous: {len(hits)} nodes have this {what}: "
                                f"{', '.join(_describe(graph, h) for h in hits)}. Use the node id instead.",
                                candidates=hits)
    names = {}
    for nid, n in graph.items():
        for nm in (nid, (n.get("_meta") or {}).get("title"), n.get("class_type")):
            if nm:
                names.setdefault(str(nm), []).append(nid)
    close = difflib.get_close_matches(ref, list(names), n=3, cutoff=0.6)
    close_ids = list(dict.fromkeys(nid for nm in close for nid in names[nm]))
    listing = ", ".join(_describe(graph, nid) for nid in graph)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise OverrideError(f"no node '{ref}' in the workflow (give a node id, a title or a unique class_type).{hint} "
                        f"Nodes: {listing}.", candidates=close_ids)


def parse_value(text: str):
    """``--set`` value: JSON when it parses (numbers, true/false/null, "quoted", [links]), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_override(item: str):
    """``"node.input=value"`` -> ``(node_ref, input_name, value)``. The node part may contain dots
    (titles); the input is what follows the last dot before the first '='."""
    key, eq, raw = str(item).partition("=")
    node_ref, dot, input_name = key.rpartition(".")
    if not eq or not dot or not node_ref.strip() or not input_name.strip():
        raise OverrideError(f"--set '{item}': expected NODE.INPUT=VALUE, e.g. 5.seed=42, "
                            f"ZImageSampler.steps=8 or \"Positive prompt.text=a red fox\".")
    return node_ref.strip(), input_name.strip(), parse_value(raw)


def _set_input(graph, nid, input_name, value, item, warn):
    inputs = graph[nid].setdefault("inputs", {})
    if isinstance(value, list):
        if not _is_link(value):
            raise OverrideError(f"--set '{item}': a list value is a link in the API format and must be "
                                f"[node_id, output_index], e.g. [\"4\", 0].")
        value = [str(value[0]), value[1]]
        if value[0] not in graph:
            raise OverrideError(f"--set '{item}': the link points to node '{value[0]}', which is not in the "
                                f"workflow.")
    if input_name in inputs:
        if _is_link(inputs[input_name]) and not _is_link(value):
            src = inputs[input_name]
            raise OverrideError(f"--set '{item}': input '{input_name}' of node {_describe(graph, nid)} is "
                                f"connected to node {_describe(graph, str(src[0]))} (output {src[1]}); a "
                                f"value cannot replace a link. Give a link [\"node_id\", output_index] to "
                                f"rewire it, or set the input on the source node.")
    else:
        warn(f"node {_describe(graph, nid)} has no input '{input_name}' in the workflow; adding it "
             f"(fine for an optional input, ComfyUI ignores or rejects unknown ones).")
    inputs[input_name] = value


def _default_warn(message):
    warnings.warn(message, OverrideWarning, stacklevel=3)


def apply_overrides(graph: dict, overrides, warn: Callable[[str], None] | None = None) -> dict:
    """A copy of ``graph`` with each ``"node.input=value"`` applied (see :func:`resolve_node`,
    :func:`parse_value`). Replacing a link with a plain value is refused; setting an input the node does not
    have yet is allowed with a warning (``warn(message)``, default: an :class:`OverrideWarning`)."""
    warn = warn or _default_warn
    out = copy.deepcopy(graph)
    for item in overrides or ():
        node_ref, input_name, value = parse_override(item)
        _set_input(out, resolve_node(out, node_ref), input_name, value, item, warn)
    return out


SEED_INPUTS = ("seed", "noise_seed")


def set_seed(graph: dict, seed: int, warn: Callable[[str], None] | None = None) -> dict:
    """A copy of ``graph`` with every (unlinked) ``seed`` / ``noise_seed`` input set to ``seed``."""
    warn = warn or _default_warn
    out = copy.deepcopy(graph)
    n = 0
    for node in out.values():
        inputs = node.get("inputs") or {}
        for k in SEED_INPUTS:
            if k in inputs and not _is_link(inputs[k]):
                inputs[k] = int(seed)
                n += 1
    if not n:
        warn("--seed: the workflow has no seed input to set.")
    return out

