"""Cost of loading a model folder as a private in-memory copy (the default) vs memory-mapped.

    python scripts/bench_load.py MODEL_DIR [--repeat 3]

Each measurement runs in a fresh process (so the peak RSS is the load's own), with the file in
the page cache (a warm-up read first, as a model used twice is). Prints per mode the median
load wall time, the peak RSS increase over the interpreter with lmkit imported, and the RSS
after the load (mapped pages that validation released are not counted), then the ratios
copy / mmap measured side by side in this one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import lmkit
from lmkit.model import LanguageModel
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
m = LanguageModel.load(sys.argv[1], mmap=sys.argv[2] == "1")
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "peak_extra_mb": (peak - base_peak) / 1024,
                  "rss_after_mb": rss_kb() / 1024}))
"""


def run(model: str, mapped: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, "1" if mapped else "0"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with open(f"{a.model}/params.npz", "rb") as f:  # warm the page cache
        while f.read(16 << 20):
            pass
    res = {}
    for _ in range(a.repeat):  # interleaved, so drift on a shared machine hits both modes
        for mapped in (False, True):
            res.setdefault(mapped, []).append(run(a.model, mapped))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in res.items()}
    import os
    size = os.path.getsize(f"{a.model}/params.npz") / 2**20
    print(f"params.npz {size:.1f} MB, {a.repeat} runs each, medians:")
    for mapped, name in ((False, "copy (default)"), (True, "mmap=True")):
        r = med[mapped]
        print(f"  {name:15s} load {r['seconds']:.3f} s, peak RSS +{r['peak_extra_mb']:.0f} MB, "
              f"RSS after load {r['rss_after_mb']:.0f} MB")
    c, m = med[False], med[True]
    print(f"  copy/mmap: load time x{c['seconds'] / m['seconds']:.2f}, "
          f"RSS after load +{c['rss_after_mb'] - m['rss_after_mb']:.0f} MB")


if __name__ == "__main__":
    main()
