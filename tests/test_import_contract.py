"""The import contract: which parts of ``layerswap`` may import which (docs: README "Layout").

The arrows point one way, ``cli`` -> ``pipeline`` -> ``sweep`` -> wings -> ``io`` -> foundation, so that a wing can
be read, tested and extended without the others. :func:`check_contract` parses every module with
``ast`` (nothing is imported, so a broken module cannot hide its imports) and returns one readable
line per violation; the tests below prove it finds planted violations before trusting it on the tree.

What counts as an import of module ``M`` by module ``S`` (an edge ``S -> M``):
- every ``import M`` / ``from M import ...`` anywhere in ``S``: at module level, in a class body,
  inside a function (a lazy import) or under ``if TYPE_CHECKING:``. Type-checking imports count:
  they never run, but they couple ``S`` to ``M``'s API just the same, and the cure for one that
  breaks the contract (move the shared type down a layer) is the same as for a runtime import;
- ``importlib.import_module("M")`` (or ``__import__``) with a literal name; a registry's discovery,
  ``import_module(f"{__package__}.{name}")`` (or ``{__name__}`` in a package's ``__init__``), is
  an import of every direct submodule of that package; with any other non-literal name, every
  string constant in ``S`` that names a module of the package (the lazy-name tables of
  ``layerswap.__init__``) stands for one;
- relative imports are resolved against ``S``'s package; ``from P import x`` is an import of the
  submodule ``P.x`` when ``x`` is one, else of ``P``; ``import a.b.c`` is an import of ``a.b.c``.
  The parent packages that Python runs on the way (``a`` and ``a.b``) are not edges: every module
  would otherwise import the package root.

Cycles: the graph of those edges, minus self-imports and minus a module's imports of its own
enclosing packages (``layerswap.merge.plan`` importing ``layerswap.merge`` or ``layerswap``, which
is how a package shares names with its submodules), must have no strongly connected component of
more than one module. Lazy imports are included: a cycle hidden inside a function is still a circle
in the design (and breaks as soon as someone hoists the import).
"""

from __future__ import annotations

import ast
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "layerswap"

FOUNDATION = {"layerswap.errors", "layerswap.config", "layerswap.progress", "layerswap.figures", "layerswap.stats", "layerswap.paired_tests", "layerswap.power", "layerswap.files", "layerswap.lazy"}
WINGS = ("analysis", "finetune", "merge", "evaluate")
#: Modules outside the layout and the layer whose rules they follow (none today). A new top-level
#: module must be placed in the layout or here, with a reason, else it is reported as unclassified.
TRANSITIONAL: dict[str, str] = {}
#: Which layers each layer may import. ``None``: anything (the CLI, ``python -m`` and the root's
#: lazy public names); only the cycle rule applies to them.
ALLOWED: dict[str, set[str] | None] = {
    "foundation": {"foundation"},
    "core": {"foundation", "core"},
    **{f"wing {w}": {"foundation", "core", f"wing {w}"} for w in WINGS},
    "sweep": {"foundation", "core", "sweep", *(f"wing {w}" for w in WINGS)},
    "pipeline": {"foundation", "core", "sweep", "pipeline", *(f"wing {w}" for w in WINGS)},
    "test helper": {"foundation", "core", "test helper"},
    "cli": None,
    "root": None,
}
WHY = {
    "foundation": "foundation imports only foundation",
    "core": "the core (layerswap.io) imports only foundation and io",
    "sweep": "the sweep imports wings, core and foundation, never the pipeline or the CLI",
    "pipeline": "the pipeline imports the sweep, wings, core and foundation, never the CLI",
    "test helper": "layerswap.testing imports only core and foundation",
}


def layer_of(module: str) -> str | None:
    """The layer of a module of the package, or None when the layout does not place it."""
    parts = module.split(".")
    if module == PACKAGE:
        return "root"
    if module in FOUNDATION:
        return "foundation"
    if module in TRANSITIONAL:
        return TRANSITIONAL[module]
    top = parts[1]
    if top == "io":
        return "core"
    if top in WINGS:
        return f"wing {top}"
    if top in ("sweep", "pipeline"):
        return top
    if top in ("cli", "__main__"):
        return "cli"
    if module == "layerswap.testing":
        return "test helper"
    return None


def why(layer: str) -> str:
    if layer.startswith("wing "):
        return "a wing imports only foundation, core and itself (never another wing, never the package root)"
    return WHY[layer]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    file: str  # relative to the root
    line: int
    kind: str  # "module level", "in a function", "type-checking only", "dynamic"

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def find_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under ``root/layerswap``."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> list[tuple[ast.AST, str]]:
    """Every import-like node with its kind, walking into functions, classes and ``if`` blocks."""
    found: list[tuple[ast.AST, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module level":
                child_kind = "in a function"
            if isinstance(child, (ast.Import, ast.ImportFrom, ast.Call)):
                found.append((child, child_kind))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        found.append((stmt, "type-checking only"))
                    visit(stmt, "type-checking only")
                for stmt in child.orelse:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        found.append((stmt, child_kind))
                    visit(stmt, child_kind)
                continue
            visit(child, child_kind)

    visit(tree, "module level")
    return found


def _dynamic_name(call: ast.Call) -> tuple[str | None, bool]:
    """For ``importlib.import_module(...)``/``__import__(...)``: (what it names, is such a call).

    What it names: the literal module name, or ``"{__package__}."``/``"{__name__}."`` for a
    discovery of a package's submodules (``f"{__package__}.{name}"``), or None.
    """
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__", "lazy_exports") or not call.args:
        return None, False
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value, True
    if isinstance(arg, ast.JoinedStr) and len(arg.values) >= 3:
        first, dot = arg.values[0], arg.values[1]
        if (
            isinstance(first, ast.FormattedValue)
            and isinstance(first.value, ast.Name)
            and first.value.id in ("__package__", "__name__")
            and isinstance(dot, ast.Constant)
            and dot.value == "."
        ):
            return "{" + first.value.id + "}.", True
    return None, True


def collect_edges(root: Path, modules: dict[str, Path]) -> tuple[list[Edge], list[str]]:
    """All imports of the package's own modules, and the ones that name no module (as violations)."""
    edges: list[Edge] = []
    problems: list[str] = []
    for module, path in modules.items():
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text(), filename=rel)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]

        def add(target: str, node: ast.AST, kind: str, *, submodule: str | None = None, module=module, rel=rel) -> None:  # noqa: ANN001
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                return
            if submodule and f"{target}.{submodule}" in modules:
                target = f"{target}.{submodule}"
            if target not in modules:
                problems.append(f"{rel}:{node.lineno}: imports {target}, which is not a module of the package")
            elif target != module:
                edges.append(Edge(module, target, rel, node.lineno, kind))

        dynamic_unnamed = None
        for node, kind in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node, kind)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    add(base, node, kind, submodule=None if alias.name == "*" else alias.name)
            else:
                name, is_dynamic = _dynamic_name(node)
                if name in ("{__package__}.", "{__name__}."):  # discovery: every direct submodule
                    owner = package if name == "{__package__}." or path.name == "__init__.py" else None
                    found = [m for m in modules if owner and m.rpartition(".")[0] == owner]
                    for sub in found:
                        add(sub, node, "dynamic")
                    if not found:
                        dynamic_unnamed = node
                elif name:
                    add(name, node, "dynamic")
                elif is_dynamic:
                    dynamic_unnamed = node
        if dynamic_unnamed is not None:  # import_module(variable): the module names it may receive
            for const in ast.walk(tree):
                if isinstance(const, ast.Constant) and isinstance(const.value, str) and const.value in modules:
                    add(const.value, const, "dynamic")
    # one edge per (source, target, line): ``from a import x, y`` is one import
    unique = {(e.source, e.target, e.line): e for e in edges}
    return list(unique.values()), problems


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    out.append(sorted(comp))
    return out


def _cycle_in(component: list[str], graph: dict[str, dict[str, Edge]]) -> list[Edge]:
    """One concrete cycle through the component's first module (breadth-first, so a shortest one)."""
    members = set(component)
    start = component[0]
    paths: dict[str, list[Edge]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target, edge in sorted(graph.get(node, {}).items()):
            if target == start:
                return paths[node] + [edge]
            if target in members and target not in paths:
                paths[target] = paths[node] + [edge]
                queue.append(target)
    raise AssertionError(f"no cycle through {start} in {component}")  # cannot happen in a component


def check_contract(root: Path) -> list[str]:
    """Violations of the import contract by the package under ``root`` (one line each; empty: none)."""
    modules = find_modules(root)
    edges, violations = collect_edges(root, modules)
    for module, path in modules.items():
        if layer_of(module) is None:
            violations.append(
                f"{path.relative_to(root)}:1: unclassified module {module}: place it in the layout "
                "(foundation, io, a wing, sweep, cli) or list it in TRANSITIONAL with its layer"
            )
    for e in sorted(edges, key=lambda e: (e.file, e.line, e.target)):
        src, dst = layer_of(e.source), layer_of(e.target)
        allowed = ALLOWED.get(src) if src else None
        if src is None or dst is None or allowed is None or dst in allowed:
            continue
        violations.append(f"{e.where()}: {src} {e.source} imports {e.target} ({dst}) [{e.kind}]: {why(src)}")
    graph: dict[str, dict[str, Edge]] = {}
    for e in sorted(edges, key=lambda e: (e.file, e.line)):
        if not e.source.startswith(e.target + ".") and e.target != e.source:  # own enclosing package: not a cycle
            graph.setdefault(e.source, {}).setdefault(e.target, e)
    for comp in strongly_connected(sorted(modules), {k: set(v) for k, v in graph.items()}):
        if len(comp) > 1:
            cycle = _cycle_in(comp, graph)
            steps = " -> ".join(f"{e.source} ({e.where()}, {e.kind})" for e in cycle) + f" -> {cycle[0].source}"
            violations.append(f"{cycle[0].where()}: import cycle among {', '.join(comp)}: {steps}: no cycles between modules")
    return violations


# --------------------------------------------------------------------------------------------
# The real tree
# --------------------------------------------------------------------------------------------


def test_real_tree_keeps_the_contract():
    violations = check_contract(ROOT)
    assert not violations, f"{len(violations)} import-contract violations:\n" + "\n".join(violations)


# --------------------------------------------------------------------------------------------
# The test of the test: a small fake package, clean, then with one planted violation at a time
# --------------------------------------------------------------------------------------------

CLEAN = {
    "__init__.py": """
        from layerswap.errors import LayerswapError
        _LAZY = {"merge": ("layerswap.merge", None)}
        def __getattr__(name):
            import importlib
            return importlib.import_module(_LAZY[name][0])
    """,
    "__main__.py": "from layerswap.cli import main\n",
    "errors.py": "class LayerswapError(Exception): ...\n",
    "config.py": "from .errors import LayerswapError\nimport yaml\n",
    "progress.py": "import os\n",
    "figures.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from matplotlib.figure import Figure\n",
    "io/__init__.py": "from layerswap.io.reader import read\nfrom . import dtypes\n",
    "io/dtypes.py": "from layerswap.errors import LayerswapError\n",
    "io/reader.py": """
        from typing import TYPE_CHECKING
        from layerswap import errors
        from layerswap.io import dtypes
        if TYPE_CHECKING:
            import torch
        def read():
            from layerswap.config import yaml
    """,
    "merge/__init__.py": "from layerswap.merge.plan import plan\nfrom .methods import METHODS\n",
    "merge/plan.py": """
        from layerswap.io.reader import read
        from layerswap.merge import methods  # the sibling, through the package
        def plan():
            from layerswap.merge import METHODS  # its own package's __init__: not a cycle
    """,
    "merge/methods/__init__.py": "from .linear import linear\nMETHODS = {}\n",
    "merge/methods/linear.py": "from ...io import reader\nfrom ... import errors\n",
    "evaluate/__init__.py": "import importlib\nRUNNER = importlib.import_module('layerswap.evaluate.runner')\n",
    "evaluate/runner.py": "import layerswap.io.reader\nimport torch\n",
    "evaluate/tasks/__init__.py": "from .registry import TASKS\n",
    "evaluate/tasks/registry.py": """
        import importlib
        from layerswap.evaluate.tasks.spec import TaskSpec
        TASKS = [importlib.import_module(f"{__package__}.{n}") for n in ("mgsm",)]
    """,
    "evaluate/tasks/spec.py": "class TaskSpec: ...\n",
    "evaluate/tasks/mgsm.py": "from layerswap.evaluate.tasks.spec import TaskSpec\nfrom layerswap.evaluate import runner\n",
    "analysis/__init__.py": "",
    "finetune/__init__.py": "from layerswap.io import dtypes\n",
    "sweep/__init__.py": "from layerswap.merge import plan\nfrom layerswap.evaluate import runner\nfrom layerswap.analysis import *\n",
    "cli/__init__.py": "import layerswap\nfrom layerswap.sweep import *\ndef main():\n    from layerswap.testing import tiny\n",
    "testing.py": "from layerswap.io.reader import read\ntiny = None\n",
}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return tmp_path


def test_a_clean_fake_tree_reports_nothing(tmp_path):
    assert check_contract(_tree(tmp_path, CLEAN)) == []


PLANTED = {
    "lazy wing to wing": (
        {"merge/x.py": "def f():\n    import layerswap.evaluate\n"},
        ["layerswap/merge/x.py:2: wing merge layerswap.merge.x imports layerswap.evaluate (wing evaluate) [in a function]"],
    ),
    "relative wing to wing, resolved to the submodule": (
        {"merge/y.py": "from ..evaluate import runner\n"},
        ["layerswap/merge/y.py:1: wing merge layerswap.merge.y imports layerswap.evaluate.runner (wing evaluate) [module level]"],
    ),
    "wing to wing in a method": (
        {"analysis/a.py": "class A:\n    def f(self):\n        from layerswap.finetune import dtypes\n"},
        ["layerswap/analysis/a.py:3: wing analysis layerswap.analysis.a imports layerswap.finetune (wing finetune)"],
    ),
    "wing to wing for type checking": (
        {"finetune/t.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from layerswap.merge.plan import plan\n"},
        [
            "layerswap/finetune/t.py:3: wing finetune layerswap.finetune.t imports layerswap.merge.plan (wing merge) [type-checking only]"
        ],
    ),
    "wing to wing through importlib": (
        {"evaluate/d.py": "import importlib\ndef f():\n    return importlib.import_module('layerswap.merge')\n"},
        ["layerswap/evaluate/d.py:3: wing evaluate layerswap.evaluate.d imports layerswap.merge (wing merge) [dynamic]"],
    ),
    "wing imports the package root": (
        {"merge/r.py": "import layerswap\nfrom layerswap import LayerswapError\n"},
        [
            "layerswap/merge/r.py:1: wing merge layerswap.merge.r imports layerswap (root)",
            "layerswap/merge/r.py:2: wing merge layerswap.merge.r imports layerswap (root)",
        ],
    ),
    "core imports a wing lazily": (
        {"io/bad.py": "def f():\n    from layerswap.merge import plan\n"},
        ["layerswap/io/bad.py:2: core layerswap.io.bad imports layerswap.merge.plan (wing merge) [in a function]"],
    ),
    "core imports a wing and the root": (
        {"io/root.py": "from .. import errors, merge\nfrom layerswap import LayerswapError\n"},
        [
            "layerswap/io/root.py:1: core layerswap.io.root imports layerswap.merge (wing merge)",
            "layerswap/io/root.py:2: core layerswap.io.root imports layerswap (root)",
        ],
    ),
    "foundation imports the core": (
        {"progress.py": "from layerswap.io import reader\n"},
        ["layerswap/progress.py:1: foundation layerswap.progress imports layerswap.io.reader (core)"],
    ),
    "sweep imports the cli": (
        {"sweep/loop.py": "def run():\n    from layerswap.cli import main\n"},
        ["layerswap/sweep/loop.py:2: sweep layerswap.sweep.loop imports layerswap.cli (cli) [in a function]"],
    ),
    "the test helper imports a wing": (
        {"testing.py": "from layerswap.merge import plan\n"},
        ["layerswap/testing.py:1: test helper layerswap.testing imports layerswap.merge.plan (wing merge)"],
    ),
    "an unclassified module": (
        {"newthing.py": "import os\n"},
        ["layerswap/newthing.py:1: unclassified module layerswap.newthing"],
    ),
    "an import of no module": (
        {"io/gone.py": "from layerswap.checkpointz import X\n"},
        ["layerswap/io/gone.py:1: imports layerswap.checkpointz, which is not a module of the package"],
    ),
    "a task that imports the registry which discovers it": (
        {"evaluate/tasks/mgsm.py": "from layerswap.evaluate.tasks.registry import TaskSpec\n"},
        ["import cycle among layerswap.evaluate.tasks.mgsm, layerswap.evaluate.tasks.registry"],
    ),
    "a discovery in a core package finds a wing's module planted there": (
        {
            "io/__init__.py": "import importlib\nfor n in ('x',):\n    importlib.import_module(f'{__name__}.{n}')\n",
            "io/x.py": "import layerswap.merge\n",
        },
        ["layerswap/io/x.py:1: core layerswap.io.x imports layerswap.merge (wing merge)"],
    ),
    "a two-module cycle through lazy imports": (
        {"io/a.py": "def f():\n    from layerswap.io import b\n", "io/b.py": "def g():\n    from . import a\n"},
        [
            "layerswap/io/a.py:2: import cycle among layerswap.io.a, layerswap.io.b: "
            "layerswap.io.a (layerswap/io/a.py:2, in a function) -> layerswap.io.b (layerswap/io/b.py:2, in a function) -> layerswap.io.a"
        ],
    ),
    "a three-module cycle across packages": (
        {
            "io/c1.py": "from layerswap.io import c2\n",
            "io/c2.py": "import layerswap.config\n",
            "config.py": "from .errors import LayerswapError\ndef f():\n    from layerswap.io.c1 import x\n",
        },
        [
            "layerswap/config.py:3: foundation layerswap.config imports layerswap.io.c1 (core) [in a function]",
            "import cycle among layerswap.config, layerswap.io.c1, layerswap.io.c2",
        ],
    ),
    "a cycle between two subpackages of a wing": (
        {
            "merge/methods/linear.py": "from layerswap.merge import plan\n",
            "merge/plan.py": "from layerswap.merge.methods import linear\n",
        },
        ["import cycle among layerswap.merge.methods.linear, layerswap.merge.plan"],
    ),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_each_planted_violation_is_reported(tmp_path, name):
    files, expected = PLANTED[name]
    violations = check_contract(_tree(tmp_path, {**CLEAN, **files}))
    for want in expected:
        assert any(v.startswith(want) or want in v for v in violations), f"{name}: {want!r} not in {violations}"
    assert len(violations) == len(expected), violations  # nothing else: the clean tree stays clean


def test_a_planted_violation_in_a_copy_of_the_real_tree_is_reported(tmp_path):
    """The checker on the real modules finds a lazy wing-to-wing import planted into one of them."""
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    before = set(check_contract(tmp_path))
    target = tmp_path / PACKAGE / "merge" / "__init__.py"
    lines = target.read_text().splitlines()
    target.write_text("\n".join(lines + ["", "", "def _planted():", "    import layerswap.evaluate", ""]))
    new = set(check_contract(tmp_path)) - before
    line = len(lines) + 4
    want = f"layerswap/merge/__init__.py:{line}: wing merge layerswap.merge imports layerswap.evaluate (wing evaluate) [in a function]"
    assert f"{want}: {why('wing merge')}" in new
    assert all(v.startswith(f"layerswap/merge/__init__.py:{line}:") for v in new), new  # at most a cycle it closes


# --------------------------------------------------------------------------------------------
# Decide once: only the sweep's selection module chooses a leader, a best swap or a best baseline
# --------------------------------------------------------------------------------------------

#: The one module that decides (docs: DESIGN "Decisions once"); reports, figures, the pipeline and the
#: notebooks read its decisions.
DECIDES = "layerswap.sweep.selection"
#: Functions that choose among a sweep's candidates: defined in :data:`DECIDES` only.
DECISION_NAMES = frozenset(
    {"leader", "select", "best_swap", "best_baseline", "named_best_swap", "with_best_swap", "finalists", "decide_scope", "decide_sweep"}
)
#: The pandas idiom for picking the best row of a table: used in :data:`DECIDES` only.
PICKERS = frozenset({"idxmax", "idxmin"})


def check_decisions(root: Path) -> list[str]:
    """Places outside :data:`DECIDES` that define a deciding function or pick a best row (one line each)."""
    out = []
    for module, path in find_modules(root).items():
        if module == DECIDES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in DECISION_NAMES:
                out.append(f"{rel}:{node.lineno}: {module} defines {node.name}(): only {DECIDES} decides (read its Decisions)")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PICKERS:
                out.append(f"{rel}:{node.lineno}: {module} picks a best row with .{node.func.attr}(): only {DECIDES} decides (read its Decisions)")
    return out


def test_only_the_selection_module_decides():
    violations = check_decisions(ROOT)
    assert not violations, "\n".join(violations)


def test_a_planted_decision_outside_the_selection_module_is_reported(tmp_path):
    root = _tree(tmp_path, {
        **CLEAN,
        "sweep/selection.py": "def leader(t):\n    return t.idxmax()\n",
        "sweep/report.py": "def best_swap(t):\n    return t\n\n\ndef draw(t):\n    return t['value'].idxmin()\n",
    })
    assert check_decisions(root) == [
        "layerswap/sweep/report.py:1: layerswap.sweep.report defines best_swap(): only layerswap.sweep.selection decides (read its Decisions)",
        "layerswap/sweep/report.py:6: layerswap.sweep.report picks a best row with .idxmin(): only layerswap.sweep.selection decides (read its Decisions)",
    ]


if __name__ == "__main__":  # ``python tests/test_import_contract.py``: list the violations
    found = check_contract(ROOT)
    print("\n".join(found) or "the import contract holds")
    sys.exit(1 if found else 0)
