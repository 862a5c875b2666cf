"""Bounded-memory n-gram build: id sequences -> MKN ``SparseParams`` with disk-backed arrays.

Input: chunks of id sequences (``build_ngram_from_chunks``) or one flat int32 buffer in the
``counts.flat_buffer(chunks, bos, eos, pad=1)`` layout (``build_ngram``), the order N and V.
Output: the same ``SparseParams`` as ``solve_ngram(count_ngrams(...))`` (tested equal), built
with memory for one bucket of histories at a time; with ``out_dir`` every model array is a
read-only memory map of its own ``.npy`` file there, so the model is never in memory either.

Why buckets work (chained ids, see ``features.py``): every n-gram ``(..., t, w)`` of every
order, its continuation counts (read one order down, from n-grams ending in the same
``t, w``) and its gamma depend only on n-grams whose history ends in the same token t. So
positions are split by the most recent history token into B token ranges of about equal
size; each range is counted and solved on its own. Only two things are global: the unigram
level (the sum of every bucket's distinct ``(t, w)`` pairs per w) and each order's
count-of-counts n1..n4 (sums), which fix the discounts. The stages (``ngram/disk.py`` holds
the disk-backed pieces), each streaming and each bounded by one chunk or one bucket:

1. encode: the id sequences go to an int32 file in a spill folder; the histogram of the
   history tokens is kept (V,) and fixes the bucket edges;
2. partition: one pass over that file writes each target's window (N tokens, and how many of
   its history tokens lie in its sequence) to the file of its bucket (external runs by key
   range: a bucket's file holds every position any of its n-grams needs);
3. count, per bucket: the windows are counted exactly as the whole buffer would be (one sort
   per order), adjusted counts and count-of-counts are taken, the adjusted counts spilled;
4. discounts and the unigram q from the sums;
5. solve, per bucket and order: the spilled counts are reloaded, solved, and the rows appended
   to the model's ``.npy`` files (rows of bucket b follow those of bucket b-1 at every order,
   so chained keys only shift by the parent row offset: ``key + offset * V``).

Pruning (``--prune``) is not bucket-local (a kept n-gram keeps its context, whose history ends
in another token) and is refused here; use ``solve_ngram``.
"""
from __future__ import annotations

import math
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..counts import count_buffer, load_counts, save_counts
from ..errors import InputError
from ..features import make_groups
from ..memory import parse_size
from .mkn import (_adjusted_counts, _check_discount, _solve_order, order_discounts,
                  unigram_level)
from .disk import (chunk_for, encode_to_disk, file_reader, load_windows,
                   partition_windows)
from ..io.npyfile import NpyAppender, open_npy
from ..io.scratch import make_temp_dir
from ..params import SparseParams
from ..sparse import csr_from_arrays, csr_to_arrays

BYTES_PER_POSITION = 200  # measured peak of count + solve per position in a bucket (order 5)


def n_buckets_for(n_positions: int, max_memory: int | None) -> int:
    """Buckets so that one bucket's working set takes about half of ``max_memory`` bytes."""
    if not max_memory:
        return 1
    return max(1, math.ceil(n_positions * BYTES_PER_POSITION / (max_memory / 2)))


def edges_from_histogram(hist: np.ndarray, n_buckets: int) -> np.ndarray:
    """Token-range edges (B+1,) splitting positions with previous-token histogram ``hist`` (V,)
    into ``n_buckets`` ranges of about equal size (fewer if one token outweighs a share)."""
    cum = np.cumsum(hist)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, n_buckets) / n_buckets, side="right")
    return np.unique(np.concatenate([[0], cuts, [len(hist)]])).astype(np.int64)


def bucket_edges(buf: np.ndarray, bos_id: int, vocab_size: int, n_buckets: int) -> np.ndarray:
    """``edges_from_histogram`` of a flat buffer's targets (every id not followed by BOS).
    Example: V = 4, BOS 0, buf [0, 1, 1, 2, 3] (previous tokens of the targets: 0, 1, 1, 2),
    2 buckets -> [0, 1, 4]."""
    last = buf[:-1][buf[1:] != bos_id]
    return edges_from_histogram(np.bincount(last, minlength=vocab_size), n_buckets)


def build_ngram(buf: np.ndarray, order: int, vocab_size: int, bos_id: int, *,
                n_buckets: int = 1, discount=None, spill_dir=None, out_dir=None,
                log=None) -> SparseParams:
    """MKN ``SparseParams`` of the order-``order`` model of the flat buffer ``buf``, solved in
    ``n_buckets`` history-token ranges. ``out_dir``: write the arrays there as ``.npy`` files
    and return them memory-mapped (None: read back into memory; the spills always go)."""
    if len(buf) == 0 or buf[0] != bos_id:
        raise InputError("build_ngram needs the flat_buffer(pad=1) layout: BOS ids EOS per "
                         "sequence")
    edges = bucket_edges(buf, bos_id, vocab_size, n_buckets)
    return _build(lambda lo, hi: np.asarray(buf[lo:hi]), len(buf), order, vocab_size, bos_id,
                  edges, discount, spill_dir, out_dir, log)


def _build(read, n_ids, order, V, bos_id, edges, discount, spill_dir, out_dir, log, chunk=None):
    """Stages 2-5 (see the module docstring) on the id stream ``read(lo, hi)``."""
    tmp = make_temp_dir("lmkit-ngram-", dir=spill_dir)
    try:
        paths = partition_windows(read, n_ids, order, bos_id, edges, tmp, V, chunk)
        if log:
            log(f"      partitioned into {len(paths)} bucket(s)")
        folder = Path(out_dir) if out_dir is not None else tmp
        sol = solve_bucket_files([[p] for p in paths], order, V, bos_id, tmp, folder,
                                 discount=discount, log=log)
        if out_dir is None:  # arrays in memory (small builds, tests): read them before tmp goes
            sol = sol.in_memory()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {**sol.info, "buckets": len(edges) - 1}
    return SparseParams(make_groups(0, order), sol.q, sol.S, sol.keys, np.ones(order - 1), info)


@dataclass
class BucketSolution:
    """The MKN solution of the suffix chain ``Suffix(1..M)`` solved bucket by bucket
    (``solve_bucket_files``): ``q`` (V,), per group ``S`` CSR (R_m, V), row ``keys`` (R_m,)
    int64 (global chained keys), ``entry`` (int8 per stored value, or None: see ``fold``),
    ``info`` exactly as ``solve_ngram`` gives it for that chain (discounts, bos_id, loggamma,
    ...), and the number of target positions counted."""

    q: np.ndarray
    S: list
    keys: list
    entry: list | None
    info: dict
    n_positions: int

    def in_memory(self) -> "BucketSolution":
        """The same solution with every array read into memory (from its memory map)."""
        S = [sp.csr_matrix((np.array(x.data), np.array(x.indices), np.array(x.indptr)),
                           shape=x.shape) for x in self.S]
        info = {**self.info, "loggamma": [np.array(g) for g in self.info["loggamma"]]}
        entry = None if self.entry is None else [np.array(e) for e in self.entry]
        return BucketSolution(self.q, S, [np.array(k) for k in self.keys], entry, info,
                              self.n_positions)


def solve_bucket_files(sources, order: int, V: int, bos_id: int, tmp, folder, *,
                       discount=None, fold=None, keep: bool = False, mapper=None,
                       log=None, counts_in=None, counts_out=None) -> BucketSolution:
    """Stages 3-5 on window files (``disk.partition_windows`` / ``partition_positions``):
    ``sources[b]`` lists the files of bucket b (token ranges in increasing order), whose
    windows are counted together (as their concatenation). Equal to ``solve_ngram`` of the
    counts of every window (tested); the arrays are memory maps of ``.npy`` files in
    ``folder``; the per-bucket spills go to ``tmp`` and are removed.

    ``fold(g, data, raw)``: optional, for each group g and bucket its stored values ``data``
    and their raw counts ``raw`` (int64, the same entries) -> ``(data, entry)``: the values
    kept and an int8 array per value, or None (then ``entry`` is None); ``keep``: leave the
    window files (else each is removed once counted); ``mapper(fn, buckets)``: how the buckets
    are counted (default ``map``; e.g. worker processes), yielding ``fn(b)`` in order.

    ``counts_out``: a folder where each bucket's raw counts are kept (``counts.save_counts``,
    ``counts{b:05d}.npz``) for a later solve with more text; ``counts_in``: such a folder, whose
    bucket counts are added to the counts of the windows of ``sources`` (``Counts.__add__``:
    the same counts as the windows of both counted together, so that text is not counted
    again; the buckets must be the same token ranges).
    """
    M = order - 1
    tmp = Path(tmp)
    given = _check_discount(discount)

    def count(b):
        kept = [None if f is None else Path(f) / f"counts{b:05d}.npz"
                for f in (counts_in, counts_out)]
        return _count_bucket(sources[b], order, V, bos_id, tmp / f"bucket{b:05d}.npz",
                             fold is not None, keep, *kept)
    a1 = np.zeros(V, dtype=np.int64)
    nk = np.zeros((M + 1, 4), dtype=np.int64)  # count-of-counts n1..n4 per order
    n_pos = 0
    for b, (a, n, p) in enumerate((mapper or map)(count, range(len(sources)))):
        a1, nk, n_pos = a1 + a, nk + n, n_pos + p
        if log:
            log(f"      bucket {b + 1}/{len(sources)} counted")
    nk[0] = np.bincount(np.minimum(a1[a1 > 0], 5), minlength=6)[1:5]
    discounts, estimated = order_discounts(nk, given)
    q = unigram_level(a1, discounts[0])
    idx_dtype = np.int32 if max(n_pos, V) < np.iinfo(np.int32).max else np.int64
    S, keys, lgs, entry = _solve_buckets(len(sources), M, V, q, discounts, tmp, Path(folder),
                                         idx_dtype, fold, log)
    info = {"discounts": discounts, "discounts_estimated": estimated, "bos_id": int(bos_id),
            "smoothing": "interpolated modified Kneser-Ney", "prune": [0] * (M + 1),
            "lambda_init": [1.0] * M, "lambda_fixed": [True] * M, "loggamma": lgs}
    return BucketSolution(q, S, keys, entry, info, n_pos)


def _count_bucket(files, order, V, bos_id, spill, raw, keep, base=None, save=None):
    """Stage 3 for one bucket: its window files -> adjusted counts (and with ``raw`` the raw
    counts of the lower orders, the top order's are its adjusted counts) spilled to
    ``spill``; ``base``: a file of kept counts (``counts.save_counts``) added to the windows';
    ``save``: where to keep the bucket's raw counts. Returns the unigram adjusted counts (V,),
    count-of-counts (N, 4) and positions."""
    M = order - 1
    buf, pos, starts = load_windows(files, order, V)
    if not keep:
        for path in files:
            Path(path).unlink()
    groups = make_groups(0, order)
    c = count_buffer(buf, pos, starts, V, groups, 0)
    del buf, pos, starts
    if base is not None:
        c = load_counts(base, groups) + c
    if save is not None:
        save_counts(c, save)
    n_pos = c.n_tokens
    A, links = zip(*[_adjusted_counts(c, m, M, bos_id) for m in range(M + 1)])
    nk = np.zeros((M + 1, 4), dtype=np.int64)
    arrays = {}
    for m in range(1, M + 1):
        nk[m] = np.bincount(np.minimum(A[m].data, 5), minlength=6)[1:5]
        arrays.update(csr_to_arrays(f"A{m}", A[m]))
        arrays[f"keys{m}"] = c.keys[m - 1]
        if links[m] is not None:
            arrays[f"link{m}"] = links[m]
        if raw and m < M:  # on the pattern of A[m] (sorted by _adjusted_counts)
            arrays[f"raw{m}"] = c.F[m - 1].data
    a1 = A[0].toarray().ravel()
    del c, A, links
    np.savez(spill, **arrays)
    return a1, nk, n_pos


def _solve_buckets(n_buckets, M, V, q, discounts, tmp, folder, idx_dtype, fold=None, log=None):
    """Stage 5: solve each spilled bucket, appending its rows to the ``.npy`` files of every
    order in ``folder`` (``S{g}_data``, ``S{g}_indices``, ``S{g}_indptr``, ``keys{g}``,
    ``G{g}``, and with ``fold`` returning them, ``E{g}``). Returns S (CSR), keys, log gamma
    and the fold's int8 arrays (or None) per order, memory-mapped from those files."""
    names = ("data", "indices", "indptr", "keys", "G")
    dtypes = (np.float64, idx_dtype, idx_dtype, np.int64, np.float64)
    files = [{n: NpyAppender(folder / f"{'S%d_' % g if n in names[:3] else ''}{n}"
                             f"{g if n in names[3:] else ''}.npy", dt)
              for n, dt in zip(names, dtypes)} for g in range(M)]
    rows = np.zeros(M + 1, dtype=np.int64)  # rows of the earlier buckets, per order
    nnz = np.zeros(M, dtype=np.int64)
    for f in files:
        f["indptr"].append(np.zeros(1))
    try:
        for b in range(n_buckets):
            with np.load(tmp / f"bucket{b:05d}.npz", allow_pickle=False) as z:
                logp, parent_map = None, np.zeros(1, dtype=np.int64)
                added = np.zeros(M + 1, dtype=np.int64)
                for m in range(1, M + 1):
                    link = z[f"link{m - 1}"] if f"link{m - 1}" in z.files else None
                    A = csr_from_arrays(f"A{m}", z)
                    Sm, km, logp, parent_map, lg = _solve_order(
                        A, z[f"keys{m}"], discounts[m], None, q, logp, parent_map, V, link)
                    f = files[m - 1]
                    data = Sm.data
                    if fold is not None:
                        data, e = fold(m - 1, data, z[f"raw{m}"] if m < M else A.data)
                        if e is not None:
                            if "E" not in f:
                                f["E"] = NpyAppender(folder / f"E{m - 1}.npy", np.int8)
                            f["E"].append(e)
                    f["data"].append(data)
                    f["indices"].append(Sm.indices)
                    f["indptr"].append(Sm.indptr[1:] + nnz[m - 1])
                    # local chained keys -> global: parents shift by the earlier buckets' rows
                    f["keys"].append(km + rows[m - 1] * V if m > 1 else km)
                    f["G"].append(lg)
                    nnz[m - 1] += Sm.nnz
                    added[m] = Sm.shape[0]
                    del Sm, km, lg, A, data
                rows += added  # after the bucket: its keys shifted by the earlier buckets only
            (tmp / f"bucket{b:05d}.npz").unlink()
            if log:
                log(f"      bucket {b + 1}/{n_buckets} solved")
    finally:
        paths = [{n: w.close() for n, w in f.items()} for f in files]
    S = [sp.csr_matrix((open_npy(p["data"]), open_npy(p["indices"]), open_npy(p["indptr"])),
                       shape=(int(r), V)) for p, r in zip(paths, rows[1:])]
    entry = [open_npy(p["E"]) for p in paths] if all("E" in p for p in paths) else None
    return (S, [open_npy(p["keys"]) for p in paths], [open_npy(p["G"]) for p in paths], entry)


def build_ngram_from_chunks(chunks, order: int, vocab_size: int, bos_id: int, eos_id: int, *,
                            max_memory=None, discount=None, spill_dir=None, log=None,
                            on_disk: bool = True):
    """Chunks of id sequences -> ``(params, n_sequences, n_tokens)``; ``max_memory`` (bytes or
    size text, e.g. "4G") picks the number of buckets (``n_buckets_for``).

    ``on_disk``: the model's arrays are memory maps of ``.npy`` files in a folder under
    ``spill_dir`` that lives as long as the returned params (removed when they are collected
    or at exit; ``store`` copies or links the files when the model is saved)."""
    V = vocab_size
    tmp = make_temp_dir("lmkit-ids-", dir=spill_dir)
    out = make_temp_dir("lmkit-model-", dir=spill_dir) if on_disk else None
    try:
        ids = tmp / "ids.int32"
        n_ids, n_seq, n_tok, hist = encode_to_disk(chunks, bos_id, eos_id, ids, V)
        if n_seq == 0:
            raise InputError("no sequences to train on: the corpus is empty")
        budget = parse_size(max_memory) if max_memory is not None else None
        B = n_buckets_for(n_tok, budget)
        if log:
            log(f"      {n_seq} sequences, {n_tok} tokens; solving in {B} bucket(s)")
        params = _build(file_reader(ids), n_ids, order, V, bos_id,
                        edges_from_histogram(hist, B), discount, spill_dir, out, log,
                        chunk_for(budget))
    except BaseException:
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out is not None:  # the files live while the arrays may be read (mapped pages survive)
        weakref.finalize(params, shutil.rmtree, out, True)
    return params, n_seq, n_tok
