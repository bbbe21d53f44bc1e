"""The package's import graph follows the layer order of docs/contributing.md.

Every module of ``step`` (and ``kernels/``, imported as ``step.kernels``) is parsed with
``ast``; each import, at module level or inside a function, must reach the importing
module's own layer or one below it, and the module-level imports must form no cycle.
The test reads source files only: nothing is imported, so it runs without Triton or CuPy.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # (layer, module patterns), bottom first; a module belongs to the first that matches
    ("kernels", ("step.kernels", "step.kernels.*")),
    ("base", ("step._version", "step.text_table", "step.environment")),
    ("native", ("step.native", "step.native.sources", "step.native.cuda",
                "step.native.cuda.loader", "step.native.cpu", "step.native.cpu.loader")),
    ("ops", ("step.ops", "step.ops.*")),
    ("backends", ("step.native.*",)),
    ("functional", ("step.functional",)),
    ("nn", ("step.nn", "step.nn.*")),
    ("optim", ("step.optim", "step.optim.*")),
    ("export", ("step.export", "step.export.*")),
    ("api", ("step",)),
    ("tasks", ("step.tasks", "step.tasks.*", "step.integrations", "step.integrations.*")),
    ("train", ("step.train", "step.train.*")),
    ("bench", ("step.bench", "step.bench.*")),
    ("cli", ("step.cli",)),
]  # fmt: skip
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
KERNEL_IMPORTS = {"torch", "triton"} | set(sys.stdlib_module_names)
"""What a kernel module may import besides other kernels: the bottom imports nothing of
step above it, and Triton only in the modules that define Triton kernels."""


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / "step").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    for path in sorted((ROOT / "kernels").glob("*.py")):
        files[f"step.kernels.{path.stem}"] = path
    return files


MODULES = _module_files()


def layer_of(module: str) -> str:
    for name, patterns in LAYERS:
        if any(fnmatchcase(module, p) for p in patterns):
            return name
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/contributing.md")


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for each import in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top_level: set[int] = set()

    def mark(body: list[ast.stmt]) -> None:  # statements run when the module is imported
        for stmt in body:
            top_level.add(id(stmt))
            if isinstance(stmt, ast.If) and not _is_type_checking(stmt):
                mark(stmt.body)
                mark(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                mark(stmt.body)
                for handler in stmt.handlers:
                    mark(handler.body)
                mark(stmt.orelse)
                mark(stmt.finalbody)

    mark(tree.body)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # ``from pkg import name`` imports the submodule pkg.name if there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        found += [(t, node.lineno, id(node) in top_level) for t in targets]
    return found


def _own(target: str) -> str | None:
    """The project module an import names (``step.ops.dispatch.choose`` -> its module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_reaches_a_higher_layer():
    wrong = []
    for module in MODULES:
        rank = RANK[layer_of(module)]
        for target, line, _ in _imports(module):
            own = _own(target) if target.split(".")[0] == "step" else None
            if own is not None and own != module and RANK[layer_of(own)] > rank:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} "
                             f"({layer_of(module)}) imports {own} ({layer_of(own)})")  # fmt: skip
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(wrong)


def test_kernels_import_only_torch_triton_and_each_other():
    wrong = []
    for module in MODULES:
        if layer_of(module) != "kernels":
            continue
        for target, line, _ in _imports(module):
            top = target.split(".")[0]
            if top == "step" and target.startswith("step.kernels"):
                continue
            if top not in KERNEL_IMPORTS:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_at_module_level():
    graph = {
        module: sorted({own for target, _, top in _imports(module) if top
                        for own in [_own(target)] if own is not None and own != module})
        for module in MODULES
    }  # fmt: skip
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in graph[module]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", ["step.kernels", "step.ops", "step"])
def test_the_package_init_is_in_the_graph(module):
    assert module in MODULES


def test_step_imports_and_runs_without_triton():
    """Triton is optional: with it absent, ``import step`` works, the ops run on their
    other backends, and the triton backend says why it cannot run."""
    code = (
        "import sys\n"
        "class Hide:  # every finder, blind to triton: as if it were not installed\n"
        "    def __init__(self, finder):\n"
        "        self.finder = finder\n"
        "    def __getattr__(self, name):\n"
        "        return getattr(self.finder, name)\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'triton':\n"
        "            return None\n"
        "        return self.finder.find_spec(name, path, target)\n"
        "sys.meta_path[:] = [Hide(f) for f in sys.meta_path]\n"
        "import torch, step\n"
        "w = torch.randn(8, 16)\n"
        "assert int(step.nm_mask(w, 2, 4).sum()) == 64\n"
        "assert 'Triton is not installed' in step.backends('cpu')['triton'].reason\n"
        "assert 'triton' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env
