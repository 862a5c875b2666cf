"""Scoring: model parameters + contexts -> natural-log probabilities of targets.

Two parameter forms share one interface:

- ``SparseParams`` (``explicit.py``): ``logits = log q + sum_g lambda_g S_g[row_g]``, normalised
  over the union of touched columns, cost proportional to the non-zeros touched;
- ``DenseParams``: ``logits = b + sum_g W_g[row_g]`` with dense ``W_g`` (R_g, V) — the form the
  gradient solver trains; scored densely with a float64 log-sum-exp.

``features.context_rows`` turns token sequences into, per group, the weight-matrix row of every
target position (-1 = no feature: an unseen n-gram history), plus the targets (re-exported here).

Every sparse path (``log_proba``, ``next_logp``, ``next_logp_batch``: ``eval``, ``score``,
``next``, generation, the neural hybrid's explicit term) goes through one ``SparseScorer`` per
parameters (``sparse_scorer``, derived state built once): target scores of many positions by
the compiled union-product loop (``fastscore.py``, run as cached object code by ``native.py``)
or, without numba, by the reference ``sparse_log_proba``; full next-token distributions by a
dense scatter of the touched entries (their output is (n, V) anyway). All of them equal
``sparse_log_proba`` to ~1e-13.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .params import DenseParams, SparseParams, stored_arrays
from .sparse import log_softmax, lookup_values, take_rows, union_log_z
# the rows of each context are a features job; re-exported for the callers that score
from .features import context_rows, next_rows  # noqa: F401

if TYPE_CHECKING:
    import scipy.sparse as sp  # annotations only: SciPy is imported where a CSR is built


def sparse_scores(params: SparseParams, rows: list, n: int) -> sp.csr_matrix:
    """``s = sum_g lambda_g S_g[row_g]`` as a CSR (n, V): the union pattern of the touched rows."""
    import scipy.sparse as sp  # here, not at the top: scoring an n-gram folder needs no SciPy
    V = params.vocab_size
    parts = [take_rows(S, r, lam) for S, r, lam in zip(params.S, rows, params.lambdas)
             if lam != 0.0]
    while len(parts) > 1:  # pairwise: each level merges every entry once (not once per group)
        parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0].tocsr() if parts else sp.csr_matrix((n, V))


def sparse_log_proba(params: SparseParams, rows: list, targets: np.ndarray,
                     chunk: int = 2048) -> np.ndarray:
    """log P(target | context) per position (natural log), float64 (N,)."""
    q, logq = params.q, np.log(params.q)
    out = np.empty(len(targets))
    for a in range(0, len(targets), chunk):
        r = [x[a:a + chunk] for x in rows]
        t = targets[a:a + chunk]
        s = sparse_scores(params, r, len(t))
        log_z = union_log_z(q, s)
        tgt = np.zeros(len(t))
        for S, rg, lam in zip(params.S, r, params.lambdas):
            present = rg >= 0
            if lam != 0.0 and present.any():
                tgt[present] += lam * lookup_values(S, rg[present], t[present])
        out[a:a + chunk] = logq[t] + tgt - log_z
    return out


def sparse_next_logp(params: SparseParams, rows: list) -> np.ndarray:
    """Full next-token log distribution (V,) for one position (O(V) vector, sparse work)."""
    return sparse_scorer(params).next_logp_batch([r[:1] for r in rows])[0]


def sparse_next_logp_batch(params: SparseParams, rows: list) -> np.ndarray:
    """Full next-token log distributions (n, V) float64 for n positions: O(touched nnz + n V)."""
    return sparse_scorer(params).next_logp_batch(rows)


# ---- the one fast exact scorer of sparse parameters ------------------------------------------
def _compiled(kind: str = "union_products", itype: str = "i4", ptype: str = "i4"):
    """The compiled loop ``fastscore.<kind>`` for columns ``itype`` and row pointers ``ptype``
    (``fastscore.DTYPES`` keys) as a ``native.Kernel`` (cached object code: no numba import
    once built), or None without numba (or with ``USE_COMPILED`` False)."""
    if not USE_COMPILED:
        return None
    from . import native
    return native.kernel("fastscore", f"{kind}_{itype}_{ptype}")


_UNSET = object()
USE_COMPILED = True  # False: always the numpy path (tests compare the two)
# fewer positions than this use numpy (compiled calls have a fixed cost; the tables are kept
# with the parameters and each row is exponentiated once, when first touched)
COMPILED_MIN_POSITIONS = 4096
COMPILED_MIN_DISTRIBUTIONS = 64
BLOCK = 2048  # positions whose row ranges the compiled loops look up at a time (kept in cache)
_DT_NAMES = {np.dtype(np.uint16): "u2", np.dtype(np.int32): "i4", np.dtype(np.int64): "i8"}


def _readonly(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` as ``dtype`` (no copy when it already is), viewed read-only: one array type for
    every group, so numba compiles the loops once."""
    view = np.asarray(a).astype(dtype, copy=False).view()
    view.flags.writeable = False
    return view


DENSE_ROWS_BYTES = 64 << 20  # at most this much memory for dense copies of long rows


def score_tables(params: SparseParams) -> tuple:
    """The tables ``fastscore`` multiplies with, for the active groups (lambda != 0):
    ``(E, ind, ptr, dmap, D)`` — tuples of per group E (nnz,) float64 ``exp(lambda_g S_g.data)``
    (overflows become inf, which the scorer's log-space fallback handles), ``ind`` =
    S_g.indices and ``ptr`` = S_g.indptr as stored (``params.stored_arrays``), read-only, the
    pointers all int32 or all int64 and the columns all uint16 (a compact folder) or of the
    pointers' type (not copied when they already are: one type for every group, so numba
    compiles the loops once per combination), ``dmap``
    (R_g,) int64 each row's copy in D (-1: none; empty: the group has none), and ``D`` (K, V)
    float64 dense copies of the rows with more than V/3 entries (1 where nothing is stored;
    longest first, within ``DENSE_ROWS_BYTES``)."""
    active = [g for g, lam in enumerate(params.lambdas) if lam != 0.0]
    # the arrays as stored: a loaded compact folder's float32 values and uint16 columns are
    # read as they are (params.LazyCSRs), never widened into copies for scoring
    S = [stored_arrays(params.S, g) for g in active]
    V = params.vocab_size
    E = []
    with np.errstate(over="ignore"):
        for g, (data, _, _) in zip(active, S):  # in place: one new array per group
            e = np.multiply(data, params.lambdas[g], dtype=np.float64)
            E.append(np.exp(e, out=e))
    cand = []
    for i, (_, _, indptr) in enumerate(S):
        L = np.diff(indptr)
        cand += [(int(L[r]), i, int(r)) for r in np.flatnonzero(L > V // 3)]
    cand = sorted(sorted(cand, reverse=True)[:max(0, DENSE_ROWS_BYTES // (8 * V))],
                  key=lambda c: c[1:])  # by group, then row
    D = np.ones((len(cand), V))
    dmap = [np.zeros(0, dtype=np.int64) for _ in S]
    for k, (_, i, r) in enumerate(cand):
        _, indices, indptr = S[i]
        if not len(dmap[i]):
            dmap[i] = np.full(len(indptr) - 1, -1, dtype=np.int64)
        dmap[i][r] = k
        lo, hi = indptr[r], indptr[r + 1]
        D[k, indices[lo:hi]] = E[i][lo:hi]
    wide = any(p.dtype != np.int32 for _, _, p in S)
    ptype = np.int64 if wide else np.int32
    # columns: uint16 when every active group stores them so (V <= 65536), else as the pointers
    itype = np.uint16 if S and all(i.dtype == np.uint16 for _, i, _ in S) else ptype
    return (tuple(E), tuple(_readonly(i, itype) for _, i, _ in S),
            tuple(_readonly(p, ptype) for _, _, p in S), tuple(dmap), D)


def _rows_array(rows: list, active: list, perm=None) -> np.ndarray:
    """The active groups' rows as one int64 (G, N) array, in the order ``perm`` if given."""
    n = len(rows[active[0]]) if active else 0
    out = np.empty((len(active), n if perm is None else len(perm)), dtype=np.int64)
    for i, g in enumerate(active):
        r = np.asarray(rows[g], dtype=np.int64)
        if perm is None:
            out[i] = r
        else:
            np.take(r, perm, out=out[i])
    return out


def table_addresses(tables: tuple) -> np.ndarray:
    """``score_tables``' per-group arrays as the compiled loops take them: int64 (4 G, 2) of
    (address, length), rows g, G + g, 2 G + g, 3 G + g = group g's E, columns, row pointers,
    dense map (``fastscore._kernels``). Valid while ``tables`` lives."""
    E, ind, ptr, dmap, _ = tables
    return np.array([(a.__array_interface__["data"][0], len(a)) for a in (*E, *ind, *ptr, *dmap)],
                    dtype=np.int64).reshape(-1, 2)


def shared_groups(rows: tuple, tables: tuple, vocab_size: int, sample: int = 4096) -> np.ndarray:
    """Which groups ``fastscore.union_products`` keeps across neighbouring positions: (G,) int8
    (0: none, 1: in the kept product, 2: in its slower outer part; see ``union_products``);
    ``rows`` (G, N) of the active groups in walking order; ``tables``: ``score_tables``.

    Greedy on a sample of neighbour pairs: add the group that most lowers the estimated cost
    (touched entries; rebuilding the kept product costs ~V/4 entries' worth plus its own
    entries whenever one of its rows changes) until none does.
    """
    G = len(rows)
    N = len(rows[0]) if G else 0
    shared = np.zeros(G, dtype=bool)
    if N < 2 or G == 0:
        return shared.astype(np.int8)
    idx = np.arange(1, N, max(1, (N - 1) // sample))
    _, _, ptrs, dmaps, _ = tables
    cur_r = np.stack([r[idx] for r in rows], axis=1)  # (n, G) sampled rows
    prev_r = np.stack([r[idx - 1] for r in rows], axis=1)
    changed = cur_r != prev_r
    length = np.zeros(cur_r.shape)
    for g in range(G):
        if len(ptrs[g]) < 2:  # a group with no rows left (every entry weighted 0): no cost
            continue
        r = cur_r[:, g]
        ok = r >= 0
        rr = np.where(ok, r, 0)
        n = np.where(ok, ptrs[g][rr + 1].astype(np.int64) - ptrs[g][rr], 0)
        if len(dmaps[g]):  # a dense row costs a pass over V, about V/3 scattered entries' worth
            n = np.where(ok & (dmaps[g][rr] >= 0), vocab_size // 3, n)
        length[:, g] = n
    cur, best = np.zeros(len(idx), dtype=bool), 0.0
    while True:
        pick = None
        for g in np.flatnonzero(~shared):
            ch = cur | changed[:, g]
            kept = length[:, shared].sum(axis=1) + length[:, g]
            saving = float((kept * ~ch).mean() - ch.mean() * vocab_size / 4)
            if saving > best:
                best, pick, pick_ch = saving, g, ch
        if pick is None:
            break
        shared[pick], cur = True, pick_ch
    # level 2: kept groups whose rows change far less often than the kept product as a whole
    # (rebuilding the rest then starts from their product, not from q)
    level = shared.astype(np.int8)
    rate = changed.mean(axis=0)
    level[shared & (rate <= cur.mean() / 4)] = 2
    return level


class SparseScorer:
    """Fast exact scoring of one ``SparseParams`` (derived state: get it with
    ``sparse_scorer(params)``, which builds it once per parameters object).

    ``log_proba(rows, targets, order)`` -> float64 (N,); ``next_logp_batch(rows)`` -> float64
    (n, V). Natural logs; each equals the reference ``sparse_log_proba`` to ~1e-13.
    """

    def __init__(self, params: SparseParams):
        self.params = params
        self.logq = np.log(params.q)
        self.active = [g for g, lam in enumerate(params.lambdas) if lam != 0.0]
        self._tables = _UNSET

    def tables(self):
        """``score_tables`` (built on first use: one exp per stored entry)."""
        if self._tables is _UNSET:
            self._tables = score_tables(self.params)
            self._addresses = table_addresses(self._tables)
        return self._tables

    def kernel(self, kind: str):
        """The compiled ``fastscore`` loop ``kind`` for these tables' index dtypes (builds the
        tables), or None (numpy route)."""
        _, ind, ptr, _, _ = self.tables()
        it = _DT_NAMES[ind[0].dtype] if ind else "i4"
        pt = _DT_NAMES[ptr[0].dtype] if ptr else "i4"
        return _compiled(kind, it, pt)

    def union_products(self, rows: np.ndarray, shared: np.ndarray, targets: np.ndarray,
                       term: np.ndarray, z: np.ndarray) -> None:
        """``fastscore``'s ``union_products`` on these tables: ``rows`` int64 (G, N) of the
        active groups, in walking order, ``shared`` (G,) int8 levels, ``targets`` int64 (N,);
        writes ``term`` and ``z`` float64 (N,). Needs ``kernel`` not None."""
        G, V = len(self.active), self.params.vocab_size
        if rows.shape != (G, len(targets)) or shared.shape != (G,):
            raise ValueError(f"rows must be ({G}, {len(targets)}) and shared ({G},)")
        self.kernel("union_products")(
            self.params.q, self._addresses, self._tables[4], rows, shared, targets, term, z,
            np.empty((3, V)), np.empty((2 * G + 3, max(BLOCK, G)), dtype=np.int64))

    def dense_scores(self, rows: list) -> np.ndarray:
        """``s = sum_g lambda_g S_g[row_g]`` as a dense float64 (n, V): one scatter of every
        touched entry, summed in group order."""
        n, V = len(rows[0]) if rows else 0, self.params.vocab_size
        pos, vals = [], []
        if n <= 16:  # a few positions (next, generation): slices of the stored arrays
            for i in range(n):
                for g in self.active:
                    r = int(rows[g][i])
                    if r >= 0:
                        data, indices, indptr = stored_arrays(self.params.S, g)
                        lo, hi = indptr[r], indptr[r + 1]
                        pos.append(indices[lo:hi].astype(np.int64) + i * V)
                        vals.append(np.multiply(data[lo:hi], self.params.lambdas[g],
                                                dtype=np.float64))
        for g in self.active if n > 16 else ():
            sub = take_rows(self.params.S[g], np.asarray(rows[g]), self.params.lambdas[g])
            pos.append(np.repeat(np.arange(n, dtype=np.int64) * V, np.diff(sub.indptr))
                       + sub.indices)
            vals.append(sub.data)
        if not pos:
            return np.zeros((n, V))
        return np.bincount(np.concatenate(pos), np.concatenate(vals),
                           minlength=n * V).reshape(n, V)

    def next_logp_batch(self, rows: list) -> np.ndarray:
        """Full next-token log distributions (n, V) float64: O(touched entries + n V)."""
        n = len(rows[0]) if rows else 0
        # the kernel last: `lmkit next` (one distribution) never loads one
        fast = None if n < COMPILED_MIN_DISTRIBUTIONS or not self.active else \
            self.kernel("product_rows")
        if fast is None:
            return log_softmax(self.logq + self.dense_scores(rows))
        out, z = np.empty((n, self.params.vocab_size)), np.empty(n)
        G = len(self.active)
        fast(self.params.q, self._addresses, self._tables[4], _rows_array(rows, self.active),
             out, z, np.empty((2 * G, BLOCK), dtype=np.int64))
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            out = np.log(out, out=out)
            out -= np.log(z)[:, None]
        bad = ~np.isfinite(out).all(axis=1)  # a product under- or overflowed: log space
        if bad.any():
            out[bad] = log_softmax(self.logq + self.dense_scores([np.asarray(r)[bad]
                                                                   for r in rows]))
        return out

    def log_proba(self, rows: list, targets: np.ndarray, order=None) -> np.ndarray:
        """log P(target | context) per position, float64 (N,). ``order``: optional permutation
        of the positions that puts neighbours with shared rows next to each other (the
        ``history_order`` of ``context_rows``): only speed depends on it."""
        targets = np.asarray(targets, dtype=np.int64)
        if not self.active:
            return self.logq[targets]
        # a short batch takes the numpy route without importing numba (issue 21, start-up)
        fast = None if len(targets) < COMPILED_MIN_POSITIONS else \
            self.kernel("union_products")
        if fast is None:
            with np.errstate(over="ignore", invalid="ignore"):
                out = sparse_log_proba(self.params, rows, targets)
        else:
            # without a history order, sort by the first group's rows (window models: the
            # previous token) so that neighbours share rows
            perm = np.asarray(order, dtype=np.int64) if order is not None else \
                np.argsort(np.asarray(rows[self.active[0]]), kind="stable")
            if perm.shape != targets.shape or (len(perm) and not
                                               0 <= perm.min() <= perm.max() < len(perm)):
                raise ValueError(f"order must be a permutation of the {len(targets)} positions")
            # the rows in walking order: the compiled loop then reads them in sequence
            r = _rows_array(rows, self.active, perm)
            shared = shared_groups(r, self.tables(), self.params.vocab_size)
            term, z = np.empty(len(targets)), np.empty(len(targets))
            self.union_products(r, shared, targets.take(perm), term, z)
            out = np.empty(len(targets))
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                np.log(term, out=term)
                out[perm] = term - np.log(z, out=z)
        bad = np.flatnonzero(~np.isfinite(out))
        for a in range(0, len(bad), 256):  # a sum overflowed: the max-shifted dense log-softmax
            b = bad[a:a + 256]
            lp = log_softmax(self.logq + self.dense_scores([np.asarray(r)[b] for r in rows]))
            out[b] = lp[np.arange(len(b)), targets[b]]
        return out


def sparse_scorer(params: SparseParams) -> SparseScorer:
    """The ``SparseScorer`` of ``params``, built once and kept on the (frozen) object."""
    scorer = params.__dict__.get("_scorer")
    if scorer is None:
        scorer = SparseScorer(params)
        object.__setattr__(params, "_scorer", scorer)
    return scorer


def dense_logits(params: DenseParams, rows: list) -> np.ndarray:
    """``b + sum_g W_g[row_g]`` as float64 (N, V); rows of -1 contribute nothing."""
    n = len(rows[0])
    logits = np.broadcast_to(params.b.astype(np.float64), (n, params.vocab_size)).copy()
    for W, r in zip(params.W, rows):
        present = np.flatnonzero(r >= 0)
        logits[present] += W[r[present]]
    return logits


def dense_log_proba(params: DenseParams, rows: list, targets: np.ndarray,
                    chunk: int = 1024) -> np.ndarray:
    """log P(target | context) per position for dense parameters, float64 (N,)."""
    out = np.empty(len(targets))
    for a in range(0, len(targets), chunk):
        lp = log_softmax(dense_logits(params, [x[a:a + chunk] for x in rows]))
        t = targets[a:a + chunk]
        out[a:a + chunk] = lp[np.arange(len(t)), t]
    return out


def log_proba(params, rows: list, targets: np.ndarray, order=None) -> np.ndarray:
    """Dispatch on the parameter form (``order``: see ``SparseScorer.log_proba``)."""
    if isinstance(params, SparseParams):
        return sparse_scorer(params).log_proba(rows, targets, order)
    return dense_log_proba(params, rows, targets)


def next_logp(params, rows: list) -> np.ndarray:
    """Next-token log distribution (V,) for one position, any parameter form."""
    if isinstance(params, SparseParams):
        return sparse_next_logp(params, rows)
    return log_softmax(dense_logits(params, [r[:1] for r in rows]))[0]


def next_logp_batch(params, rows: list) -> np.ndarray:
    """Next-token log distributions (n, V) float64 for n positions, any parameter form."""
    if isinstance(params, SparseParams):
        return sparse_next_logp_batch(params, rows)
    return log_softmax(dense_logits(params, rows))
