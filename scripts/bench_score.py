"""Document scoring speed: `lmkit score` (1 and 2 workers) vs the usual KenLM loop, same model.

The KenLM side is what filtering pipelines (CCNet-style) run: one process, for each document
``sp.encode(line, out_type=str)`` then ``kenlm.Model.perplexity(" ".join(pieces))`` on an ARPA
written by ``lmkit export-arpa --words pieces`` from the same lmkit model. Both sides read the
same lines (one document per line), and both sides' per-document perplexities are checked to
agree. lmkit's time includes starting its workers and loading the model in each; KenLM's
excludes loading the ARPA. Besides wall-clock rates the table gives CPU seconds (user + sys of
the process and its workers): on a shared machine the wall clock measures the other tenants too.

    python scripts/bench_score.py --model DIR [--split test] [--repeat 3] [--out /tmp/bench]
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmkit.corpus import load_corpus  # noqa: E402
from lmkit.docscore import score_file  # noqa: E402
from lmkit.model import LanguageModel  # noqa: E402
from lmkit.arpa import write_arpa  # noqa: E402


def cpu_seconds() -> float:
    """user + sys seconds of this process and its reaped children (the scoring workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an n-gram model folder (lmkit train --order N)")
    ap.add_argument("--split", default="test", help="shakespeare split to score (default test)")
    ap.add_argument("--repeat", type=int, default=3, help="copies of the split (default 3)")
    ap.add_argument("--out", default="/tmp/bench_score", help="scratch folder")
    a = ap.parse_args()
    import kenlm
    import sentencepiece as spm

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = list(load_corpus(split=a.split)) * a.repeat
    (out / "docs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = LanguageModel.load(a.model)
    write_arpa(model, out / "m.arpa", words="pieces")
    km = kenlm.Model(str(out / "m.arpa"))
    sp = spm.SentencePieceProcessor(model_proto=model.tokenizer.model_proto)

    t0, c0 = time.perf_counter(), cpu_seconds()
    ken = [km.perplexity(" ".join(sp.encode(line, out_type=str))) for line in lines]
    t_ken, c_ken = time.perf_counter() - t0, cpu_seconds() - c0
    n_tok = sum(len(sp.encode(line)) + 1 for line in lines)

    rows = [("kenlm loop (1 process)", len(lines) / t_ken, n_tok / t_ken, 1.0, c_ken)]
    for w in (1, 2):
        t0, c0 = time.perf_counter(), cpu_seconds()
        r = score_file(a.model, out / f"scores{w}.jsonl", input=[str(out / "docs.txt")],
                       workers=w, progress=False)
        t, c = time.perf_counter() - t0, cpu_seconds() - c0
        assert r["units"] == len(lines) and r["tokens"] == n_tok
        mine = [json.loads(x)["perplexity"] for x in (out / f"scores{w}.jsonl").open()]
        worst = max(abs(math.log10(x) - math.log10(y)) for x, y in zip(mine, ken))
        assert worst < 1e-4, f"per-document log10 perplexity differs by {worst}"
        rows.append((f"lmkit score --workers {w}", len(lines) / t, n_tok / t, t_ken / t, c))
    print(f"{len(lines)} documents (lines of shakespeare:{a.split} x{a.repeat}), {n_tok} tokens, "
          f"model {a.model}; load average {open('/proc/loadavg').read().split()[0]}")
    print(f"| {'scorer':<24} | {'docs/s':>9} | {'tokens/s':>10} | {'vs kenlm':>8} | "
          f"{'CPU s':>6} | {'docs/CPU-s':>10} | {'vs kenlm':>8} |")
    print(f"|{'-' * 26}|{'-' * 11}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 12}|{'-' * 10}|")
    for name, d, tk, ratio, c in rows:
        print(f"| {name:<24} | {d:>9,.0f} | {tk:>10,.0f} | {ratio:>7.2f}x | {c:>6.2f} | "
              f"{len(lines) / c:>10,.0f} | {c_ken / c:>7.2f}x |")


if __name__ == "__main__":
    main()
