"""Whole-process CPU of the light verbs, this tree vs another checkout, side by side in one run.

Issue 21 ("Start-up" in docs/speed.md): a fresh ``lmkit`` process used to import every stage
(SciPy, numba, the solvers, adapt/cache, tqdm) before running any verb. This bench runs the
same commands from this tree and from ``--baseline TREE`` (e.g. the main checkout), interleaved
round by round, and prints the median CPU seconds (user + sys of the child, ``RUSAGE_CHILDREN``)
of each and their ratio (after an uncounted first round that fills numba's on-disk cache); every command's stdout (and ``score``'s output file) must be the same
bytes from both trees, or the bench stops.

    python scripts/bench_startup.py --default-model DEFAULT --mkn-model O5 --baseline /work/main
                                    [--rounds 5] [--out /tmp/bench_startup]

Rows: ``eval --help`` (interpreter + imports only); ``spm-encode`` of the test split (128k
tokens); ``eval DEFAULT --json`` (the default model on the test split); ``score O5`` on the test
split (one document per line, --workers 1); ``next DEFAULT`` (load + one top-10 query).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def cpu_of(cmd: list, tree: Path, cwd: Path) -> tuple[float, bytes]:
    """CPU s (user + sys) of ``cmd`` run with ``tree`` first on the path; and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_DATASETS_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} from {tree} failed: {p.stderr.decode()[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), p.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--default-model", required=True, help="a default model folder")
    ap.add_argument("--mkn-model", required=True, help="an order-5 model folder")
    ap.add_argument("--baseline", required=True, help="another lmkit checkout (before)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved runs of each (median)")
    ap.add_argument("--out", default="/tmp/bench_startup", help="scratch folder")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from lmkit.corpus import load_corpus
    text = out / "test.txt"
    text.write_text("\n".join(x for x in load_corpus(split="test") if x) + "\n", encoding="utf-8")
    py = [sys.executable, "-m", "lmkit.cli"]
    trees = {"this tree": HERE, "baseline": Path(a.baseline).resolve()}
    rows = {
        "eval --help": py + ["eval", "--help"],
        "spm-encode (test split)": py + ["spm-encode", "--model",
                                         str(Path(a.default_model) / "tokenizer.model"),
                                         "--input", str(text)],
        "eval DEFAULT --json": py + ["eval", a.default_model, "--json"],
        "score O5 (test split)": py + ["score", a.mkn_model, "--input", str(text), "--workers",
                                       "1", "--output"],
        "next DEFAULT": py + ["next", a.default_model, "--context", "To be or not to", "--json"],
    }
    cpu = {(r, t): [] for r in rows for t in trees}
    # round 0 is not counted: it fills each tree's numba cache (lmkit/**/__pycache__, one per
    # checkout), so a fresh worktree's first run, which compiles, is not compared with a warm one
    for rnd in range(a.rounds + 1):
        for row, cmd in rows.items():
            seen = {}
            for name, tree in trees.items():
                scored = out / f"score-{name.replace(' ', '_')}.jsonl"
                c, stdout = cpu_of(cmd + [str(scored)] if row.startswith("score") else cmd,
                                   tree, out)
                if rnd:
                    cpu[row, name].append(c)
                seen[name] = stdout if not row.startswith("score") else scored.read_bytes()
            if row != "eval --help" and len(set(seen.values())) != 1:
                sys.exit(f"{row}: the two trees' outputs differ")
    load = os.getloadavg()[0]
    print(f"median CPU s (user + sys) of {a.rounds} interleaved rounds; load average {load:.1f}")
    print(f"| command | this tree | baseline ({a.baseline}) | this / baseline |")
    print("|---|---|---|---|")
    for row in rows:
        mine = statistics.median(cpu[row, "this tree"])
        base = statistics.median(cpu[row, "baseline"])
        print(f"| {row} | {mine:.2f} | {base:.2f} | {mine / base:.2f}x |")
    print("outputs: the same bytes from both trees on every row but --help")
    return 0


if __name__ == "__main__":
    sys.exit(main())
