"""Scale benchmark: counting throughput, peak memory against corpus size, solve/score at large V.

Measured in one run on a corpus of text shards (e.g. from scripts/make_big_corpus.py):

1. tokens/s of tokenization + counting (K=3) with 1 worker and with every core, and the ratio
   (both counts are also checked to be identical);
2. peak RSS of streaming counting for prefixes of about 10M and 100M tokens, each in a fresh
   process (1 worker, so the process's own peak RSS covers all the work);
3. per tokenizer (V = 4k, 16k, 32k): counts of a fixed prefix, solve time, model size, and
   scoring tokens/s on held-out lines, each V in a fresh process (its peak RSS is printed too).

    python scripts/bench_scale.py --corpus runs/big100m --tokenizers A.model B.model C.model

Progress goes to stderr; the report (plain lines) to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np


def corpus_lines(folder, skip_last_shard=False):
    files = sorted(Path(folder).glob("shard-*.txt"))
    if skip_last_shard:
        files = files[:-1]
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip()
                if line:
                    yield line


def heldout(folder, n):
    last = sorted(Path(folder).glob("shard-*.txt"))[-1]
    with open(last, encoding="utf-8") as fh:
        return [x.rstrip() for x in islice(fh, n) if x.strip()]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child_rss(a):
    from lmkit.features import make_groups
    from lmkit.parallel import count_corpus_parallel, counts_nbytes
    from lmkit.tokenizer import Tokenizer
    tok = Tokenizer.load(a.tokenizers[0])
    t = time.time()
    c = count_corpus_parallel(islice(corpus_lines(a.corpus, True), a.child_lines), tok,
                              make_groups(3), workers=1)
    print(json.dumps({"tokens": c.n_tokens, "seconds": time.time() - t, "rss": peak_rss(),
                      "counts_bytes": counts_nbytes(c), "nnz": sum(F.nnz for F in c.F)}))


def child_solve(a):
    import lmkit
    from lmkit.features import make_groups
    from lmkit.parallel import counts_nbytes
    from lmkit.store import params_to_arrays
    tok = lmkit.Tokenizer.load(a.tokenizers[0])
    groups = make_groups(3)
    t = time.time()
    c = lmkit.count_corpus(islice(corpus_lines(a.corpus, True), a.child_lines), tok, groups)
    t_count = time.time() - t
    t = time.time()
    params = lmkit.fit(c, lambdas=a.lambdas)
    t_solve = time.time() - t
    model_bytes = sum(x.nbytes for x in params_to_arrays(params).values())
    model = lmkit.LanguageModel(tok, params)
    seqs = tok.encode_batch(heldout(a.corpus, a.score_lines))
    t = time.time()
    lp, _ = model.log_proba_ids(seqs)
    t_score = time.time() - t
    targets = lp
    print(json.dumps({"V": tok.vocab_size, "tokens": c.n_tokens, "count_seconds": t_count,
                      "nnz": sum(F.nnz for F in c.F), "counts_bytes": counts_nbytes(c),
                      "solve_seconds": t_solve, "model_bytes": model_bytes,
                      "score_tokens": len(targets), "score_seconds": t_score,
                      "ppl": float(np.exp(-lp.mean())), "finite": bool(np.isfinite(lp).all()),
                      "rss": peak_rss()}))


def run_child(a, mode, tokenizer, lines):
    cmd = [sys.executable, __file__, "--corpus", a.corpus, "--tokenizers", tokenizer,
           "--child", mode, "--child-lines", str(lines), "--score-lines", str(a.score_lines),
           "--lambdas", *map(str, a.lambdas)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def mib(n):
    return f"{n / 2**20:,.0f} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="folder of shard-*.txt (make_big_corpus.py)")
    ap.add_argument("--tokenizers", nargs="+", required=True,
                    help="tokenizer .model files; the first is used for sections 1 and 2")
    ap.add_argument("--speed-lines", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing runs per setting")
    ap.add_argument("--rss-tokens", type=float, nargs="+", default=[1e7, 1e8])
    ap.add_argument("--solve-lines", type=int, default=500_000)
    ap.add_argument("--score-lines", type=int, default=2000)
    ap.add_argument("--lambdas", type=float, nargs=3, default=[0.8, 0.35, 0.07],
                    help="fixed group weights for scoring (about what training chooses)")
    ap.add_argument("--child", choices=["rss", "solve"], help=argparse.SUPPRESS)
    ap.add_argument("--child-lines", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child == "rss":
        return child_rss(a) or 0
    if a.child == "solve":
        return child_solve(a) or 0

    from lmkit.features import make_groups
    from lmkit.parallel import count_corpus_parallel
    from lmkit.tokenizer import Tokenizer
    info = json.loads((Path(a.corpus) / "corpus.json").read_text())
    tok_per_line = info["tokens_sampled"] / info["lines"]
    cores = os.cpu_count()
    print(f"# bench_scale: corpus {a.corpus} ({info['lines']:,} lines, ~{info['tokens_sampled']:,}"
          f" tokens), {cores} cores, K=3")

    print("## 1. tokenization + counting throughput", flush=True)
    tok = Tokenizer.load(a.tokenizers[0])
    lines = list(islice(corpus_lines(a.corpus), a.speed_lines))
    res, times = {}, {1: [], cores: []}
    for _ in range(a.repeats):  # interleaved, so both see the same machine load
        for w in (1, cores):
            t = time.time()
            res[w] = count_corpus_parallel(lines, tok, make_groups(3), workers=w)
            times[w].append(time.time() - t)
    c1, cn = res[1], res[cores]
    t1, tn = min(times[1]), min(times[cores])
    for w, c in ((1, c1), (cores, cn)):
        print(f"workers={w}: {c.n_tokens:,} tokens, best {min(times[w]):.1f}s = "
              f"{c.n_tokens / min(times[w]):,.0f} tok/s (runs: "
              + ", ".join(f"{x:.1f}s" for x in times[w]) + ")")
    print(f"speed-up {t1 / tn:.2f}x (best of {a.repeats}); identical counts: {cn.equals(c1)}; "
          f"1-min load average after: {os.getloadavg()[0]:.1f}", flush=True)
    del lines, res, c1, cn

    print("## 2. peak RSS of streaming counting (1 worker, fresh process each)", flush=True)
    for n in a.rss_tokens:
        r = run_child(a, "rss", a.tokenizers[0], int(n / tok_per_line))
        print(f"{r['tokens']:>12,} tokens: peak RSS {mib(r['rss'])}, counts {mib(r['counts_bytes'])}"
              f" ({r['nnz']:,} non-zeros), {r['seconds']:.0f}s = {r['tokens'] / r['seconds']:,.0f} tok/s",
              flush=True)

    print(f"## 3. solve and score at growing V ({a.solve_lines:,} lines counted, "
          f"{a.score_lines:,} held-out lines scored, lambdas {a.lambdas})", flush=True)
    for path in a.tokenizers:
        r = run_child(a, "solve", path, a.solve_lines)
        print(f"V={r['V']:>6}: {r['tokens']:,} tokens, {r['nnz']:,} non-zeros; solve "
              f"{r['solve_seconds']:.2f}s; model {mib(r['model_bytes'])}; scoring "
              f"{r['score_tokens'] / r['score_seconds']:,.0f} tok/s (ppl {r['ppl']:.1f}, finite "
              f"{r['finite']}); peak RSS {mib(r['rss'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
