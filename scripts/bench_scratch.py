"""The cost of a marked temporary folder and of the sweep, side by side (io/scratch.py).

- ``mkdtemp`` + ``rmdir`` (before) against ``make_temp_dir`` + ``rmtree`` (now: the owner
  marker is written, fsynced and renamed into place), ``--n`` folders each, in ``FOLDER``;
- ``sweep_stale`` of a folder holding 10,000 files and 100 folders of this (live) process
  (every marker read, nothing removed), and of TMPDIR as it is.

Milliseconds per call, wall and CPU (user + sys of this process), two rounds.

    python scripts/bench_scratch.py FOLDER [--n 200]
"""
import argparse
import os
import shutil
import tempfile
import time

from lmkit.io.scratch import make_temp_dir, sweep_stale


def per_call(fn, n):
    """(wall ms, CPU ms) per call of ``fn`` over ``n`` calls."""
    t, w = os.times(), time.perf_counter()
    for _ in range(n):
        fn()
    t2 = os.times()
    return ((time.perf_counter() - w) / n * 1e3,
            (t2.user + t2.system - t.user - t.system) / n * 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    root = a.folder
    os.makedirs(root, exist_ok=True)
    for _ in range(2):
        before = per_call(lambda: os.rmdir(tempfile.mkdtemp(prefix="lmkit-rich-", dir=root)), a.n)
        now = per_call(lambda: shutil.rmtree(make_temp_dir("lmkit-rich-", dir=root)), a.n)
        print(f"mkdtemp+rmdir {before[0]:.2f} ms wall {before[1]:.2f} ms CPU; "
              f"make_temp_dir+rmtree {now[0]:.2f} ms wall {now[1]:.2f} ms CPU")
    big = tempfile.mkdtemp(prefix="bench-sweep-", dir=root)
    try:
        for i in range(10000):
            open(os.path.join(big, f"f{i}"), "w").close()
        for _ in range(100):
            make_temp_dir("lmkit-spill-", dir=big)
        tmp = tempfile.gettempdir()
        for _ in range(2):
            s = per_call(lambda: sweep_stale(big, log=lambda m: None), 20)
            t = per_call(lambda: sweep_stale(None, log=lambda m: None), 20)
            print(f"sweep of 10,000 files + 100 live lmkit folders {s[0]:.2f} ms wall "
                  f"{s[1]:.2f} ms CPU; of {tmp} ({len(os.listdir(tmp))} entries) "
                  f"{t[0]:.2f} ms wall {t[1]:.2f} ms CPU")
    finally:
        shutil.rmtree(big)


if __name__ == "__main__":
    main()
