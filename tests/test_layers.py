"""The import graph of lmkit/, read from the source (AST): no cycle, no upward edge.

Every ``import`` / ``from ... import`` anywhere in a module counts — at module level or inside a
function — because a function-level import is still a dependency, only a later one. Two things
are not edges: imports of third-party packages (numpy, torch, dask: not lmkit modules), and a
function-level import of the optional extra ``lmkit.neural`` (PyTorch) from outside it: that code
runs only when a neural model is asked for, and the extra is layered above the verbs because it
trains its explicit base with them (``neural.crossfit`` -> ``train``). A lookup by dotted name
(``kinds`` names each closed form ``"lmkit.closed_forms:window"``) is not an import either: it
runs only when a model is solved, which is the point — loading and scoring never import a solver.

``LAYERS`` is the order, lowest first; a module may import its own layer (without a cycle) or
any lower one. ``scripts/import_graph.py`` prints the same graph by layer.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

LMKIT = Path(__file__).resolve().parent.parent / "lmkit"

# (layer, modules). A name ending in "." stands for every module of that package not named
# elsewhere; a new module must be placed here (test_every_module_has_a_layer).
LAYERS = [
    ("base: shared types and helpers", [
        "lmkit.version", "lmkit.errors", "lmkit.progress", "lmkit.memory", "lmkit.config",
        "lmkit.fastkeys", "lmkit.native", "lmkit.jitargs", "lmkit.pool", "lmkit.sparse", "lmkit.params", "lmkit.fastscore", "lmkit.fastnll", "lmkit.io.files", "lmkit.io.scratch", "lmkit.io.readfile",
        "lmkit.io.npyfile", "lmkit.io.jsonrows", "lmkit.sortedsearch", "lmkit.io", "lmkit.ngram", "lmkit.experiments"]),
    ("data: text -> token ids", ["lmkit.corpus", "lmkit.wordcache", "lmkit.tokenizer"]),
    ("features/counts: ids -> feature rows -> Counts", [
        "lmkit.features", "lmkit.clusters", "lmkit.linepos", "lmkit.kinds", "lmkit.counts",
        "lmkit.parallel", "lmkit.distributed"]),
    ("params/scoring: the query side of SparseParams (read, score, sample, re-key)", [
        "lmkit.scoring", "lmkit.ngram.tables", "lmkit.ngram.sample", "lmkit.ngram.score",
        "lmkit.ngram.packed", "lmkit.io.store"]),
    ("model: a model object and what it does (score, generate, evaluate, adapt, load)", [
        "lmkit.cache", "lmkit.adapt", "lmkit.adapt_ngram", "lmkit.adapt_fast", "lmkit.evaluate", "lmkit.generate",
        "lmkit.model", "lmkit.mixture", "lmkit.load", "lmkit.neural.folder", "lmkit.neural.transformer",
        "lmkit.neural.data", "lmkit.neural.explicit_init", "lmkit.neural.lm"]),
    ("solvers: Counts (or a model) -> params", [
        "lmkit.heldout_nll", "lmkit.explicit", "lmkit.skipgram", "lmkit.closed_forms", "lmkit.ngram.mkn",
        "lmkit.ngram.disk", "lmkit.ngram.build", "lmkit.ngram.dask", "lmkit.solve", "lmkit.rich",
        "lmkit.rich_build", "lmkit.gradient", "lmkit.compact", "lmkit.ngram.prune", "lmkit.ngram.arpa",
        "lmkit.interpolate"]),
    ("verbs: pipelines the CLI runs", [
        "lmkit.train", "lmkit.docscore", "lmkit.cli", "lmkit"]),
    ("extras and experiments (built on the verbs, never imported by the core)", [
        "lmkit.neural", "lmkit.neural.", "lmkit.classifier", "lmkit.classifier.",
        "lmkit.experiments."]),
]
OPTIONAL = ("lmkit.neural",)  # an optional extra: function-level imports of it are not edges


def module_name(path: Path, root: Path = LMKIT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(tree: ast.AST):
    """(node, inside a function) for every import statement of a module."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, False)


def import_graph(root: Path = LMKIT) -> dict:
    """{module: set of lmkit modules it imports} for every .py file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node, in_function in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                # `from pkg import sub` imports the submodule pkg.sub
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in files else src
                           for a in node.names]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                optional = in_function and any(t == o or t.startswith(o + ".") for o in OPTIONAL) \
                    and not any(mod == o or mod.startswith(o + ".") for o in OPTIONAL)
                if t and t != mod and not optional:
                    deps.add(t)
        graph[mod] = deps
    return graph


def layer_of(mod: str) -> int:
    """Index in ``LAYERS`` of ``mod``: its exact name, else the longest package prefix ("x.")."""
    best, best_len = -1, -1
    for i, (_, names) in enumerate(LAYERS):
        for p in names:
            if mod == p:
                return i
            if p.endswith(".") and mod.startswith(p) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def upward_edges(graph: dict) -> list:
    """(a, b) where module a imports b from a higher layer."""
    return sorted((a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))


def find_cycle(graph: dict) -> list:
    """One import cycle as [m0, m1, ..., m0], or [] if the graph is acyclic."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def closure(graph: dict, mod: str) -> set:
    """Every module ``mod`` imports, directly or not."""
    seen, todo = set(), [mod]
    while todo:
        for d in graph[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m) < 0] == []


def test_no_import_cycle(graph):
    assert find_cycle(graph) == []


def test_no_upward_import(graph):
    assert upward_edges(graph) == []


SOLVERS = dict(LAYERS)["solvers: Counts (or a model) -> params"]


@pytest.mark.parametrize("query_side", ["lmkit.model", "lmkit.io.store", "lmkit.scoring",
                                        "lmkit.ngram.tables", "lmkit.ngram.sample", "lmkit.load"])
def test_the_model_and_its_scorers_import_no_solver(graph, query_side):
    assert sorted(closure(graph, query_side) & set(SOLVERS)) == []


@pytest.mark.parametrize("room", ["lmkit.ngram", "lmkit.io"])
def test_a_room_package_imports_nothing_and_lists_its_modules(room):
    """Importing one module of a room loads only that module; the package docstring names each."""
    init = LMKIT.joinpath(*room.split(".")[1:], "__init__.py")
    tree = ast.parse(init.read_text())
    assert [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] == []
    doc = ast.get_docstring(tree)
    modules = sorted(p.stem for p in init.parent.glob("*.py") if p.stem != "__init__")
    assert [m for m in modules if f"``{m}``" not in doc] == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a function-level relative import is an edge, a cycle is found."""
    pkg = tmp_path / "lmkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    g = import_graph(pkg)
    assert g["lmkit.a"] == {"lmkit.sub.b"} and g["lmkit.sub.b"] == {"lmkit.a"}
    assert find_cycle(g) in (["lmkit.a", "lmkit.sub.b", "lmkit.a"],
                             ["lmkit.sub.b", "lmkit.a", "lmkit.sub.b"])
