"""Bounded-memory n-gram build: one flat id buffer -> MKN ``SparseParams``, a bucket at a time.

Input: the int32 buffer of ``counts.flat_buffer(chunks, bos, eos, pad=1)`` (every sequence as
``BOS ids EOS``; BOS never inside a sequence), the order N and V. Output: the same
``SparseParams`` as ``solve_ngram(count_ngrams(...))`` (tested equal), built with memory for
one bucket of histories at a time instead of all counts at once.

Why buckets work (chained ids, see ``features.py``): every n-gram ``(..., t, w)`` of every
order, its continuation counts (read one order down, from n-grams ending in the same
``t, w``) and its gamma depend only on n-grams whose history ends in the same token t. So
positions are split by the most recent history token into B token ranges of about equal
size; each range is counted and solved on its own. Only two things are global: the unigram
level (the sum of every bucket's distinct ``(t, w)`` pairs per w) and each order's
count-of-counts n1..n4 (sums), which fix the discounts. Hence two passes:

1. per bucket: count, adjusted counts, count-of-counts; the adjusted counts go to a spill
   folder (``.npz`` per bucket) and are dropped from memory;
2. discounts and the unigram q from the sums; per bucket: reload, solve, keep S, keys, log
   gamma; finally concatenate: rows of bucket b follow those of bucket b-1 at every order,
   so chained keys only shift by the parent row offset (``key + offset * V``).

Pruning (``--prune``) is not bucket-local (a kept n-gram keeps its context, whose history ends
in another token) and is refused here; use ``solve_ngram``.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .counts import count_buffer, flat_buffer
from .errors import InputError
from .memory import parse_size
from .features import make_groups
from .ngram import (FALLBACK_DISCOUNTS, _adjusted_counts, _check_discount, _discount_of,
                    _solve_order, discounts_from_count_of_counts)
from .params import SparseParams
from .progress import log as progress_log
from .sparse import csr_from_arrays, csr_to_arrays

BYTES_PER_POSITION = 200  # measured peak of count + solve per position in a bucket (order 5)


def n_buckets_for(n_positions: int, max_memory: int | None) -> int:
    """Buckets so that one bucket's working set takes about half of ``max_memory`` bytes."""
    if not max_memory:
        return 1
    return max(1, math.ceil(n_positions * BYTES_PER_POSITION / (max_memory / 2)))


def bucket_edges(buf: np.ndarray, bos_id: int, vocab_size: int, n_buckets: int) -> np.ndarray:
    """Token-range edges (B+1,) splitting the target positions by their most recent history
    token into ``n_buckets`` ranges of about equal size (fewer if one token outweighs a share).
    Example: V = 4, BOS 0, buf [0, 1, 1, 2, 3] (previous tokens of the targets: 0, 1, 1, 2),
    2 buckets -> [0, 1, 4]."""
    last = buf[:-1][buf[1:] != bos_id]
    cum = np.cumsum(np.bincount(last, minlength=vocab_size))
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, n_buckets) / n_buckets, side="right")
    return np.unique(np.concatenate([[0], cuts, [vocab_size]])).astype(np.int64)


def _positions(buf, bos_id, bos_at, lo, hi):
    """Target positions whose previous token is in [lo, hi), and their sequences' starts."""
    prev = buf[:-1]
    pos = np.flatnonzero((prev >= lo) & (prev < hi) & (buf[1:] != bos_id)) + 1
    starts = bos_at[np.searchsorted(bos_at, pos, side="right") - 1] + 1
    return pos, starts


def build_ngram(buf: np.ndarray, order: int, vocab_size: int, bos_id: int, *,
                n_buckets: int = 1, discount=None, spill_dir=None, log=None) -> SparseParams:
    """MKN ``SparseParams`` of the order-``order`` model of ``buf``, ``n_buckets`` at a time."""
    V, M = vocab_size, order - 1
    groups = make_groups(0, order)
    given = _check_discount(discount)
    bos_at = np.flatnonzero(buf == bos_id)
    if len(bos_at) == 0 or bos_at[0] != 0:
        raise InputError("build_ngram needs the flat_buffer(pad=1) layout: BOS ids EOS per sequence")
    edges = bucket_edges(buf, bos_id, V, n_buckets)
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-ngram-", dir=spill_dir))
    try:
        a1 = np.zeros(V, dtype=np.int64)
        nk = np.zeros((M + 1, 4), dtype=np.int64)  # count-of-counts n1..n4 per order
        for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            pos, starts = _positions(buf, bos_id, bos_at, lo, hi)
            c = count_buffer(buf, pos, starts, V, groups, 0)
            del pos, starts
            A, links = zip(*[_adjusted_counts(c, m, M, bos_id) for m in range(M + 1)])
            a1 += A[0].toarray().ravel()
            arrays = {}
            for m in range(1, M + 1):
                nk[m] += np.bincount(np.minimum(A[m].data, 5), minlength=6)[1:5]
                arrays.update(csr_to_arrays(f"A{m}", A[m]))
                arrays[f"keys{m}"] = c.keys[m - 1]
                if links[m] is not None:
                    arrays[f"link{m}"] = links[m]
            np.savez(tmp / f"bucket{b:05d}.npz", **arrays)
            del c, A, links, arrays
            if log:
                log(f"      bucket {b + 1}/{len(edges) - 1} counted")
        nk[0] = np.bincount(np.minimum(a1[a1 > 0], 5), minlength=6)[1:5]
        discounts, estimated = [], []
        for n in nk:
            d, ok = (given, True) if given else discounts_from_count_of_counts(n)
            discounts.append([float(x) for x in d])
            estimated.append(ok)
        if given is None and not all(estimated):
            progress_log(f"      MKN discounts: count-of-counts too sparse for orders "
                         f"{[n + 1 for n, ok in enumerate(estimated) if not ok]}, using "
                         f"{FALLBACK_DISCOUNTS}")
        a = a1.astype(np.float64)
        d1 = np.where(a > 0, _discount_of(a, discounts[0]), 0.0)
        q = (a - d1) / a.sum() + d1.sum() / a.sum() / V
        S, keys, lgs = [[] for _ in range(M)], [[] for _ in range(M)], [[] for _ in range(M)]
        offset = np.zeros(M + 1, dtype=np.int64)  # rows of the earlier buckets, per order
        for b in range(len(edges) - 1):
            with np.load(tmp / f"bucket{b:05d}.npz", allow_pickle=False) as z:
                logp, parent_map = None, np.zeros(1, dtype=np.int64)
                for m in range(1, M + 1):
                    link = z[f"link{m - 1}"] if f"link{m - 1}" in z.files else None
                    Sm, km, logp, parent_map, lg = _solve_order(
                        csr_from_arrays(f"A{m}", z), z[f"keys{m}"], discounts[m], None, q, logp,
                        parent_map, V, link)
                    # local chained keys -> global: parents shift by the earlier buckets' rows
                    S[m - 1].append(Sm)
                    keys[m - 1].append(km + offset[m - 1] * V if m > 1 else km)
                    lgs[m - 1].append(lg)
                for m in range(1, M + 1):
                    offset[m] += S[m - 1][-1].shape[0]
            (tmp / f"bucket{b:05d}.npz").unlink()
        S = [sp.vstack(x, format="csr") if len(x) > 1 else x[0] for x in S]
        keys = [np.concatenate(x) for x in keys]
        lgs = [np.concatenate(x) for x in lgs]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {"discounts": discounts, "discounts_estimated": estimated, "bos_id": bos_id,
            "smoothing": "interpolated modified Kneser-Ney", "prune": [0] * (M + 1),
            "lambda_init": [1.0] * M, "lambda_fixed": [True] * M, "loggamma": lgs,
            "buckets": len(edges) - 1}
    return SparseParams(groups, q, S, keys, np.ones(M), info)


def build_ngram_from_chunks(chunks, order: int, vocab_size: int, bos_id: int, eos_id: int, *,
                            max_memory=None, discount=None, spill_dir=None, log=None):
    """Chunks of id sequences -> ``(params, n_sequences, n_tokens)``; ``max_memory`` (bytes or
    size text, e.g. "4G") picks the number of buckets (``n_buckets_for``)."""
    buf, pos, _, n_seq = flat_buffer(chunks, bos_id, eos_id, 1)
    n_tok = len(pos)
    del pos, _
    budget = parse_size(max_memory) if max_memory is not None else None
    B = n_buckets_for(n_tok, budget)
    if log:
        log(f"      {n_seq} sequences, {n_tok} tokens; solving in {B} bucket(s)")
    params = build_ngram(buf, order, vocab_size, bos_id, n_buckets=B, discount=discount,
                         spill_dir=spill_dir, log=log)
    return params, n_seq, n_tok
