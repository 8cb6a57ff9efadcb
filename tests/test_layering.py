"""The import graph follows docs/ARCHITECTURE.md: no cycle inside clapkit, encoders below Lightning and
interop, inference objects free of LightningModules (issue 16)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "clapkit"


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
