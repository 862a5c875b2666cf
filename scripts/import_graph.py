"""Print lmkit's import graph by layer: each module, its layer and (``--edges``) what it imports.

Usage, from the repository root: ``python scripts/import_graph.py [--edges] [--roles]
[--longest N]``. Exit code 1 if the graph has a cycle or an upward edge. ``--roles`` adds each
module's role (the first line of its docstring); ``--longest N`` also lists the N longest
functions of lmkit/ (methods and nested functions included, lines from ``def`` to the last
line). The layer table and the graph builder are the ones ``tests/test_layers.py`` checks (one definition; read its docstring for what counts as an edge).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layers_module():
    spec = importlib.util.spec_from_file_location("test_layers", ROOT / "tests" / "test_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _path(mod: str) -> str:
    """``lmkit.ngram.mkn`` -> ``lmkit/ngram/mkn.py`` (a package: its ``__init__.py``)."""
    p = ROOT / Path(*mod.split("."))
    return str((p / "__init__.py" if p.is_dir() else p.with_suffix(".py")).relative_to(ROOT))


def _role(mod: str) -> str:
    """The first line of a module's docstring."""
    doc = ast.get_docstring(ast.parse((ROOT / _path(mod)).read_text(encoding="utf-8"))) or ""
    return doc.split("\n")[0]


def longest_functions(root: Path, n: int) -> list[tuple[int, str]]:
    """The ``n`` longest functions under ``root`` as ``(lines, "path:line qualified.name")``,
    longest first (ties by name)."""
    found = []

    def walk(node, path, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append((child.end_lineno - child.lineno + 1,
                                  f"{path}:{child.lineno} {name}"))
                walk(child, path, name + ".")
            else:
                walk(child, path, prefix)

    for f in sorted(root.rglob("*.py")):
        walk(ast.parse(f.read_text(encoding="utf-8")), f.relative_to(root.parent), "")
    return sorted(found, key=lambda x: (-x[0], x[1]))[:n]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="lmkit's import graph by layer")
    parser.add_argument("--edges", action="store_true", help="list what each module imports")
    parser.add_argument("--roles", action="store_true",
                        help="each module's role: the first line of its docstring")
    parser.add_argument("--longest", type=int, default=0, metavar="N",
                        help="also list the N longest functions")
    args = parser.parse_args(argv)
    L = _layers_module()
    graph = L.import_graph(ROOT / "lmkit")
    by_layer: dict = {}
    for mod in sorted(graph):
        by_layer.setdefault(L.layer_of(mod), []).append(mod)
    for index, (name, _) in enumerate(L.LAYERS):
        mods = by_layer.get(index, [])
        print(f"L{index} {name} — {len(mods)} modules")
        for mod in mods:
            if args.edges:
                deps = ", ".join(f"{d} (L{L.layer_of(d)})" for d in sorted(graph[mod])) or "-"
                print(f"    {mod} -> {deps}")
            elif args.roles:
                print(f"    {_path(mod):38s} {_role(mod)}")
            else:
                print(f"    {mod}")
    for mod in by_layer.get(-1, []):
        print(f"NO LAYER: {mod} (add it to LAYERS in tests/test_layers.py)")
    up, cycle = L.upward_edges(graph), L.find_cycle(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges, "
          f"{len(up)} upward, cycle: {' -> '.join(cycle) if cycle else 'none'}")
    for a, b in up:
        print(f"  upward: {a} (L{L.layer_of(a)}) -> {b} (L{L.layer_of(b)})")
    if args.longest:
        print(f"the {args.longest} longest functions (lines):")
        for lines, where in longest_functions(ROOT / "lmkit", args.longest):
            print(f"  {lines:4d}  {where}")
    return 1 if up or cycle or -1 in by_layer else 0


if __name__ == "__main__":
    sys.exit(main())
