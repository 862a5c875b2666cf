"""Print lmkit's import graph by layer: each module, its layer and (``--edges``) what it imports.

Usage, from the repository root: ``python scripts/import_graph.py [--edges]``. Exit code 1 if
the graph has a cycle or an upward edge. The layer table and the graph builder are the ones
``tests/test_layers.py`` checks (one definition; read its docstring for what counts as an edge).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layers_module():
    spec = importlib.util.spec_from_file_location("test_layers", ROOT / "tests" / "test_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="lmkit's import graph by layer")
    parser.add_argument("--edges", action="store_true", help="list what each module imports")
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
            else:
                print(f"    {mod}")
    for mod in by_layer.get(-1, []):
        print(f"NO LAYER: {mod} (add it to LAYERS in tests/test_layers.py)")
    up, cycle = L.upward_edges(graph), L.find_cycle(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges, "
          f"{len(up)} upward, cycle: {' -> '.join(cycle) if cycle else 'none'}")
    for a, b in up:
        print(f"  upward: {a} (L{L.layer_of(a)}) -> {b} (L{L.layer_of(b)})")
    return 1 if up or cycle or -1 in by_layer else 0


if __name__ == "__main__":
    sys.exit(main())
