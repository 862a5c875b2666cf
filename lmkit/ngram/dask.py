"""The whole n-gram (MKN) build on Dask: text shards -> counted, partitioned and solved on workers.

Input: either an iterable of ``str`` lines (cut into shards of ``chunk_lines`` lines on the
client and sent to the workers, as ``distributed.py`` does) or UTF-8 text files that the workers
read themselves, each in byte ranges of ``split_bytes`` (``file_splits``; the workers must see
the same paths), plus a ``Tokenizer`` and the order N >= 2.
Output: ``(SparseParams, n_sequences, n_tokens)``; the params equal
``solve_ngram(count_ngrams(...))`` of the same text (tested on a LocalCluster: keys and
patterns identical, every value to 1e-12).

Partitions (see ``docs/scale.md``, "The n-gram solve on Dask"): histories are split by their
newest token into P token ranges. Chained ids (``features.py``) make a range of ``Suffix(1)``
rows own one contiguous slice of rows of *every* order, and everything MKN computes for an
n-gram ``(..., t, w)`` (its adjusted count, read one order down from n-grams of the same t;
its lower-order probability; gamma of its history) stays inside t's partition. Only the
unigram adjusted counts (V integers) and each order's count-of-counts n1..n4 are global.

Task graph (all heavy work on the workers; the client holds futures, never the data):

1. shard s (a chunk of lines, or a byte range of a file read on the worker): encode into a
   ``flat_buffer`` (``BOS ids EOS`` per line); for each of the P token
   ranges, the windows ``(n, N)`` int32 (the N - 1 history tokens and the target) of the
   positions whose newest history token lies in the range, and where each window's sequence
   starts (``partition_windows``). The ranges are fixed from the first shard's histogram of
   newest tokens: they only balance the load, any ranges give the same model.
2. partition p: its windows from every shard, counted in one go (``count_windows``: one sort
   per order, as the local build), then the adjusted counts of every order (kept on the
   worker); n1..n4 per order and the unigram adjusted counts go to the client.
3. client: discounts (``mkn.order_discounts``) and ``q`` (``mkn.unigram_level``) from the sums;
   ``q`` is broadcast.
4. partition p: ``ngram.mkn.solve_partition`` -> S, keys, log gamma per order, sent to the client,
   which stitches them (``ngram.mkn.stitch_partitions``: row offsets only).

At most ``4 * workers`` shards are in flight. A failure on a worker surfaces as one
``WorkerError`` line (``distributed.result``); the cluster is closed on every exit path
(``distributed.dask_client``). Requires ``pip install 'lmkit[distributed]'``.
"""
from __future__ import annotations

import operator
import os

import numpy as np

from ..config import ScaleConfig
from ..corpus import file_lines, sequences
from ..counts import Counts, count_buffer, flat_buffer
from ..distributed import _tokenizer, dask_client, result
from ..errors import InputError
from ..features import make_groups
from .mkn import (_adjusted_counts, _check_discount, count_of_counts, order_discounts,
                  solve_partition, stitch_partitions, unigram_level)
from ..params import SparseParams
from ..parallel import check_workers, line_chunks


SPLIT_BYTES = 8 << 20  # text per task when workers read files: ~2M tokens, ~50 MB of windows


# ---- pure pieces --------------------------------------------------------------------------------
def token_ranges(newest: np.ndarray, n_parts: int) -> np.ndarray:
    """Edges (P+1,) of at most ``n_parts`` token ranges of about equal mass under the histogram
    ``newest`` (V,) of newest history tokens; a range with no mass joins the one before it.
    Example: [0, 5, 5, 0, 10], 2 parts -> [0, 4, 5]."""
    V = len(newest)
    cum = np.cumsum(newest)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, n_parts) / n_parts, side="right")
    edges = np.unique(np.concatenate([[0], cuts, [V]])).astype(np.int64)
    mass = np.diff(np.concatenate([[0], cum])[edges])
    starts = edges[:-1][mass > 0] if (mass > 0).any() else edges[:1]
    starts[0] = 0
    return np.concatenate([starts, [V]]).astype(np.int64)


def partition_windows(buf: np.ndarray, bos_id: int, edges: np.ndarray, order: int) -> list:
    """A ``flat_buffer(pad=1)`` int32 buffer -> per token range ``[edges[p], edges[p+1])`` of
    the newest history token: ``(windows, first)``, windows int32 (n_p, order) = the order - 1
    tokens before each target and the target (``buf[t-order+1 .. t]``, BOS before the buffer),
    first int16 (n_p,) = index in the window of its sequence's first target (0 if earlier).
    Example: BOS = 1, buf [1, 5, 6, 2], order 2, edges [0, 6, V] -> range 0: windows
    [[1, 5], [5, 6]], first [1, 0]; range 1: [[6, 2]], [0]."""
    W = order
    bos_at = np.flatnonzero(buf == bos_id)
    pos = np.flatnonzero(buf[1:] != bos_id) + 1  # targets: every id but BOS
    first = bos_at[np.searchsorted(bos_at, pos, side="right") - 1] + 1 - (pos - W + 1)
    padded = np.concatenate([np.full(W - 1, bos_id, dtype=np.int32), buf.astype(np.int32)])
    part = np.searchsorted(edges, buf[pos - 1], side="right") - 1
    order_ = np.argsort(part, kind="stable")
    cut = np.searchsorted(part[order_], np.arange(len(edges)))
    out = []
    for p in range(len(edges) - 1):
        at = pos[order_[cut[p]:cut[p + 1]]]
        out.append((padded[at[:, None] + np.arange(W)],
                    np.maximum(first[order_[cut[p]:cut[p + 1]]], 0).astype(np.int16)))
    return out


def count_windows(blocks: list, vocab_size: int, order: int) -> Counts:
    """``Counts`` (groups ``Suffix(1..order-1)``) of the windows of ``partition_windows`` blocks
    ``[(windows, first), ...]``: the counts of exactly those positions, as ``count_buffer``
    gives them for the whole buffer restricted to them (row keys local to the partition)."""
    win = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros((0, order), np.int32)
    first = np.concatenate([b[1] for b in blocks]).astype(np.int64) if blocks else np.zeros(0)
    base = np.arange(len(win), dtype=np.int64) * order
    return count_buffer(win.ravel(), base + order - 1, base + first, vocab_size,
                        make_groups(0, order), 0)


def file_splits(files, split_bytes: int = SPLIT_BYTES) -> list:
    """``(path, start, end)`` byte ranges of at most ``split_bytes`` tiling every file.
    Example: one 10-byte file, split_bytes 4 -> [(f, 0, 4), (f, 4, 8), (f, 8, 10)]."""
    out = []
    for f in files:
        size = os.stat(f).st_size
        out += [(str(f), a, min(a + split_bytes, size)) for a in range(0, size, split_bytes)]
    return out


def split_lines(path: str, start: int, end: int) -> list:
    """The sequences (``corpus.sequences``: as ``TextCorpus`` yields them) of the lines of
    ``path`` that begin in the byte range ``[start, end)``."""
    return list(sequences(file_lines(path, start, end), None))


# ---- worker tasks -------------------------------------------------------------------------------
def _encode(lines, model_proto: bytes) -> np.ndarray:
    """A shard -> its ``flat_buffer``; ``lines``: a list of lines, or a ``(path, start, end)``
    byte range read here."""
    tok = _tokenizer(model_proto)
    if isinstance(lines, tuple):
        lines = split_lines(*lines)
    seqs = tok.encode_batch(lines, num_threads=1)
    return flat_buffer([seqs], tok.bos_id, tok.eos_id, 1)[0]


def _newest_tokens(buf: np.ndarray, bos_id: int, vocab_size: int) -> np.ndarray:
    """Histogram (V,) of the newest history token over the shard's targets (int64)."""
    return np.bincount(buf[:-1][buf[1:] != bos_id], minlength=vocab_size).astype(np.int64)


def _sizes(buf: np.ndarray, bos_id: int) -> tuple:
    n_seq = int(np.count_nonzero(buf == bos_id))
    return n_seq, len(buf) - n_seq


def _count_partition(bos_id: int, vocab_size: int, order: int, *blocks) -> dict:
    """One partition: count its windows, then its adjusted counts (all orders) and its share of
    the global statistics."""
    c = count_windows(list(blocks), vocab_size, order)
    M = order - 1
    A, links = (list(x) for x in zip(*[_adjusted_counts(c, m, M, bos_id) for m in range(M + 1)]))
    nk = np.zeros((M + 1, 4), dtype=np.int64)  # row 0 (unigrams) is filled on the client
    for m in range(1, M + 1):
        nk[m] = count_of_counts(A[m].data)
    return {"A": A, "links": links, "keys": c.keys, "nk": nk, "a1": A[0].toarray().ravel()}


def _global_part(state: dict) -> tuple:
    return state["nk"], state["a1"]


def _solve(state: dict, discounts: list, q: np.ndarray, V: int) -> tuple:
    return solve_partition(state["A"], state["keys"], state["links"], discounts, q, V)


# ---- the client -----------------------------------------------------------------------------
def build_ngram_dask(lines, tokenizer, order: int, *, files=None, discount=None,
                     chunk_lines: int = ScaleConfig.chunk_lines, split_bytes: int = SPLIT_BYTES,
                     partitions: int | None = None, scheduler: str | None = None,
                     n_workers: int | None = None, processes: bool = True, progress=None,
                     log=None) -> tuple[SparseParams, int, int]:
    """MKN of order ``order`` built on a Dask cluster (module docstring); returns
    ``(params, n_sequences, n_tokens)``. ``files``: text files the workers read themselves
    (then ``lines`` is ignored); ``partitions``: token ranges (default 2 per worker);
    ``progress(n_tokens)`` is called per encoded shard."""
    V, M = tokenizer.vocab_size, order - 1
    make_groups(0, order)  # checks the order
    given = _check_discount(discount)
    n_workers = check_workers(n_workers)
    with dask_client(scheduler, n_workers, processes, log) as client:
        n = max(1, len(client.scheduler_info().get("workers", {})))
        shards = (line_chunks(lines, chunk_lines) if files is None
                  else file_splits(files, split_bytes))
        if log and files is not None:
            log(f"      the workers read {len(files)} files in {len(shards)} byte ranges")
        blocks, n_seq, n_tok = _partitioned_windows(client, shards, tokenizer, order,
                                                    partitions or 2 * n, n, progress)
        states = [client.submit(_count_partition, tokenizer.bos_id, V, order, *parts, pure=False)
                  for parts in blocks]
        del blocks
        parts = [result(client.submit(_global_part, s, pure=False), "counting a partition")
                 for s in states]
        nk = np.sum([x[0] for x in parts], axis=0)
        a1 = np.sum([x[1] for x in parts], axis=0)
        nk[0] = count_of_counts(a1[a1 > 0])
        discounts, estimated = order_discounts(nk, given)
        q = unigram_level(a1, discounts[0])
        if log:
            log(f"      {n_seq} sequences, {n_tok} tokens; solving {len(states)} partitions "
                f"on the workers")
        q_f = client.scatter(q, broadcast=True)
        solved = [client.submit(_solve, s, discounts, q_f, V, pure=False) for s in states]
        del states
        tables = [result(f, "solving a partition") for f in solved]
    S, keys, loggamma = stitch_partitions(tables, V)
    info = {"discounts": discounts, "discounts_estimated": estimated, "bos_id": tokenizer.bos_id,
            "smoothing": "interpolated modified Kneser-Ney", "prune": [0] * (M + 1),
            "lambda_init": [1.0] * M, "lambda_fixed": [True] * M, "loggamma": loggamma,
            "partitions": len(tables)}
    return SparseParams(make_groups(0, order), q, S, keys, np.ones(M), info), n_seq, n_tok


def _partitioned_windows(client, shards, tokenizer, order: int, P: int, n: int, progress):
    """Encode every shard on the workers and cut its n-gram windows into ``P`` token ranges
    (from the first shard with a line); returns ``(blocks, n_sequences, n_tokens)``: per range
    the futures of its windows, one per shard. At most ``4 n`` shards are in flight."""
    from dask.distributed import wait
    V, bos = tokenizer.vocab_size, tokenizer.bos_id
    proto = client.scatter(tokenizer.model_proto, broadcast=True)
    edges, blocks, in_flight, n_seq, n_tok = None, [], set(), 0, 0
    for shard in shards:
        buf = client.submit(_encode, shard, proto, pure=False)
        in_flight.add(client.submit(_sizes, buf, bos, pure=False))
        if edges is None:  # ranges from the first shard: they balance, they do not decide
            newest = result(client.submit(_newest_tokens, buf, bos, V, pure=False),
                            "encoding the first shard")
            if not newest.any():  # a byte range with no line: nothing to partition yet
                continue
            edges = token_ranges(newest, P)
            blocks = [[] for _ in range(len(edges) - 1)]
        windows = client.submit(partition_windows, buf, bos, edges, order, pure=False)
        for p, parts in enumerate(blocks):
            parts.append(client.submit(operator.getitem, windows, p, pure=False))
        del buf, windows  # the futures above keep what they need alive on the workers
        if len(in_flight) >= 4 * n:
            done, in_flight = wait(in_flight, return_when="FIRST_COMPLETED")
            n_seq, n_tok = _report(done, progress, n_seq, n_tok)
    n_seq, n_tok = _report(in_flight, progress, n_seq, n_tok)
    if edges is None:
        raise InputError("no text to count: the corpus has no lines; give files with some text")
    return blocks, n_seq, n_tok


def _report(futures, progress, n_seq: int, n_tok: int) -> tuple:
    """Totals plus the shards in ``futures``; every shard's sizes are read, so a failed shard
    surfaces here."""
    for f in futures:
        seqs, toks = result(f, "encoding a shard")
        n_seq, n_tok = n_seq + seqs, n_tok + toks
        if progress:
            progress(toks)
    return n_seq, n_tok
