"""Where the memory of ``lmkit train`` goes: RSS over time, attributed to the code running.

Runs ``lmkit train ARGS...`` in this process while a thread samples, every ``--every`` seconds,
the resident set size (``/proc/self/statm``) and the innermost ``lmkit`` frames of the main
thread. Prints, per function (innermost lmkit frame + its caller), the peak RSS seen while it
ran and the seconds sampled in it, sorted by peak; then the overall peak.

    python scripts/profile_scale_memory.py [--every 0.2] -- --input train.txt --output m ...
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


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
            r = rss_bytes()
            w = where(sys._current_frames().get(main_id))
            peak, secs = stats.get(w, (0, 0.0))
            stats[w] = (max(peak, r), secs + a.every)
            timeline.append((time.time() - t0, r, w))
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rc = cli_main(["train", *args])
    finally:
        stop.set()
        th.join()
    print(f"# peak RSS by code (sampled every {a.every}s; {len(timeline)} samples)")
    for w, (peak, secs) in sorted(stats.items(), key=lambda x: -x[1][0])[:25]:
        print(f"{peak / 2**20:9.0f} MiB {secs:7.1f}s  {w}")
    best = max(timeline, key=lambda x: x[1]) if timeline else None
    if best:
        print(f"# overall peak {best[1] / 2**20:.0f} MiB at {best[0]:.1f}s in {best[2]}")
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
