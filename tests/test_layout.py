"""The core package's layout: its layers import only downwards, nothing imports in a cycle, the programs stay
out of the library, modules stay small, and the flat layout's names still reach the moved modules.

Layers, lowest first (a module may import its own subpackage and any lower layer, nothing else of zimage_core):
    errors  <-  weights  <-  model  <-  adapters | sampling  <-  pipeline, prompt_enhancer  <-  tiny | client  <-  tools
(`a | b`: one layer, neither imports the other), and `client` (the headless ComfyUI client, standard library
only) imports nothing of zimage_core outside itself. The package's
`__init__`, `__main__` and the redirects of the old names (`_moved` and the four old program files) are the
package's front door, outside the layers.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "zimage_core"
LAYERS = {
    "errors": 0, "weights": 1, "model": 2, "adapters": 3, "sampling": 3, "pipeline": 4, "prompt_enhancer": 4,
    "tiny": 5, "client": 5, "tools": 6,
}
FRONT_DOOR = {"__init__", "__main__", "_moved", "api_client", "bench", "bench_quant", "gpu_check"}
MAX_TOP_LEVEL_MODULES = 12
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every zimage_core module `name` imports, at the top or inside a function (`from . import x` counts x
    when x is a module, else the package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "zimage_core")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "zimage_core":
                target = node.module
            else:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found.update(subs or [target])
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def part(name: str) -> str:
    """The first component below zimage_core: the subpackage or top-level module a module belongs to."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_subpackage_and_top_level_module_has_a_layer_or_is_the_front_door():
    parts = {part(n) for n in MODULES}
    assert parts - set(LAYERS) - FRONT_DOOR == set()


def test_lower_layers_never_import_higher_ones_or_a_sibling_at_their_own_layer():
    wrong = []
    for name, deps in GRAPH.items():
        here = part(name)
        if here in FRONT_DOOR:
            continue
        for dep in deps:
            there = part(dep)
            if there == here:
                continue
            if there not in LAYERS or LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{name} imports {dep}")
    assert wrong == []


def test_the_client_imports_nothing_of_the_library():
    wrong = [f"{n} imports {d}" for n, deps in GRAPH.items() if part(n) == "client"
             for d in deps if part(d) != "client"]
    assert wrong == []
    assert any(part(n) == "client" for n in MODULES)


def test_no_module_reaches_itself_through_its_imports():
    cycles = []
    state: dict[str, int] = {}

    def visit(name, stack):
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_top_level_holds_at_most_twelve_modules_and_no_program():
    top = sorted(p.stem for p in CORE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    # the old program names are redirects of a few lines, not programs
    for stem in ("api_client", "bench", "bench_quant", "gpu_check"):
        text = (CORE / f"{stem}.py").read_text()
        assert "redirect(__name__" in text and len(text.splitlines()) <= 6


def test_no_python_file_of_the_project_is_longer_than_600_lines():
    files = [p for d in ("zimage_core", "nodes", "tests", "workflows") for p in (ROOT / d).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in [ROOT / "__init__.py", *files]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert len(files) > 50 and long == {}


def test_the_readme_maps_every_subpackage():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    subpackages = sorted(p.parent.name for p in CORE.glob("*/__init__.py"))
    assert [s for s in subpackages if f"`{s}/`" not in section] == []


OLD_NAMES = [
    ("zimage_core.ops", "zimage_core.weights.ops"), ("zimage_core.dit_loader", "zimage_core.model.dit_loader"),
    ("zimage_core.transformer", "zimage_core.model.transformer"), ("zimage_core.lora", "zimage_core.adapters.lora"),
    ("zimage_core.lora.keys", "zimage_core.adapters.lora.keys"), ("zimage_core.controlnet", "zimage_core.adapters.controlnet"),
    ("zimage_core.schedules", "zimage_core.sampling.schedules"), ("zimage_core.api_client", "zimage_core.client"),
    ("zimage_core.api_distributed", "zimage_core.client.distributed"), ("zimage_core.cli", "zimage_core.tools.cli"),
    ("zimage_core.gpu_check", "zimage_core.tools.gpu_check"), ("zimage_core.bench_full", "zimage_core.tools.bench_full"),
]


@pytest.mark.parametrize("old,new", OLD_NAMES)
def test_an_old_module_name_gives_the_moved_module_itself_with_a_deprecation_warning(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new  # the module keeps its own identity
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_every_name_of_the_old_table_resolves():
    from zimage_core import _moved

    for old, new in _moved.MOVED.items():
        assert f"zimage_core.{new}" in MODULES, (old, new)


def test_the_old_sampling_imports_still_work():
    from zimage_core.sampling import Denoiser, Guidance, sample, sample_euler
    from zimage_core.sampling import loop

    assert (Denoiser, Guidance, sample, sample_euler) == (loop.Denoiser, loop.Guidance, loop.sample, loop.sample_euler)


def test_the_old_program_names_still_run_with_python_m():
    r = subprocess.run([sys.executable, "-m", "zimage_core.api_client", "run", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--workers" in r.stdout and "python -m zimage_core.client" in r.stderr
