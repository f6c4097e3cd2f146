"""The package's dependencies point one way, read from every module's imports with `ast` (imports
inside functions included), and package imports sit at the top of modules.

The order, lowest first (a module may import its own layer and the ones before it):

    base (errors, version, files, config, allocator) <- models <- weights <- data <- engine <- deploy <- serve
    <- experiments <- api (resnet.train / evaluate / predict) <- cli

deploy sits below serve: evaluate and predict run through the inference backends, and export and
benchmark work on the model that serve's loader returns. The modules that only re-export moved
names for one release (resnet.inference, resnet.models.interop, ...) sit above everything: nothing
in the package may import them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "resnet"
LAYERS = ["base", "models", "weights", "data", "engine", "deploy", "serve", "experiments", "api", "cli"]
BASE = {"resnet.errors", "resnet.version", "resnet.files", "resnet.config", "resnet.allocator"}
COMPAT = {"resnet.inference", "resnet.evaluation", "resnet.eval_stream", "resnet.predict", "resnet.export",
          "resnet.benchmark", "resnet.plots", "resnet.demo", "resnet.models.interop", "resnet.data.presets"}
TOP = {"resnet", "resnet.cli", "resnet.__main__"}  # the package's facade and the command line
# Imported inside functions on purpose: optional packages (extras), and inductor, which costs
# seconds to import and only a compiled backend needs.
# The command's entry imports the command line only after the allocator relaunch (resnet/allocator.py),
# so that PyTorch is not loaded twice.
DELAYED = {("resnet.__main__", "resnet.cli")}
OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "torchao", "tensorboard", "torch.utils.tensorboard", "sklearn",
            "torch._inductor")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of `path`; relative imports resolved,
    and `from pkg import sub` counted as importing the submodule `pkg.sub` where that is a module."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(sub) for sub in ast.walk(node) if sub is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in in_function) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = any((root.parent / Path(*sub.split("."))).with_suffix(s).exists() or
                                (root.parent / Path(*sub.split(".")) / "__init__.py").exists() for s in (".py",))
                found.append((sub if is_module else target, node.lineno, id(node) in in_function))
    return found


def layer(module: str) -> int:
    if module in COMPAT:
        return len(LAYERS) + 1
    if module in TOP:
        return len(LAYERS)
    if module in BASE:
        return 0
    return LAYERS.index(module.split(".")[1])


def problems(root: Path) -> list[str]:
    """Every wrong-way import, package import inside a function, non-optional import inside a
    function, and import cycle among the modules under `root`."""
    graph: dict[str, set[str]] = {}
    found = []
    for path in sorted(root.rglob("*.py")):
        src = module_name(path, root)
        graph.setdefault(src, set())
        for target, line, inside in imports(path, root):
            where = f"{path.relative_to(root.parent)}:{line}"
            if target == root.name or target.startswith(root.name + "."):
                graph[src].add(target)
                if inside and (src, target) not in DELAYED:
                    found.append(f"{where}: imports {target} inside a function")
                if layer(target) > layer(src):
                    found.append(f"{where}: {src} imports {target}, a layer above it")
            elif inside and not any(target == o or target.startswith(o + ".") for o in OPTIONAL):
                found.append(f"{where}: imports {target} inside a function (only optional packages may)")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                out.append(stack[stack.index(nxt):] + [nxt])
            elif nxt in graph and not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)
    return out


def test_dependencies_point_one_way():
    assert problems(SRC) == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "resnet"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"__init__.py": "", "models/__init__.py": "", "models/a.py": "from . import b\n",
      "models/b.py": "from .a import x\n"}, "import cycle: resnet.models.a -> resnet.models.b -> resnet.models.a"),
    ({"__init__.py": "", "models/__init__.py": "", "models/a.py": "from ..serve import load\n",
      "serve/__init__.py": "", "serve/load.py": ""}, "resnet.models.a imports resnet.serve.load, a layer above it"),
    ({"__init__.py": "", "data/__init__.py": "", "data/a.py": "def f():\n    from ..models import zoo\n",
      "models/__init__.py": "", "models/zoo.py": ""}, "imports resnet.models.zoo inside a function"),
    ({"__init__.py": "", "data/__init__.py": "", "data/a.py": "def f():\n    import numpy\n"},
     "imports numpy inside a function (only optional packages may)"),
    ({"__init__.py": "", "engine/__init__.py": "", "engine/a.py": "from .. import inference\n",
      "inference.py": ""}, "resnet.engine.a imports resnet.inference, a layer above it"),
])
def test_the_check_finds_what_it_names(tmp_path, files, expected):
    """Each kind of problem, planted in a small package, is reported (so an empty report means something)."""
    found = problems(_package(tmp_path, files))
    assert any(expected in p for p in found), found


def test_optional_packages_may_be_imported_inside_functions(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "deploy/__init__.py": "",
                               "deploy/a.py": "def f():\n    import onnxruntime\n    from torchao import x\n"})
    assert problems(root) == []
