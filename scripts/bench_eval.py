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
reading of the target used since issue 21 (<= 3x). With ``--kenlm-bin`` two stricter ratios
are printed too: over a bare SentencePiece encode (a Python child that imports only
``sentencepiece``) + ``query``, and over ``query`` alone. Each side runs ``--repeat`` times;
the median is printed. Folder sizes: the model folders on disk.

Another corpus (the >= 10M-token measurement): ``--text FILE`` scores that file's lines (the
lines ``lmkit eval`` reads: blank ones dropped; both sides get the same cleaned copy) with
``--default-model`` folders trained on its corpus, against ``--kenlm-binary`` (an order-5
``build_binary`` model on the same tokenizer's ids; needs ``--kenlm-bin``).

    python scripts/bench_eval.py [--default-model DIR [DIR ...]] [--mkn-model DIR] [--repeat 3]
                                 [--out /tmp/bench_eval] [--kenlm-bin DIR]
                                 [--text FILE --kenlm-binary FILE] [--compare-tree DIR]

``--compare-tree DIR`` adds a row per default model for another checkout's ``lmkit eval``
(e.g. ``git worktree add --detach /tmp/main main``), run interleaved with this one's, so a
change is measured against its baseline in the same run.
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


SPM_CHILD = r"""
import sys, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
lines = [l for l in open(sys.argv[2], encoding="utf-8").read().split("\n") if l]
with open(sys.argv[3], "w") as f:
    f.write("\n".join(" ".join(map(str, ids)) for ids in sp.encode(lines)) + "\n")
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
    ap.add_argument("--text", help="score this file's lines instead of the default test split")
    ap.add_argument("--kenlm-binary", help="with --text: the KenLM order-5 binary model of its "
                    "corpus (ids of the default model's tokenizer)")
    ap.add_argument("--compare-tree", help="another lmkit checkout (e.g. a worktree of main): "
                    "its `lmkit eval` of each default model runs interleaved with this one's")
    a = ap.parse_args(argv)
    from lmkit.corpus import load_corpus, read_lines, sequences
    if a.text and not (a.kenlm_binary and a.kenlm_bin and a.default_model):
        sys.exit("bench_eval: --text needs --default-model, --kenlm-bin and --kenlm-binary")

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    defaults = [Path(d) for d in (a.default_model or [out / "default"])]
    for default in defaults:
        if not (default / "manifest.json").exists():
            print(f"training the default model into {default}", file=sys.stderr)
            run(lmkit("train", "--output", default), env=env)
    text = out / "test.txt"
    if a.text:  # the lines lmkit eval reads, so both sides score the same tokens
        text.write_text("\n".join(sequences(read_lines(a.text), a.text)) + "\n",
                        encoding="utf-8")
        mkn, tokenizer = None, defaults[0] / "tokenizer.model"
        binary, arpa = Path(a.kenlm_binary), None
    else:
        mkn = Path(a.mkn_model or out / "order5")
        if not (mkn / "manifest.json").exists():
            print(f"training the order-5 model into {mkn}", file=sys.stderr)
            run(lmkit("train", "--order", "5", "--output", mkn), env=env)
        tokenizer, binary, arpa = mkn / "tokenizer.model", out / "order5.binary", out / "order5.arpa"
        run(lmkit("export-arpa", mkn, arpa), env=env)
        text.write_text("\n".join(l for l in load_corpus(split="test") if l) + "\n",
                        encoding="utf-8")
    eval_args = ["--input", text] if a.text else []

    # each tree's eval runs in that tree's root: `python -m` puts the working directory first
    # on sys.path, ahead of PYTHONPATH
    trees = [("", env, ROOT)]
    if a.compare_tree:
        other = Path(a.compare_tree).resolve()
        trees.append((f" [{other}]", {**os.environ, "PYTHONPATH": str(other)}, other))
    sides = [(d.resolve(), label, e, cwd) for d in defaults for label, e, cwd in trees]
    lm_runs, ken_runs = {(d, label): [] for d, label, _, _ in sides}, []
    for _ in range(a.repeat):
        for default, label, e, cwd in sides:
            stdout, cpu, wall = run(lmkit("eval", default, *eval_args, "--json"), env=e, cwd=cwd)
            lm_runs[default, label].append({**json.loads(stdout), "cpu": cpu, "wall": wall})
        if a.kenlm_bin:
            kb = Path(a.kenlm_bin)
            if not binary.exists():
                run([kb / "build_binary", arpa, binary])
            ids = out / "test.ids"
            _, enc_cpu, _ = run(lmkit("spm-encode", "--model", tokenizer,
                                      "--input", text, "--output", ids, "--output-format", "id"),
                                env=env)
            bare_ids = out / "test_bare.ids"
            _, bare_cpu, _ = run([sys.executable, "-c", SPM_CHILD, tokenizer, text, bare_ids])
            if bare_ids.read_bytes() != ids.read_bytes():
                sys.exit("bench_eval: the bare SentencePiece encode and lmkit spm-encode differ")
            with open(ids) as f:
                stdout, q_cpu, wall = run([kb / "query", "-v", "summary", binary], stdin=f)
            ppl = re.search(r"Perplexity including OOVs:\s*([0-9.]+)", stdout)
            ken_runs.append({"load_cpu": 0.0, "query_cpu": enc_cpu + q_cpu,
                             "cpu": enc_cpu + q_cpu, "ppl": float(ppl.group(1)) if ppl else None,
                             "bare": bare_cpu + q_cpu, "query": q_cpu, "encode": enc_cpu,
                             "bare_encode": bare_cpu})
        else:
            stdout, cpu, wall = run([sys.executable, "-c", KENLM_CHILD, arpa, tokenizer, text])
            ken_runs.append({**json.loads(stdout), "cpu": cpu, "wall": wall})

    kq = statistics.median(r["query_cpu"] for r in ken_runs)
    kall = statistics.median(r["cpu"] for r in ken_runs)
    k0 = ken_runs[0]
    tokens = lm_runs[sides[0][0], ""][0]["tokens"]
    strict = {}
    if a.kenlm_bin:
        strict = {k: statistics.median(r[k] for r in ken_runs)
                  for k in ("bare", "query", "encode", "bare_encode")}
    print(f"# lmkit eval of the default model vs encode + KenLM query (order 5), "
          f"{tokens:,} tokens of {a.text or 'the default test split'}, median of {a.repeat} runs, "
          f"CPU s = user + sys")
    extra = " | ratio to bare encode + query | ratio to query alone" if strict else ""
    print(f"| side | CPU s | tokens / CPU s | ratio to KenLM{extra} | perplexity | folder MB |")
    print("|---|---|---|---|" + ("---|---|" if strict else "") + "---|---|")
    for default, label, _, _ in sides:
        lm = statistics.median(r["cpu"] for r in lm_runs[default, label])
        r0 = lm_runs[default, label][0]
        more = f" | {lm / strict['bare']:.2f}x | {lm / strict['query']:.2f}x" if strict else ""
        print(f"| lmkit eval {default}{label} (whole process) | {lm:.2f} | {tokens / lm:,.0f} "
              f"| {lm / kq:.2f}x{more} | {r0['perplexity']:.3f} | {folder_mb(default):.1f} |")
    ppl_k = k0.get("ppl") or (math.exp(k0["nll_nats"] / k0["tokens"]) if "nll_nats" in k0
                              else float("nan"))
    what = "lmkit spm-encode + query (binary)" if a.kenlm_bin else \
        "encode + full_scores (ARPA load excluded)"
    size = binary if a.kenlm_bin else arpa
    blank = " | |" if strict else ""
    mkn_mb = f"; lmkit folder {folder_mb(mkn):.1f}" if mkn else ""
    print(f"| KenLM order 5, {what} | {kq:.2f} | {tokens / kq:,.0f} | 1{blank} | {ppl_k:.3f} "
          f"| {size.stat().st_size / 1e6:.1f} ({size.name}{mkn_mb}) |")
    if strict:
        print(f"| KenLM order 5, bare SentencePiece encode + query | {strict['bare']:.2f} "
              f"| {tokens / strict['bare']:,.0f} | | 1 | | | |")
        print(f"| KenLM order 5, query alone | {strict['query']:.2f} "
              f"| {tokens / strict['query']:,.0f} | | | 1 | | |")
    else:
        print(f"| KenLM order 5, whole process (ARPA load included) | {kall:.2f} "
              f"| {tokens / kall:,.0f} | | | |")
    print("\nCPU s per run: " + "; ".join(
        f"{d.name}{label} " + ", ".join(f"{r['cpu']:.2f}" for r in lm_runs[d, label])
        for d, label, _, _ in sides)
        + "; KenLM " + ", ".join(f"{r['query_cpu']:.2f}" for r in ken_runs)
        + (f" (lmkit spm-encode {strict['encode']:.2f}, bare encode {strict['bare_encode']:.2f},"
           f" query {strict['query']:.2f})" if strict else "")
        + "; target: lmkit eval <= 3x KenLM")
    print("total nll (nats): " + "; ".join(f"{d.name}{label} {lm_runs[d, label][0]['nll_nats']!r}"
                                          for d, label, _, _ in sides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
