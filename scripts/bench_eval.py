"""Evaluation speed of lmkit's default model vs encode + KenLM query, side by side in one run.

Both sides score the same text (the ``test`` split of the built-in corpus, as ``lmkit eval``
does by default) with the same SentencePiece tokenizer:

- lmkit: ``python -m lmkit.cli eval DEFAULT_DIR --json`` as a whole process (interpreter start,
  imports, model load, encode, scoring): its CPU seconds (user + sys, ``RUSAGE_CHILDREN``);
- KenLM: an order-5 MKN model (``lmkit train --order 5``, exported with ``lmkit export-arpa``:
  words are token ids) loaded by the ``kenlm`` Python module; in one child process the ARPA is
  loaded (timed apart: ``query`` on a ``build_binary`` file maps it instead), then the lines are
  encoded to ids and scored with ``Model.full_scores`` (EOS included). With ``--kenlm-bin DIR``
  the KenLM side is ``spm-encode`` ids piped into ``DIR/query`` on a ``DIR/build_binary`` model.

The ratio is lmkit's whole process over KenLM's encode + query (its load left out), the
strictest reading of the target (issue 21: <= 3x). Each side runs ``--repeat`` times; the
median is printed. Folder sizes: the model folders on disk.

    python scripts/bench_eval.py [--default-model DIR [DIR ...]] [--mkn-model DIR] [--repeat 3]
                                 [--out /tmp/bench_eval] [--kenlm-bin DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KENLM_CHILD = r"""
import json, sys, time
import kenlm, sentencepiece as spm
c0 = time.process_time()
model = kenlm.Model(sys.argv[1])
sp = spm.SentencePieceProcessor(model_file=sys.argv[2])
c1 = time.process_time()
lines = [l for l in open(sys.argv[3], encoding="utf-8").read().split("\n") if l]
ids = sp.encode(lines)
log10 = 0.0
tokens = 0
for seq in ids:
    for prob, _, _ in model.full_scores(" ".join(map(str, seq))):
        log10 += prob
        tokens += 1
c2 = time.process_time()
print(json.dumps({"load_cpu": c1 - c0, "query_cpu": c2 - c1, "tokens": tokens,
                  "nll_nats": -log10 * 2.302585092994046}))
"""


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list, **kw) -> tuple[str, float, float]:
    """stdout, CPU seconds (user + sys) and wall seconds of one child process."""
    c0, t0 = child_cpu(), time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode:
        sys.exit(f"bench_eval: {' '.join(map(str, cmd))} failed:\n{p.stderr[-2000:]}")
    return p.stdout, child_cpu() - c0, time.perf_counter() - t0


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file()) / 1e6


def lmkit(*args) -> list:
    return [sys.executable, "-m", "lmkit.cli", *args]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--default-model", nargs="+",
                    help="default model folder(s), one row each (trained into --out if absent)")
    ap.add_argument("--mkn-model", help="order-5 model folder (trained into --out if absent)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; the median is shown")
    ap.add_argument("--out", default="/tmp/bench_eval", help="scratch folder")
    ap.add_argument("--kenlm-bin", help="folder with build_binary and query (else the kenlm module)")
    a = ap.parse_args(argv)
    from lmkit.corpus import load_corpus

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    defaults = [Path(d) for d in (a.default_model or [out / "default"])]
    mkn = Path(a.mkn_model or out / "order5")
    for default in defaults:
        if not (default / "manifest.json").exists():
            print(f"training the default model into {default}", file=sys.stderr)
            run(lmkit("train", "--output", default), env=env)
    if not (mkn / "manifest.json").exists():
        print(f"training the order-5 model into {mkn}", file=sys.stderr)
        run(lmkit("train", "--order", "5", "--output", mkn), env=env)
    arpa = out / "order5.arpa"
    run(lmkit("export-arpa", mkn, arpa), env=env)
    text = out / "test.txt"
    text.write_text("\n".join(l for l in load_corpus(split="test") if l) + "\n", encoding="utf-8")

    lm_runs, ken_runs = {d: [] for d in defaults}, []
    for _ in range(a.repeat):
        for default in defaults:
            stdout, cpu, wall = run(lmkit("eval", default, "--json"), env=env)
            lm_runs[default].append({**json.loads(stdout), "cpu": cpu, "wall": wall})
        if a.kenlm_bin:
            kb = Path(a.kenlm_bin)
            binary = out / "order5.binary"
            if not binary.exists():
                run([kb / "build_binary", arpa, binary])
            ids = out / "test.ids"
            _, enc_cpu, _ = run(lmkit("spm-encode", "--model", mkn / "tokenizer.model",
                                      "--input", text, "--output", ids, "--output-format", "id"),
                                env=env)
            with open(ids) as f:
                stdout, q_cpu, wall = run([kb / "query", "-v", "summary", binary], stdin=f)
            ppl = re.search(r"Perplexity including OOVs:\s*([0-9.]+)", stdout)
            ken_runs.append({"load_cpu": 0.0, "query_cpu": enc_cpu + q_cpu,
                             "cpu": enc_cpu + q_cpu, "ppl": float(ppl.group(1)) if ppl else None})
        else:
            stdout, cpu, wall = run([sys.executable, "-c", KENLM_CHILD, arpa,
                                     mkn / "tokenizer.model", text])
            ken_runs.append({**json.loads(stdout), "cpu": cpu, "wall": wall})

    kq = statistics.median(r["query_cpu"] for r in ken_runs)
    kall = statistics.median(r["cpu"] for r in ken_runs)
    k0 = ken_runs[0]
    tokens = lm_runs[defaults[0]][0]["tokens"]
    print(f"# lmkit eval of the default model vs encode + KenLM query (order 5), "
          f"{tokens:,} test tokens, median of {a.repeat} runs, CPU s = user + sys")
    print("| side | CPU s | tokens / CPU s | ratio to KenLM | perplexity | folder MB |")
    print("|---|---|---|---|---|---|")
    for default in defaults:
        lm = statistics.median(r["cpu"] for r in lm_runs[default])
        r0 = lm_runs[default][0]
        print(f"| lmkit eval {default} (whole process) | {lm:.2f} | {tokens / lm:,.0f} "
              f"| {lm / kq:.2f}x | {r0['perplexity']:.3f} | {folder_mb(default):.1f} |")
    ppl_k = k0.get("ppl") or (math.exp(k0["nll_nats"] / k0["tokens"]) if "nll_nats" in k0
                              else float("nan"))
    what = "spm-encode + query (binary)" if a.kenlm_bin else \
        "encode + full_scores (ARPA load excluded)"
    size = (out / "order5.binary") if a.kenlm_bin else arpa
    print(f"| KenLM order 5, {what} | {kq:.2f} | {tokens / kq:,.0f} | 1 | {ppl_k:.3f} "
          f"| {size.stat().st_size / 1e6:.1f} ({size.name}; lmkit folder {folder_mb(mkn):.1f}) |")
    if not a.kenlm_bin:
        print(f"| KenLM order 5, whole process (ARPA load included) | {kall:.2f} "
              f"| {tokens / kall:,.0f} | | | |")
    print("\nCPU s per run: " + "; ".join(
        f"{d.name} " + ", ".join(f"{r['cpu']:.2f}" for r in lm_runs[d]) for d in defaults)
        + "; KenLM " + ", ".join(f"{r['query_cpu']:.2f}" for r in ken_runs)
        + " (target: lmkit eval <= 3x KenLM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
