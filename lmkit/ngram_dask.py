"""The whole n-gram (MKN) build on Dask: text shards -> counted, partitioned and solved on workers.

Input: an iterable of ``str`` lines (cut into shards of ``chunk_lines`` lines on the client and
sent to the workers, as ``distributed.py`` does), a ``Tokenizer`` and the order N >= 2.
Output: ``(SparseParams, n_sequences, n_tokens)``; the params equal
``solve_ngram(count_ngrams(...))`` of the same text (tested on a LocalCluster: keys and
patterns identical, every value to 1e-12).

Partitions (see ``docs/scale.md``, "The n-gram solve on Dask"): histories are split by their
newest token into P token ranges. Chained ids (``features.py``) make a range of ``Suffix(1)``
rows own one contiguous slice of rows of *every* order, and everything MKN computes for an
n-gram ``(..., t, w)`` (its adjusted count, read one order down from n-grams of the same t;
its lower-order probability; gamma of its history) stays inside t's partition. Only the
unigram adjusted counts (V integers) and each order's count-of-counts n1..n4 are global.

Task graph (all heavy work on the workers; arrows are futures, never data on the client):

1. shard s: encode + ``count_ngrams`` -> ``Counts``; ``split_by_newest_token`` -> P pieces,
   each re-keyed to partition-local chained ids. The P token ranges are fixed from the first
   shard's histogram of newest tokens (they only balance the load; any ranges give the same
   model).
2. partition p: its pieces are summed as they arrive (streaming tree reduction, as in
   ``counts.sum_counts``), then ``_adjust``: adjusted counts of every order (kept on the
   worker); n1..n4 per order and the unigram adjusted counts go to the client.
3. client: discounts (``ngram.order_discounts``) and ``q`` (``ngram.unigram_level``) from the
   sums; ``q`` is broadcast.
4. partition p: ``ngram.solve_partition`` -> S, keys, log gamma per order, sent to the client,
   which stitches them (``ngram.stitch_partitions``: row offsets only).

At most ``4 * workers`` shards are in flight. A failure on a worker surfaces as one
``WorkerError`` line (``distributed.result``); the cluster is closed on every exit path
(``distributed.dask_client``). Requires ``pip install 'lmkit[distributed]'``.
"""
from __future__ import annotations

import operator

import numpy as np

from .counts import Counts, count_ngrams
from .distributed import _tokenizer, dask_client, result
from .errors import InputError
from .features import make_groups
from .ngram import (_adjusted_counts, _check_discount, count_of_counts, order_discounts,
                    solve_partition, stitch_partitions, unigram_level)
from .params import SparseParams
from .parallel import check_workers, line_chunks


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


def split_by_newest_token(c: Counts, edges: np.ndarray) -> list:
    """``Counts`` of a pure suffix model -> one ``Counts`` per token range ``[edges[p],
    edges[p+1])`` of the newest history token: row slices of every order, keys re-keyed to
    the slice (``key - first parent row * V``), targets and tokens of the slice's positions.
    ``n_sequences`` stays with piece 0. ``stitch_partitions`` undoes the re-keying."""
    V = c.vocab_size
    bounds = [np.searchsorted(c.keys[0], edges)]  # row edges per suffix group
    for k in c.keys[1:]:
        bounds.append(np.searchsorted(k // V, bounds[-1]))  # keys sorted by parent row
    pieces = []
    for p in range(len(edges) - 1):
        F, keys = [], []
        for m, (Fm, km, b) in enumerate(zip(c.F, c.keys, bounds)):
            F.append(Fm[b[p]:b[p + 1]])
            keys.append(km[b[p]:b[p + 1]] - (bounds[m - 1][p] * V if m else 0))
        target = np.bincount(F[0].indices, F[0].data, minlength=V).astype(np.int64)
        pieces.append(Counts(V, list(c.groups), F, keys, target,
                             c.n_sequences if p == 0 else 0, int(target.sum())))
    return pieces


# ---- worker tasks -------------------------------------------------------------------------------
def _count_shard(lines: list, model_proto: bytes, order: int) -> Counts:
    tok = _tokenizer(model_proto)
    seqs = tok.encode_batch(lines, num_threads=1)
    return count_ngrams([seqs], tok.vocab_size, make_groups(0, order), tok.bos_id, tok.eos_id)


def _newest_tokens(c: Counts) -> np.ndarray:
    """Histogram (V,) of the newest history token over the shard's positions (int64)."""
    F = c.F[0]
    return np.bincount(np.repeat(c.keys[0], np.diff(F.indptr)), F.data,
                       minlength=c.vocab_size).astype(np.int64)


def _sizes(c: Counts) -> tuple:
    return c.n_sequences, c.n_tokens


def _add(a: Counts, b: Counts) -> Counts:
    return a + b


def _adjust(c: Counts, bos_id: int) -> dict:
    """A partition's adjusted counts (all orders) and its share of the global statistics."""
    M = len(c.groups)
    A, links = (list(x) for x in zip(*[_adjusted_counts(c, m, M, bos_id) for m in range(M + 1)]))
    nk = np.zeros((M + 1, 4), dtype=np.int64)  # row 0 (unigrams) is filled on the client
    for m in range(1, M + 1):
        nk[m] = count_of_counts(A[m].data)
    return {"A": A, "links": links, "keys": c.keys, "nk": nk,
            "a1": A[0].toarray().ravel(), "tokens": c.n_tokens, "sequences": c.n_sequences}


def _global_part(state: dict) -> tuple:
    return state["nk"], state["a1"], state["sequences"], state["tokens"]


def _solve(state: dict, discounts: list, q: np.ndarray, V: int) -> tuple:
    return solve_partition(state["A"], state["keys"], state["links"], discounts, q, V)


# ---- the client -----------------------------------------------------------------------------
def build_ngram_dask(lines, tokenizer, order: int, *, discount=None, chunk_lines: int = 10000,
                     partitions: int | None = None, scheduler: str | None = None,
                     n_workers: int | None = None, processes: bool = True, progress=None,
                     log=None) -> tuple[SparseParams, int, int]:
    """MKN of order ``order`` built on a Dask cluster (module docstring); returns
    ``(params, n_sequences, n_tokens)``. ``partitions``: token ranges (default 2 per worker);
    ``progress(n_tokens)`` is called per counted shard."""
    V, M = tokenizer.vocab_size, order - 1
    make_groups(0, order)  # checks the order
    given = _check_discount(discount)
    n_workers = check_workers(n_workers)
    with dask_client(scheduler, n_workers, processes, log) as client:
        from dask.distributed import wait
        n = max(1, len(client.scheduler_info().get("workers", {})))
        P = partitions or 2 * n
        proto = client.scatter(tokenizer.model_proto, broadcast=True)
        edges, stacks, in_flight = None, [], set()
        for chunk in line_chunks(lines, chunk_lines):
            shard = client.submit(_count_shard, chunk, proto, order, pure=False)
            in_flight.add(client.submit(_sizes, shard, pure=False))
            if edges is None:  # ranges from the first shard: they balance, they do not decide
                edges = token_ranges(result(client.submit(_newest_tokens, shard, pure=False),
                                            "counting the first shard"), P)
                stacks = [[] for _ in range(len(edges) - 1)]
            pieces = client.submit(split_by_newest_token, shard, edges, pure=False)
            for p, stack in enumerate(stacks):
                fut, size = client.submit(operator.getitem, pieces, p, pure=False), 1
                while stack and stack[-1][0] == size:  # same pairing as counts.sum_counts
                    fut = client.submit(_add, stack.pop()[1], fut, pure=False)
                    size *= 2
                stack.append((size, fut))
            del shard, pieces
            if len(in_flight) >= 4 * n:
                done, in_flight = wait(in_flight, return_when="FIRST_COMPLETED")
                _report(done, progress)
        _report(in_flight, progress)
        if edges is None:
            raise InputError("no text to count: the corpus has no lines; give files with some text")
        states = []
        for stack in stacks:
            total = stack.pop()[1]
            while stack:
                total = client.submit(_add, stack.pop()[1], total, pure=False)
            states.append(client.submit(_adjust, total, tokenizer.bos_id, pure=False))
        del stacks, total
        parts = [result(client.submit(_global_part, s, pure=False), "adjusting counts")
                 for s in states]
        nk = np.sum([x[0] for x in parts], axis=0)
        a1 = np.sum([x[1] for x in parts], axis=0)
        nk[0] = count_of_counts(a1[a1 > 0])
        n_seq, n_tok = sum(x[2] for x in parts), sum(x[3] for x in parts)
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


def _report(futures, progress) -> None:
    for f in futures:  # every shard's sizes are read, so a failed shard surfaces here
        n_tok = result(f, "counting a shard")[1]
        if progress:
            progress(n_tok)
