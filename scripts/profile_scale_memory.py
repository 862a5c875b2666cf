"""Where the memory of ``lmkit train`` goes: RSS over time, attributed to the code running.

Runs ``lmkit train ARGS...`` in this process while a thread samples, every ``--every`` seconds,
the resident set size (``/proc/self/statm``), the proportional set size (``Pss`` of
``/proc/self/smaps_rollup``: what ``scripts/bench_scale_default.py`` sums over the process
tree; with one process it is the tree) and the innermost ``lmkit`` frames of the main thread.
Prints, per function (innermost lmkit frame + its caller), the peak RSS seen while it ran, the
peak anonymous RSS (resident less file-backed pages: what memory-mapped arrays, whose pages
the kernel may drop and read back, do not count in), the peak PSS and the seconds sampled in
it, sorted by peak RSS, then the top by anonymous RSS and by PSS; then the overall peaks.

    python scripts/profile_scale_memory.py [--every 0.2] -- --input train.txt --output m ...
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from lmkit.memory import proc_kib_field

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> tuple[int, int]:
    """(resident, anonymous resident) bytes: statm's resident, and resident less shared
    (file-backed and shared-memory pages)."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    return int(fields[1]) * PAGE, (int(fields[1]) - int(fields[2])) * PAGE


def pss_bytes() -> int:
    """``Pss`` of ``/proc/self/smaps_rollup`` in bytes (0 where the kernel has no such file)."""
    return proc_kib_field("/proc/self/smaps_rollup", "Pss") or 0


def where(frame) -> str:
    """'module.func <- module.func' of the two innermost frames inside lmkit."""
    names = []
    while frame is not None and len(names) < 2:
        mod = frame.f_globals.get("__name__", "")
        if mod.startswith("lmkit"):
            names.append(f"{mod.split('.')[-1]}.{frame.f_code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return " <- ".join(names) or "(outside lmkit)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=0.2)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    from lmkit.cli import main as cli_main
    main_id = threading.get_ident()
    stats: dict = {}
    stop = threading.Event()
    t0 = time.time()
    timeline = []

    def sample():
        while not stop.wait(a.every):
            r, anon = rss_bytes()
            pss = pss_bytes()
            w = where(sys._current_frames().get(main_id))
            peak, peak_anon, secs, peak_pss = stats.get(w, (0, 0, 0.0, 0))
            stats[w] = (max(peak, r), max(peak_anon, anon), secs + a.every, max(peak_pss, pss))
            timeline.append((time.time() - t0, r, w, anon, pss))
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rc = cli_main(["train", *args])
    finally:
        stop.set()
        th.join()
    print(f"# peak RSS (and anonymous RSS) by code (sampled every {a.every}s; "
          f"{len(timeline)} samples)")
    def row(w, peak, peak_anon, secs, peak_pss):
        print(f"{peak / 2**20:9.0f} MiB ({peak_anon / 2**20:6.0f} anon, {peak_pss / 2**20:6.0f} "
              f"PSS) {secs:7.1f}s  {w}")
    for w, v in sorted(stats.items(), key=lambda x: -x[1][0])[:25]:
        row(w, *v)
    print("# peak anonymous RSS by code (top 12)")
    for w, v in sorted(stats.items(), key=lambda x: -x[1][1])[:12]:
        row(w, *v)
    print("# peak PSS by code (top 12)")
    for w, v in sorted(stats.items(), key=lambda x: -x[1][3])[:12]:
        row(w, *v)
    best = max(timeline, key=lambda x: x[1]) if timeline else None
    if best:
        print(f"# overall peak {best[1] / 2**20:.0f} MiB at {best[0]:.1f}s in {best[2]}")
        anon = max(timeline, key=lambda x: x[3])
        print(f"# overall anonymous peak {anon[3] / 2**20:.0f} MiB at {anon[0]:.1f}s in "
              f"{anon[2]}")
        pss = max(timeline, key=lambda x: x[4])
        print(f"# overall PSS peak {pss[4] / 2**20:.0f} MiB at {pss[0]:.1f}s in {pss[2]}")
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
