"""The package's import graph: no cycles, and the layers stacked as docs/architecture.md draws them.

Imports are read from the source (ast), those inside functions included and those under `if TYPE_CHECKING:`
left out, so a lazy import cannot hide a dependency. Stacked layers, lowest first:

    base < kernels < packets < engine < scoring < distributed < api < cli

A module imports its own layer or lower ones. trainer and dataset stand beside the stack: they may use base
up to engine, the command line may use them, and nothing on the scoring path (kernels to api) imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pktnin"

STACK = ["base", "kernels", "packets", "engine", "scoring", "distributed", "api", "cli"]
SIDE = "side"
# First match wins: a module's layer by the longest name prefix listed.
LAYERS = {
    "pktnin.layout": "base",
    "pktnin.schema": "base",
    "pktnin.errors": "base",
    "pktnin.atomic": "base",
    "pktnin.version": "base",
    "pktnin.stages": "base",
    "pktnin.outdir": "base",
    "pktnin.storage": "base",
    "pktnin.names": "base",
    "pktnin.extras": "base",
    "pktnin.flow_features": "base",
    "pktnin.server_names": "base",
    "pktnin.kernels": "kernels",
    "pktnin.checkpoint": "engine",  # a checkpoint's files and metadata, read by the export and the trainer
    "pktnin.keras_layers": "engine",
    "pktnin.packets": "packets",
    "pktnin.rowfile": "packets",
    "pktnin.synth": "packets",
    "pktnin.engine": "engine",
    "pktnin.scoring": "scoring",
    "pktnin.flow_decide": "scoring",
    "pktnin.distributed": "distributed",
    "pktnin.api": "api",
    "pktnin.measure": "api",
    "pktnin": "api",  # the package root: its lazy attributes are the API
    "pktnin.cli": "cli",
    "pktnin.__main__": "cli",
    "pktnin.trainer": SIDE,
    "pktnin.dataset": SIDE,
}

KNOWN_CYCLES: list[set[str]] = []
KNOWN_LAYER_BREAKS: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def import_graph() -> dict[str, set[str]]:
    """module -> the pktnin modules it imports (anywhere in the file, TYPE_CHECKING blocks excepted)."""
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                found = known(target) if target.split(".")[0] == "pktnin" else None
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def layer_of(module: str) -> str:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module}: not in a layer; add it to LAYERS in {Path(__file__).name}")


def allowed(src: str, dst: str) -> bool:
    a, b = layer_of(src), layer_of(dst)
    if b == SIDE:
        return a in (SIDE, "cli")
    if a == SIDE:
        return STACK.index(b) <= STACK.index("engine")
    return STACK.index(b) <= STACK.index(a)


def test_the_scan_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    graph = import_graph()
    assert "pktnin.api" in graph["pktnin"]  # imported inside the root's __getattr__
    assert graph["pktnin.scoring.run"] >= {"pktnin.scoring.units", "pktnin.outdir"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_layers_import_only_downwards():
    graph = import_graph()
    breaks = sorted(
        f"{src} ({layer_of(src)}) imports {dst} ({layer_of(dst)})"
        for src, targets in graph.items()
        for dst in targets
        if not allowed(src, dst) and (src, dst) not in KNOWN_LAYER_BREAKS
    )
    assert not breaks, "\n".join(breaks)
