"""The shape of the package (CONVENTIONS.md, "floors; imports only go down"), checked from the source.

Every import of every module of `llm_unlearn` is read with `ast`, at module level and inside
functions alike, and three rules are enforced:

1. No import cycle. Importing ``a.b.c`` also runs the packages ``a`` and ``a.b`` (their
   ``__init__``), so those edges count as well, except a module's own parent packages (which are
   already being imported when it runs).
2. Imports only go down: a module imports from its own floor or the floors below (`FLOORS`, the
   floor plan of CONVENTIONS.md), never from above. A module missing from `FLOORS` fails the test:
   place it on its floor. Two refinements of the plan: ``llm_unlearn`` itself (the lazy public
   facade, which imports no module eagerly) is floor 0, and the mask object and its enforcement
   (``masks.weight_mask``, ``masks.enforce``) sit on floor 2 with `models` (which re-applies a
   saved element mask when it loads a masked LoRA adapter), below the mask scores and selection.
3. Imports sit at the top of the module. A function-level import is allowed only
   - for an optional heavy dependency: bitsandbytes, gguf, matplotlib, optuna, lm_eval (`OPTIONAL`);
   - inside ``llm_unlearn/cli/``: the command imports its implementation (package modules) and
     heavy libraries (`CLI_LAZY`: torch, transformers, trl, peft, datasets, accelerate, …) inside
     the command functions, so that ``llm-unlearn --help`` starts without loading them;
   - in the few places listed in `LAZY_EXCEPTIONS`, each with its reason.
   Never to dodge a cycle: a cycle means a function lives on the wrong floor.

Scripts (``recipes/``, ``eval/``, ``benchmarks/``) use the public library, never ``llm_unlearn.cli``.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "llm_unlearn"

# module (or package prefix) -> floor; the longest matching prefix wins
FLOORS = {
    "llm_unlearn": 0,
    "llm_unlearn.distributed": 1, "llm_unlearn.errors": 1, "llm_unlearn.perf": 1, "llm_unlearn.runinfo": 1,
    "llm_unlearn.outputs": 1, "llm_unlearn.checks": 1, "llm_unlearn.interrupt": 1, "llm_unlearn.threads": 1,
    "llm_unlearn.optim": 1, "llm_unlearn.memory": 2, "llm_unlearn.console": 1,
    "llm_unlearn.scoring": 2, "llm_unlearn.models": 2, "llm_unlearn.data": 2,
    "llm_unlearn.masks.weight_mask": 2, "llm_unlearn.masks.enforce": 2,
    "llm_unlearn.masks": 3,
    "llm_unlearn.trainers": 4, "llm_unlearn.eval": 4, "llm_unlearn.s3t": 4,
    "llm_unlearn.unlearn": 5, "llm_unlearn.finetune": 5, "llm_unlearn.tune": 5, "llm_unlearn.tune_config": 5, "llm_unlearn.demo": 5,
    "llm_unlearn.hub": 5,
    "llm_unlearn.cli": 6, "llm_unlearn.__main__": 6,
}
OPTIONAL = ("bitsandbytes", "gguf", "matplotlib", "optuna", "lm_eval")
CLI_LAZY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub", "safetensors",
            "tokenizers", "numpy", "scipy", "yaml")
# (module, imported module) -> why it is imported inside a function
LAZY_EXCEPTIONS = {
    ("llm_unlearn.masks.enforce", "torch.distributed.tensor._utils"):
        "private DTensor helper, needed only once an FSDP2-sharded parameter is met; torch builds "
        "without distributed support (and torch < 2.5) do not have it",
}
SCRIPT_DIRS = ("recipes", "eval", "benchmarks")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what is imported, absolute (a package module or a library)
    lineno: int
    in_function: bool


def module_files(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module `name` refers to (``pkg.mod.attr`` -> ``pkg.mod``), else None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def read_imports(modname: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_init = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(modname, a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module != "__future__":
                base = child.module or ""
                if child.level:
                    parts = modname.split(".") if is_init else modname.split(".")[:-1]
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in child.names:
                    full = f"{base}.{a.name}"
                    # `from pkg import submodule` imports the submodule; `from mod import name` the module
                    target = full if full in modules else base
                    found.append(Import(modname, target, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                                           ast.ClassDef)))

    visit(tree, False)
    return found


def collect(root: Path = REPO, package: str = PACKAGE) -> tuple[dict[str, Path], list[Import]]:
    modules = module_files(root, package)
    return modules, [imp for m, f in modules.items() for imp in read_imports(m, f, modules)]


def import_graph(modules: dict[str, Path], imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        target = _resolve(imp.target, modules)
        if target is None:
            continue
        chain = target.split(".")
        # the module and every package above it that is not one of the importer's own parents
        for k in range(1, len(chain) + 1):
            node = ".".join(chain[:k])
            if node in modules and node != imp.module and not imp.module.startswith(node + "."):
                graph[imp.module].add(node)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def floor_of(module: str, floors: dict[str, int] = FLOORS) -> int | None:
    name = module
    while name:
        if name in floors:
            return floors[name]
        name = name.rpartition(".")[0]
    return None


def upward_imports(modules: dict[str, Path], imports: list[Import], floors: dict[str, int] = FLOORS) -> list[str]:
    bad = []
    for imp in imports:
        target = _resolve(imp.target, modules)
        if target is None or target == imp.module or imp.module.startswith(target + "."):
            continue
        src, dst = floor_of(imp.module, floors), floor_of(target, floors)
        if dst > src:
            bad.append(f"{modules[imp.module].name}:{imp.lineno} {imp.module} (floor {src}) imports "
                       f"{target} (floor {dst})")
    return bad


def _top(name: str) -> str:
    return name.split(".")[0]


def misplaced_lazy_imports(modules: dict[str, Path], imports: list[Import], package: str = PACKAGE) -> list[str]:
    bad = []
    for imp in imports:
        if not imp.in_function or _top(imp.target) in OPTIONAL:
            continue
        if imp.module == f"{package}.cli" or imp.module.startswith(f"{package}.cli."):
            if _top(imp.target) == package or _top(imp.target) in CLI_LAZY:
                continue
        if any(imp.module == m and (imp.target == t or imp.target.startswith(t + "."))
               for m, t in LAZY_EXCEPTIONS):
            continue
        kind = "package module" if _top(imp.target) == package else (
            "standard library" if _top(imp.target) in sys.stdlib_module_names else "library")
        bad.append(f"{modules[imp.module]}:{imp.lineno} imports {imp.target} ({kind}) inside a function")
    return bad


# ---- the package --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def house():
    return collect()


def test_every_module_has_a_floor(house):
    modules, _ = house
    assert [m for m in modules if floor_of(m) is None] == []


def test_no_import_cycle(house):
    modules, imports = house
    assert find_cycles(import_graph(modules, imports)) == []


def test_imports_only_go_down(house):
    modules, imports = house
    assert upward_imports(modules, imports) == []


def test_function_level_imports_only_for_optional_dependencies(house):
    modules, imports = house
    assert misplaced_lazy_imports(modules, imports) == []


def test_scripts_use_the_public_library_not_the_cli():
    offenders = []
    for d in SCRIPT_DIRS:
        for f in sorted((REPO / d).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{f.relative_to(REPO)}:{node.lineno}" for n in names
                              if n == f"{PACKAGE}.cli" or n.startswith(f"{PACKAGE}.cli.")]
    assert offenders == []


# ---- the checks themselves catch what they should ----------------------------------------------


def test_the_checks_catch_a_cycle_an_upward_import_and_a_lazy_import(tmp_path):
    pkg = tmp_path / "llm_unlearn"
    (pkg / "masks").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from llm_unlearn.trainers import Trainer\n")  # floor 1 -> 4
    (pkg / "trainers.py").write_text("from llm_unlearn import errors\nTrainer = 1\n")
    (pkg / "models.py").write_text("def load():\n    import json\n    from llm_unlearn import errors\n"
                                   "    import matplotlib\n")
    (pkg / "masks" / "__init__.py").write_text("from .select import select\n")
    (pkg / "masks" / "select.py").write_text("from llm_unlearn.masks.weight_mask import WeightMask\n"
                                             "def select():\n    pass\n")
    (pkg / "masks" / "weight_mask.py").write_text("WeightMask = 1\n")
    modules, imports = collect(tmp_path, "llm_unlearn")
    assert find_cycles(import_graph(modules, imports)) == [["llm_unlearn.errors", "llm_unlearn.trainers"]]
    assert [b.split(" ", 1)[1] for b in upward_imports(modules, imports)] == [
        "llm_unlearn.errors (floor 1) imports llm_unlearn.trainers (floor 4)"]
    lazy = misplaced_lazy_imports(modules, imports)
    assert len(lazy) == 2 and "json (standard library)" in lazy[0] and "llm_unlearn.errors (package" in lazy[1]
