"""Scale benchmark: counting throughput, peak memory against corpus size, solve/score at large V.

Measured in one run on a corpus of text shards (e.g. from scripts/make_big_corpus.py):

1. tokens/s of tokenization + counting (K=3) with 1 worker and with every core, and the ratio
   (both counts are also checked to be identical);
2. peak RSS of streaming counting for prefixes of about 10M and 100M tokens, each in a fresh
   process (1 worker, so the process's own peak RSS covers all the work);
3. per tokenizer (V = 4k, 16k, 32k): counts of a fixed prefix, solve time, model size, and
   scoring tokens/s on held-out lines, each V in a fresh process (its peak RSS is printed too).

    python scripts/bench_scale.py --corpus runs/big100m --tokenizers A.model B.model C.model

``--ngram-dask`` instead times the pure n-gram build on the default corpus (train split) side by
side: local (``count_ngrams`` + ``solve_ngram``, what ``lmkit train --order N`` runs) vs the
whole build on a Dask LocalCluster (``ngram.dask.build_ngram_dask``; once with this process
sending the text, once with the workers reading the corpus files), with wall and CPU seconds of
every process, and checks that the models agree to 1e-12:

    python scripts/bench_scale.py --ngram-dask --order 5 --workers 2

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
    from lmkit.io.store import params_to_arrays
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


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def bench_ngram_dask(a) -> int:
    """Local vs Dask n-gram build on the default corpus (see the module docstring)."""
    import dask
    from dask.distributed import Client, LocalCluster

    from lmkit.corpus import load_corpus
    from lmkit.distributed import WORKER_ENV
    from lmkit.counts import count_ngrams
    from lmkit.features import make_groups
    from lmkit.ngram.mkn import solve_ngram
    from lmkit.ngram.dask import build_ngram_dask
    from lmkit.parallel import line_chunks
    from lmkit.tokenizer import Tokenizer
    corpus = load_corpus(split="train")
    lines = list(corpus)
    tok = Tokenizer.train(lines, vocab_size=a.vocab_size, seed=0)
    print(f"# bench_scale --ngram-dask: shakespeare train ({len(lines):,} lines), V={tok.vocab_size}"
          f", order {a.order}, {os.cpu_count()} cores, 1-min load {os.getloadavg()[0]:.1f}; "
          f"workers' malloc: {'Dask defaults' if a.dask_malloc_defaults else 'WORKER_ENV'}",
          flush=True)
    t, c = time.time(), cpu_seconds()
    counts = count_ngrams((tok.encode_batch(x) for x in line_chunks(lines, 10000)),
                          tok.vocab_size, make_groups(0, a.order), tok.bos_id, tok.eos_id)
    local = solve_ngram(counts, bos_id=tok.bos_id)
    t_local, c_local = time.time() - t, cpu_seconds() - c
    tokens = counts.n_tokens
    print(f"local   : build {t_local:6.2f} s wall, {c_local:6.2f} s CPU "
          f"({tokens:,} tokens, {sum(S.nnz for S in local.S):,} n-grams)", flush=True)
    del counts

    t = time.time()
    with dask.config.set({} if a.dask_malloc_defaults else WORKER_ENV):  # as lmkit starts one
        cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    client = Client(cluster)
    t_start = time.time() - t
    results = {}
    try:  # two inputs: this process sends the text, or the workers read the corpus files
        for mode, kw in (("client sends text", {}), ("workers read files", {"files": corpus.files})):
            w0 = sum(client.run(cpu_seconds).values())
            s0 = sum(client.run(sys_seconds).values())
            t, c = time.time(), cpu_seconds()
            got, _, _ = build_ngram_dask(lines, tok, a.order, scheduler=cluster.scheduler_address,
                                         n_workers=a.workers, **kw)
            t_dask, c_dask = time.time() - t, cpu_seconds() - c
            c_workers = sum(client.run(cpu_seconds).values()) - w0
            s_workers = sum(client.run(sys_seconds).values()) - s0
            results[mode] = got
            print(f"dask {a.workers}w: build {t_dask:6.2f} s wall, {c_dask:6.2f} s CPU client + "
                  f"{c_workers:6.2f} s CPU workers ({s_workers:.2f} s system); "
                  f"{got.info['partitions']} partitions, "
                  f"{mode}; dask / local: wall {t_dask / t_local:.2f}x, CPU (all processes) "
                  f"{(c_dask + c_workers) / c_local:.2f}x", flush=True)
        rss = sorted(client.run(peak_rss).values())
    finally:
        client.close()
        cluster.close()
    print(f"peak RSS: workers {', '.join(mib(x) for x in rss)} (over both runs), this process "
          f"{mib(peak_rss())} (includes the local build); LocalCluster start {t_start:.1f} s, "
          "not included; the scheduler runs in this process, so its CPU is in the client's")
    arrays = sum(x.nbytes for S in local.S for x in (S.data, S.indices, S.indptr))
    arrays += sum(k.nbytes + g.nbytes for k, g in zip(local.keys, local.info["loggamma"]))
    print(f"sizes: windows {tokens * (4 * a.order + 2) / 2**20:.0f} MiB ({4 * a.order + 2} B per "
          f"token; those whose partition is on another worker move), model arrays "
          f"{arrays / 2**20:.0f} MiB (sent to this process)")
    ok = True
    for mode, got in results.items():
        diff = max([float(np.abs(got.q - local.q).max())]
                   + [float(np.abs(x.data - y.data).max()) for x, y in zip(got.S, local.S)]
                   + [float(np.abs(x - y).max()) for x, y in zip(got.info["loggamma"],
                                                                local.info["loggamma"])])
        same = all(np.array_equal(x, y) for x, y in zip(got.keys, local.keys))
        print(f"{mode}: same keys as local: {same}; max |diff| in q, S, log gamma: {diff:.1e}")
        ok = ok and same and diff <= 1e-12
    print(f"1-min load after {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


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
    ap.add_argument("--corpus", help="folder of shard-*.txt (make_big_corpus.py)")
    ap.add_argument("--tokenizers", nargs="+",
                    help="tokenizer .model files; the first is used for sections 1 and 2")
    ap.add_argument("--ngram-dask", action="store_true",
                    help="only: n-gram build local vs Dask LocalCluster on the default corpus")
    ap.add_argument("--order", type=int, default=5, help="--ngram-dask: n-gram order")
    ap.add_argument("--workers", type=int, default=2, help="--ngram-dask: Dask workers")
    ap.add_argument("--vocab-size", type=int, default=4096, help="--ngram-dask: tokenizer V")
    ap.add_argument("--dask-malloc-defaults", action="store_true",
                    help="--ngram-dask: workers without lmkit's WORKER_ENV (Dask's defaults)")
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
    if a.ngram_dask:
        return bench_ngram_dask(a)
    if not a.corpus or not a.tokenizers:
        ap.error("--corpus and --tokenizers are required (or pass --ngram-dask)")
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
