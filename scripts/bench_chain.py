"""The default model's suffix chain: in memory (before) vs the bucketed pipeline, side by side.

Both sides get the same token buffer (the first ``--lines`` lines of ``--input``, encoded
with ``--tokenizer``; the ``rich_build`` layout, pad 3) and solve the order-5 chain
(``Suffix(1..4)``) with entry buckets:

- ``in-memory``: what ``rich_build._chain_task`` did before: the whole chain counted
  (``counts.count_in_parts``), solved by ``solve_ngram``, entry buckets per stored value;
- ``buckets B``: ``rich_build._chain_task`` now (``ngram.build.solve_bucket_files``), with
  ``max_memory`` set so that it uses about B buckets (B = 1: no ``--max-memory``).

Each variant runs in its own forked process, one after the other: wall seconds, CPU seconds
(user + sys of that process) and its peak RSS above the RSS it started with (``ru_maxrss``
less the buffer it inherited). Every variant's solution is checked equal, bit for bit, to
the in-memory one. Ratios (CPU s: the machine may be shared, wall s is then noisy) are
against the in-memory variant, measured in this run.

    python scripts/bench_chain.py --input TRAIN.txt --tokenizer TOK.model [--lines 200000] \\
        [--buckets 1 4 16]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_memory(text, spec, edges):
    """The chain task before the bucketed pipeline (counted whole, ``solve_ngram``)."""
    from lmkit.explicit import count_buckets
    from lmkit.kinds import groups_from_spec
    from lmkit.ngram.mkn import solve_ngram
    groups = groups_from_spec(spec)
    chain = text.count(groups)
    mkn = solve_ngram(chain)
    out = []
    for g in range(len(groups)):
        F = chain.F[g].tocsr()
        F.sort_indices()
        out.append((mkn.S[g], mkn.keys[g], count_buckets(F.data, edges).astype(np.int8)))
    return mkn.q, out


def bucketed(text, spec, edges, max_memory, folder):
    from lmkit.rich_build import _Job, _chain_task
    job = _Job(text, None, None, edges, max_memory=max_memory, scratch=folder)
    q, out, _, _, _ = _chain_task(job, spec, None)
    return q, out


def run_forked(fn):
    """``fn()`` in a forked child: ``(result digest, wall s, cpu s, peak RSS above start)``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        start = _rss()
        t0, c0 = time.perf_counter(), os.times()
        q, out = fn()
        wall = time.perf_counter() - t0
        c1 = os.times()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
        digest = hash((q.tobytes(), tuple((S.data.tobytes(), np.asarray(S.indices).tobytes(),
                                           np.asarray(S.indptr, dtype=np.int64).tobytes(),
                                           np.asarray(k).tobytes(), b.tobytes())
                                          for S, k, b in out)))
        msg = f"{digest} {wall} {c1.user - c0.user + c1.system - c0.system} {peak}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        msg = f.read()
    os.waitpid(pid, 0)
    d, wall, cpu, peak = msg.split()
    return int(d), float(wall), float(cpu), int(peak)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--buckets", type=int, nargs="+", default=[1, 4, 16])
    a = ap.parse_args(argv)
    from lmkit.features import Suffix
    from lmkit.kinds import group_spec
    from lmkit.ngram.build import BYTES_PER_POSITION
    from lmkit.rich import DEFAULT_ENTRY_EDGES
    from lmkit.rich_build import _Text
    from lmkit.tokenizer import Tokenizer
    tok = Tokenizer.load(a.tokenizer)
    with open(a.input, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for _, line in zip(range(a.lines), f)]
    seqs = tok.encode_batch(lines)
    text = _Text([seqs], tok.vocab_size, tok.bos_id, tok.eos_id, 3)
    del seqs, lines
    n = len(text.pos)
    spec, edges = group_spec([Suffix(m) for m in range(1, 5)]), tuple(DEFAULT_ENTRY_EDGES)
    print(f"# {n} target positions, V={tok.vocab_size}, order-5 chain; load "
          f"{os.getloadavg()[0]:.1f}; each variant in its own forked process", file=sys.stderr)
    rows = [("in-memory (before)", lambda: in_memory(text, spec, edges))]
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as folder:
        for B in a.buckets:
            mm = None if B == 1 else int(n * BYTES_PER_POSITION * 2 / B) + 1
            rows.append((f"buckets {B} ({'no max_memory' if mm is None else f'max_memory {mm >> 20} MiB'})",
                         lambda mm=mm: bucketed(text, spec, edges, mm, Path(folder))))
        results = [(name, *run_forked(fn)) for name, fn in rows]
    ref = results[0]
    print("| chain build | wall s | CPU s | peak RSS above start MiB | x CPU s | x peak | same |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, d, wall, cpu, peak in results:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {peak / 2**20:.0f} | {cpu / ref[3]:.2f} | "
              f"{peak / ref[4]:.2f} | {'yes' if d == ref[1] else 'NO'} |")
    return 0 if all(r[1] == ref[1] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
