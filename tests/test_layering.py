"""The import graph follows the layer order of docs/ARCHITECTURE.md: every module imports only its
own layer or lower ones (lazy imports inside functions count: they run too), there is no cycle
inside clapkit, and the inference objects load no Lightning, torchmetrics or LightningModule."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "clapkit"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

#: The layers, bottom first: a module may import its own layer and the ones before it. Entries are
#: what sits directly in ``src/clapkit`` (a sub-package ``name/`` or a module ``name.py``);
#: ``__init__.py`` is the package root ``clapkit`` itself. docs/ARCHITECTURE.md shows the same table.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("utils", ("utils/", "configs/")),
    ("audio", ("audio/",)),
    ("io", ("io/",)),
    ("encoders", ("encoders/",)),
    ("interop", ("interop/",)),
    ("hub", ("hub/",)),
    ("inference", ("inference/",)),
    ("export", ("export/",)),
    ("training", ("datamodules/", "lightning_modules/", "callbacks/")),
    ("benchmark, compat", ("benchmark/", "compat/")),
    ("commands", ("commands/",)),
    ("entry points", ("__init__.py", "__main__.py", "cli.py")),
)

#: Imports that still point from a lower layer to a higher one, as (importer, imported). This set
#: only shrinks: each entry is a fix owed (move the code to the lower layer, or take the import
#: out), a new back-arrow fails test_no_import_from_a_higher_layer, and an entry that no longer
#: occurs fails test_known_back_arrows_still_occur until it is deleted here. It must reach empty.
KNOWN_BACK_ARROWS: frozenset[tuple[str, str]] = frozenset()

#: The package root holds the entry points only; everything else lives in a sub-package.
MAX_ROOT_MODULES = 8


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports, at module level or inside functions (lazy imports count:
    they run too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    raw: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            raw.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
            raw.update(subs)
            if len(subs) < len(node.names):
                raw.add(module)
    return raw


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    internal, external = {}, {}
    for name, path in modules.items():
        raw = _imports(name, path, modules)
        external[name] = raw
        resolved = set()
        for dep in raw:
            while dep and dep not in modules:
                dep = dep.rpartition(".")[0]
            if dep and dep != name:
                resolved.add(dep)
        internal[name] = resolved
    return internal, external


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _entry(module: str) -> str:
    """The ``LAYERS`` entry a dotted module name belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__.py"
    return f"{parts[1]}/" if (PACKAGE / parts[1]).is_dir() else f"{parts[1]}.py"


def _layer(module: str) -> int:
    for index, (_, entries) in enumerate(LAYERS):
        if _entry(module) in entries:
            return index
    raise KeyError(f"{module}: {_entry(module)} is in no layer of LAYERS")


def _back_arrows() -> set[tuple[str, str]]:
    graph, _ = _graph()
    return {(name, dep) for name, deps in graph.items() for dep in deps if _layer(dep) > _layer(name)}


def _documented_layers() -> list[tuple[int, str, set[str]]]:
    """``(number, name, entries)`` of each row of the table under ``## Layers`` in
    docs/ARCHITECTURE.md (first column ``<number> <name>``, second the backquoted entries)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.fullmatch(r"(\d+) (.+)", cells[0]) if line.startswith("|") else None
        if found:
            rows.append((int(found[1]), found[2], set(re.findall(r"`([^`]+)`", cells[1]))))
    return sorted(rows)


def test_the_graph_sees_the_package():
    graph, _ = _graph()
    assert {"clapkit.inference.load", "clapkit.hub.native", "clapkit.io.checkpoint", "clapkit.encoders.htsat"} <= set(graph)
    assert "clapkit.hub.native" in graph["clapkit.inference.load"] and "clapkit.io.checkpoint" in graph["clapkit.hub.native"]


def test_no_import_cycle_inside_clapkit():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_the_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_encoders_import_neither_lightning_nor_interop():
    _, external = _graph()
    forbidden = ("lightning", "pytorch_lightning", "clapkit.lightning_modules", "clapkit.interop", "clapkit.commands")
    offenders = {
        name: sorted(d for d in deps if d.startswith(forbidden))
        for name, deps in external.items()
        if name.startswith("clapkit.encoders")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_package_entry_has_exactly_one_layer():
    on_disk = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
               if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"}
    listed = [entry for _, entries in LAYERS for entry in entries]
    assert len(listed) == len(set(listed))
    assert set(listed) == on_disk


def test_no_import_from_a_higher_layer():
    new = _back_arrows() - KNOWN_BACK_ARROWS
    assert new == set(), "imports from a lower layer to a higher one (LAYERS): " + ", ".join(
        f"{a} -> {b}" for a, b in sorted(new))


def test_known_back_arrows_still_occur():
    # A fixed back-arrow leaves the list, so the list cannot go stale or hide a new one.
    gone = KNOWN_BACK_ARROWS - _back_arrows()
    assert gone == set(), "no longer imported, delete from KNOWN_BACK_ARROWS: " + ", ".join(
        f"{a} -> {b}" for a, b in sorted(gone))


def test_known_back_arrows_really_point_up():
    assert all(_layer(b) > _layer(a) for a, b in KNOWN_BACK_ARROWS)


def test_every_import_form_is_seen(tmp_path):
    # Module level, inside a function, `from x import y`, `import x.y`, relative imports.
    package = tmp_path / "clapkit" / "encoders" / "separation"
    package.mkdir(parents=True)
    source = package / "probe.py"
    source.write_text(
        "import clapkit.io.checkpoint\n"
        "from clapkit.hub import native\n"
        "from clapkit.audio.preprocess import InferenceConfig\n"
        "from ..tower import TowerSet\n"
        "from . import stft\n"
        "def lazy():\n"
        "    from ...inference import load\n"
        "    import clapkit.commands.demo as demo\n"
    )
    modules = _modules()
    raw = _imports("clapkit.encoders.separation.probe", source, modules)
    assert {"clapkit.io.checkpoint", "clapkit.hub.native", "clapkit.audio.preprocess", "clapkit.encoders.tower",
            "clapkit.encoders.separation.stft", "clapkit.inference.load", "clapkit.commands.demo"} <= raw
    higher = {m for m in raw if m in modules and _layer(m) > _layer("clapkit.encoders.separation.probe")}
    assert higher == {"clapkit.hub.native", "clapkit.inference.load", "clapkit.commands.demo"}


def test_layer_table_matches_the_architecture_doc():
    documented = _documented_layers()
    expected = [(index, name, set(entries)) for index, (name, entries) in enumerate(LAYERS)]
    assert documented == expected


def test_the_package_root_holds_few_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules


def test_imported_modules_at_run_time():
    # What actually lands in sys.modules: encoders without Lightning or interop; the inference
    # API (CLAPModel, SeparationModel) without Lightning, torchmetrics or any LightningModule.
    code = """
import importlib, json, pkgutil, sys
import clapkit.encoders
for info in pkgutil.walk_packages(clapkit.encoders.__path__, "clapkit.encoders."):
    importlib.import_module(info.name)
encoders = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")
                  or m.startswith(("clapkit.interop", "clapkit.lightning_modules")))
import clapkit.inference.clap, clapkit.inference.separation
inference = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")
                   or m.startswith("clapkit.lightning_modules"))
print(json.dumps({"encoders": encoders, "inference": inference, "n": len(sys.modules)}))
"""
    env = {"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["n"] > 100  # the imports really ran
    assert found["encoders"] == []
    assert found["inference"] == []
