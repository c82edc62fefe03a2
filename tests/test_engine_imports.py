"""The engine's modules form a DAG, never import the trainer, and keep pktnin imports at module top."""

from __future__ import annotations

import ast
from pathlib import Path

import pktnin.engine

ENGINE = Path(pktnin.engine.__file__).parent
OPTIONAL = ("onnx", "openvino", "tensorrt", "pycuda", "numba", "tensorflow", "tf2onnx", "keras", "onnxconverter_common",
            "onnxruntime", "google")  # fmt: skip


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at module top?) for every import of a file, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.extend((f"{child.module}.{a.name}", top) for a in child.names)
                found.append((child.module, top))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, inner)

    visit(tree, True)
    return found


def _engine_graph() -> dict[str, set[str]]:
    modules = {f"pktnin.engine.{p.stem}" for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    return {m: {name for name, _ in _imports(ENGINE / f"{m.rsplit('.', 1)[1]}.py") if name in modules} for m in modules}


def test_engine_modules_form_a_dag():
    graph = _engine_graph()
    state: dict[str, int] = {}

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph[module]:
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path + [module, dep])}"
            if dep not in state:
                walk(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [])


def test_engine_never_imports_the_trainer_and_imports_pktnin_at_the_top():
    for path in sorted(ENGINE.glob("*.py")):
        for name, top in _imports(path):
            assert not name.startswith("pktnin.trainer"), f"{path.name} imports {name}"
            if name.startswith("pktnin") and not top:
                raise AssertionError(f"{path.name} imports {name} inside a function")
            if not top:
                assert name.split(".")[0] in OPTIONAL, f"{path.name} imports {name} inside a function"
