"""Benchmark the explicit (count, then solve) pipeline on the default corpus.

Measures, in one run: tokenization + counting throughput on the train split, closed-form solve
time, lambda-choice time, evaluation throughput of the sparse scorer against a dense reference
scorer built from the *same* parameters (``W_k = lambda_k S_k`` densified to (V, V) float32,
``b = log q``, dense log-softmax), whether the two agree to 1e-6 nats per token (checked against
a float64 copy of the dense weights, since float32 storage alone rounds by ~1e-6), the saved
``params.npz`` size against a dense K x V x V float32 matrix, and peak RSS.

    python scripts/bench_explicit.py [--context 3] [--vocab-size 4096] [--seed 0]

Progress goes to stderr; the table goes to stdout.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmkit.corpus import load_corpus
from lmkit.features import make_groups
from lmkit.model import LanguageModel
from lmkit.params import DenseParams
from lmkit.scoring import context_rows, dense_log_proba, sparse_log_proba
from lmkit.tokenizer import Tokenizer
from lmkit.solve import fit, solve
from lmkit.train import count_corpus, heldout_lines


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dense_reference(params, dtype=np.float32) -> DenseParams:
    """Dense (V, V) ``W_k = lambda_k S_k`` and ``b = log q`` from sparse params."""
    W = [(lam * S).toarray().astype(dtype) for S, lam in zip(params.S, params.lambdas)]
    return DenseParams(params.groups, W, np.log(params.q).astype(dtype), params.keys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--lambda-tokens", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    groups = make_groups(a.context)
    rows_out = []
    train_lines = load_corpus(split="train")
    log(f"[1/6] tokenizer (V={a.vocab_size})")
    t = time.perf_counter()
    tok = Tokenizer.train(train_lines, vocab_size=a.vocab_size, seed=a.seed)
    rows_out.append(("tokenizer training", f"{time.perf_counter() - t:.2f} s", ""))

    log("[2/6] tokenize + count the train split")
    t = time.perf_counter()
    counts = count_corpus(train_lines, tok, groups)
    dt = time.perf_counter() - t
    rows_out.append(("tokenize + count (train)", f"{counts.n_tokens / dt:,.0f} tok/s",
                     f"{counts.n_tokens:,} tokens in {dt:.2f} s"))

    log("[3/6] closed-form solve (lambdas 1)")
    t = time.perf_counter()
    params = solve(counts)
    rows_out.append(("solve (closed form)", f"{time.perf_counter() - t:.3f} s",
                     f"{sum(S.nnz for S in params.S):,} non-zeros"))

    log("[4/6] fit: solve + lambdas on the valid split")
    held = tok.encode_batch(heldout_lines(load_corpus(split="valid"), a.lambda_tokens, tok))
    t = time.perf_counter()
    params = fit(counts, held)
    trace, lam = params.info.get("lambda_trace", []), params.lambdas
    rows_out.append(("fit (solve + lambdas)", f"{time.perf_counter() - t:.3f} s",
                     f"{sum(len(s) + 1 for s in held):,} held-out tokens, {max(len(trace) - 1, 0)} "
                     "Newton steps, lambdas " + ",".join(f"{x:.3f}" for x in lam)))

    log("[5/6] score the test split: sparse vs dense reference")
    test_seqs = tok.encode_batch(list(load_corpus(split="test")))
    rows, targets, _ = context_rows(groups, params.keys, test_seqs, tok.vocab_size,
                                    tok.bos_id, tok.eos_id)
    t = time.perf_counter()
    lp_sparse = sparse_log_proba(params, rows, targets)
    t_sparse = time.perf_counter() - t
    t = time.perf_counter()
    dense = dense_reference(params)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    lp_dense = dense_log_proba(dense, rows, targets)
    t_dense = time.perf_counter() - t
    n = len(targets)
    diff32 = float(np.max(np.abs(lp_sparse - lp_dense)))
    del dense
    # the 1e-6 check uses a float64 copy: float32 storage of W alone rounds logits by ~|W| 2**-24
    diff = float(np.max(np.abs(lp_sparse - dense_log_proba(dense_reference(params, np.float64),
                                                           rows, targets))))
    rows_out.append(("eval sparse", f"{n / t_sparse:,.0f} tok/s",
                     f"{n:,} test tokens, ppl {np.exp(-lp_sparse.mean()):.2f}"))
    rows_out.append(("eval dense reference", f"{n / t_dense:,.0f} tok/s",
                     f"ppl {np.exp(-lp_dense.mean()):.2f}; building dense W took {t_build:.2f} s"))
    rows_out.append(("sparse / dense speed", f"{t_dense / t_sparse:.1f}x", ""))
    rows_out.append(("max |logp sparse - dense32|", f"{diff32:.2e}", "float32 rounding of W"))
    rows_out.append(("max |logp sparse - dense64|", f"{diff:.2e}",
                     "agree to 1e-6: " + ("yes" if diff <= 1e-6 else "NO")))

    log("[6/6] save")
    with tempfile.TemporaryDirectory() as d:
        path = LanguageModel(tok, params, {"context": a.context}).save(Path(d) / "model")
        size = (path / "params.npz").stat().st_size
    dense_bytes = len(groups) * tok.vocab_size * tok.vocab_size * 4
    rows_out.append(("params.npz on disk", f"{size / 2**20:.1f} MiB",
                     f"dense K*V*V float32 = {dense_bytes / 2**20:.1f} MiB, "
                     f"ratio {dense_bytes / size:.1f}x smaller"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    rows_out.append(("peak RSS", f"{peak / 2**20:.0f} MiB", "includes the dense reference"))

    print(f"bench_explicit: shakespeare, V={tok.vocab_size}, K={a.context}, seed={a.seed}")
    w0 = max(len(r[0]) for r in rows_out)
    w1 = max(len(r[1]) for r in rows_out)
    for name, value, note in rows_out:
        print(f"{name:<{w0}}  {value:>{w1}}  {note}".rstrip())
    return 0 if diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
