"""The held-out NLL of the weights and its derivatives: held-out rows -> sums over chunks.

Input: ``SparseParams`` (``params.py``), per group the row used at each of the N held-out
positions (int (N,), -1 = none), the targets (N,) and the parameter of each stored value
(per position or per entry bucket). Output: ``HeldoutNLL``, the mean NLL per token (nats) as
a function of the P weights, with its gradient (P,) and Hessian (P, P) on request; the
weight search (``explicit.choose_lambdas``) minimises it.

The NLL, gradient and Hessian are sums over held-out positions, so they are computed a chunk
of positions at a time (``HeldoutChunk``: the chunk's touched entries as a sparse design
matrix) and added up. ``HeldoutPlan`` cuts the positions: interleaved chunks (chunk i holds
positions i, i + n_chunks, ...), the Hessian sampled on every ``hessian_every``-th; under a
memory bound (``max_bytes``) a chunk too large for it is cut into pieces of positions (the
same sums, added in another order), the pieces that fit a cache are built once and kept, the
others built again at every evaluation. ``workers`` > 1 computes the pieces' terms in that
many processes (``pool.WorkerGroup``: each builds and keeps its own pieces), the parent
adds them in piece order: the same numbers as one process.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import native
from .errors import MemoryLimitError
from .io.npyfile import release_pages
from .memory import format_bytes
from .pool import WorkerGroup
from .params import SparseParams

# Bytes per touched entry (one stored value of a held-out row), measured with tracemalloc on
# 4M real tokens (V = 4096, 19 groups), rounded up: held by a built piece (X, its row index;
# 23.6, 35.5 with the Hessian sample's transpose), and at the peak of building one and
# evaluating it (79: the entries' keys, columns and values, concatenated, then the CSR
# conversion; the exact Hessian adds 25 to a piece outside the sample).
HELD_BYTES, BUILD_BYTES = 40, 96
# 2**21 cells bound a chunk's union bitmap and keep its arrays under glibc's 32 MiB mmap
# threshold (memory reused, not page-faulted again)
MAX_CELLS = 1 << 21


def _row_entries(S: sp.csr_matrix, r: np.ndarray):
    """Position (int64) and entry index into ``S.data`` of every stored value of the rows
    ``r[n]`` (skipping ``r[n] < 0``), positions in order. Example: indptr [0, 2, 3], r [1, -1, 0]
    -> positions [0, 2, 2], entries [2, 0, 1]."""
    present = np.flatnonzero(r >= 0)
    starts = S.indptr[r[present]].astype(np.int64)
    lengths = S.indptr[r[present] + 1] - starts
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    return np.repeat(present, lengths), np.repeat(starts - ends + lengths, lengths) + np.arange(total)


@dataclass
class HessianPart:
    """The rows of a ``HeldoutChunk`` the Hessian is estimated on: its first ``h`` positions,
    whose cells are the rows ``[0, cut)`` of X; ``XT`` CSR (P, cut) their transpose, ``pos``
    CSR (h, cut) their position indicator (both None where the compiled kernel computes the
    Hessian: ``fastnll``, which needs no copies)."""

    h: int
    cut: int
    XT: sp.csr_matrix | None
    pos: sp.csr_matrix | None


@dataclass
class HeldoutChunk:
    """The touched entries of a chunk of n held-out positions, as a sparse design matrix.

    The union U holds each (position, column) cell touched by any group once, positions in
    order. ``X`` CSR (U, P): for each cell the values of the groups there, in the column of
    their parameter, so the scores are ``X @ lambda``; ``row`` (nnz,) the cell of each stored
    value of X (None when the compiled kernel computes the Hessian: ``fastnll``); ``pos`` CSR
    (n, U) the position indicator (``pos.indptr`` = the start of each position's run);
    ``upos`` (U,) the position and ``qc`` (U,) ``q`` of the column of each cell; ``tsum`` (P,)
    the summed values at the targets; ``hess``: the Hessian's sample of the chunk, or None (the
    chunk gives the NLL and gradient only).
    """

    X: sp.csr_matrix
    row: np.ndarray
    pos: sp.csr_matrix
    upos: np.ndarray
    qc: np.ndarray
    tsum: np.ndarray
    hess: HessianPart | None = None

    @property
    def n(self) -> int:
        return self.pos.shape[0]


def _union_chunk(params: SparseParams, rows: list, targets: np.ndarray, param_of, n_params: int,
                 hessian_positions: int = 0) -> HeldoutChunk:
    """The ``HeldoutChunk`` of these positions (``rows``: per group, the row at each position).

    ``param_of(g, positions, entries)``: the parameter (in ``[0, n_params)``) that weighs each
    stored value of group g used at these positions. ``hessian_positions``: the Hessian sample
    (its first positions; 0 = none). The union comes from a bitmap of the chunk's (position,
    column) cells (no sort): memory and time are proportional to the touched entries.
    """
    n, V = len(targets), params.vocab_size
    keys, cols, vals, hits = [], [], [], []
    for g, (S, r) in enumerate(zip(params.S, rows)):
        p, e = _row_entries(S, r)
        c = S.indices[e]
        keys.append(p * V + c)
        cols.append(param_of(g, p, e))
        vals.append(S.data[e])
        hits.append(c == targets[p])
        release_pages(S.data, S.indices, S.indptr)  # a mapped group's pages: read, copied
    keys, cols, vals, hits = (np.concatenate(x) for x in (keys, cols, vals, hits))
    tsum = np.bincount(cols[hits], vals[hits], minlength=n_params)
    index = np.zeros(n * V, dtype=np.int32)  # n * V <= 2**21 cells (choose_lambdas' chunks)
    index[keys] = 1
    union = np.flatnonzero(index)
    np.cumsum(index, out=index)
    inv = index[keys] - 1
    U = len(union)
    X = sp.csr_matrix((vals, (inv, cols)), shape=(U, n_params))
    upos = union // V
    pos = sp.csr_matrix((np.ones(U), np.arange(U), np.searchsorted(upos, np.arange(n + 1))),
                        shape=(n, U))
    # the cell of each stored value: the scipy route's Hessian only
    row = None if _native() is not None and _int32_indices(X) else \
        np.repeat(np.arange(U, dtype=np.int32), np.diff(X.indptr))
    hess = _hessian_part(X, pos, hessian_positions) if hessian_positions else None
    return HeldoutChunk(X, row, pos, upos, params.q[union % V], tsum, hess)


def _native():
    """The compiled ``fastnll.hessian_terms`` kernel, or None (no numba: the scipy products)."""
    return native.kernel("fastnll", "hessian_terms")


def _hessian_part(X: sp.csr_matrix, pos: sp.csr_matrix, h: int) -> HessianPart:
    """The ``HessianPart`` of the first h positions of a chunk: their cells are the rows
    ``[0, cut)`` of X. The compiled route needs no copies (``XT``, ``pos`` None)."""
    h = min(h, pos.shape[0])
    cut = int(pos.indptr[h])
    if _native() is not None and _int32_indices(X):
        return HessianPart(h, cut, None, None)
    if h == pos.shape[0]:  # every position: no copies of X
        return HessianPart(h, X.shape[0], X.T.tocsr(), pos)
    return HessianPart(h, cut, X[:cut].T.tocsr(), pos[:h, :cut])


def _int32_indices(X: sp.csr_matrix) -> bool:
    """Whether the kernel takes X's index arrays as they are (int32: every chunk, whose cells
    are at most ``MAX_CELLS`` x the groups)."""
    return X.indptr.dtype == np.int32 and X.indices.dtype == np.int32


def _seg_sum(x: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Sums of ``x[seg[i]:seg[i+1]]`` for each i (empty runs give 0): (U,) -> (n,)."""
    out = np.zeros(len(seg) - 1)
    nonempty = np.flatnonzero(seg[1:] > seg[:-1])
    if len(nonempty):
        out[nonempty] = np.add.reduceat(x, seg[nonempty])
    return out


def _chunk_terms(chunk: HeldoutChunk, lam: np.ndarray, derivatives: bool, hessian: bool = True):
    """NLL sum (and gradient (P,) / Hessian (P, P) in the parameters) of one chunk at ``lam`` (P,).

    With ``x_nj`` the row of X at position n, column j and ``p_nj`` the model's probability
    there, ``grad = sum_nj p_nj x_nj - tsum`` and ``H = sum_nj p_nj x_nj x_nj^T - sum_n m_n m_n^T``
    (``m_n = sum_j p_nj x_nj``): sparse products whose cost is the touched entries times the
    number of groups sharing a cell, not G^2 per position; the Hessian by the compiled kernel
    (``fastnll.hessian_terms``) where numba is, else scipy's products.
    """
    X, qc = chunk.X, chunk.qc
    with np.errstate(over="ignore"):  # a too-long trial step gives nll = inf: the line search backs off
        w = qc * np.exp(X @ lam)
        Z = 1.0 + _seg_sum(w - qc, chunk.pos.indptr)
        nll = float(np.sum(np.log(Z)) - lam @ chunk.tsum)
    if not derivatives:
        return nll
    with np.errstate(invalid="ignore"):  # inf / inf at a too-long trial step (rejected)
        wz = w / Z[chunk.upos]
    grad = X.T @ wz - chunk.tsum
    if not hessian:
        return nll, grad, None
    hp = chunk.hess
    if hp.XT is None:  # compiled (``_hessian_part``): one pass over the sample's cells
        kernel, P = _native(), X.shape[1]
        hess = np.zeros((P, P))
        seg = np.ascontiguousarray(chunk.pos.indptr[:hp.h + 1], dtype=np.int64)
        kernel(X.indptr, X.indices, X.data, wz, seg, hess, np.zeros(P),
               np.full(P, -1, dtype=np.int64), np.empty(P, dtype=np.int64))
        return nll, grad, hess
    cut = hp.cut
    nnz = int(X.indptr[cut])
    Xw = sp.csr_matrix((X.data[:nnz] * wz[chunk.row[:nnz]], X.indices[:nnz], X.indptr[:cut + 1]),
                       shape=(cut, X.shape[1]))
    M = hp.pos @ Xw  # (h, P): m_n, the gradient of log Z_n
    return nll, grad, (hp.XT @ Xw).toarray() - (M.T @ M).toarray()


class HeldoutPlan:
    """How the held-out positions are cut into pieces, and each piece's ``HeldoutChunk``.

    Chunks: at most ``chunk`` positions each (and ``MAX_CELLS // V``), interleaved, so every
    chunk samples the whole held-out text and the Hessian of every ``hessian_every``-th chunk
    (its first ``hessian_tokens`` positions) sees every kind of position. ``max_entries``:
    a chunk touching more entries is cut into consecutive pieces of its positions touching at
    most that many (at least one position each), the Hessian sample split with them; None:
    one piece per chunk. ``pieces[k] = (chunk, lo, hi, h)``: positions ``lo:hi`` of the chunk,
    the first h of them in the Hessian sample; ``entries[k]``: its touched entries.
    """

    def __init__(self, params: SparseParams, rows: list, targets: np.ndarray, bk: np.ndarray,
                 entry_buckets, B: int, chunk: int, hessian_every: int,
                 hessian_tokens: int | None, max_entries: int | None = None):
        self.params, self.rows, self.targets, self.B = params, rows, targets, B
        G, N = len(params.S), len(targets)
        self.P = G * B
        self.vidx = np.arange(G)[:, None] * B + bk  # (G, N): parameter of group g at position n
        self.eb = None if entry_buckets is None else [np.asarray(x) for x in entry_buckets]
        chunk = max(16, min(chunk, MAX_CELLS // params.vocab_size))
        self.n_chunks = -(-N // chunk)
        touched = np.zeros(N, dtype=np.int64)  # entries each position touches, all groups
        for S, r in zip(params.S, rows):
            touched[r >= 0] += np.diff(S.indptr)[r[r >= 0]]
        self.densest = int(touched.max()) if N else 0
        self.pieces, self.entries = [], []
        for i in range(self.n_chunks):
            t = touched[i::self.n_chunks]
            h = (hessian_tokens or len(t)) if i % hessian_every == 0 else 0
            for lo, hi in _cut(t, max_entries):
                self.pieces.append((i, lo, hi, max(0, min(h, hi) - lo)))
                self.entries.append(int(t[lo:hi].sum()))
        self.release()

    def release(self) -> None:
        """Drop the pages of a memory-mapped model read so far (``--max-memory``: the model's
        arrays are on disk; a no-op in memory): a piece holds its own copy of what it read, so
        the search holds its pieces, not the model's pages they came from."""
        for S in self.params.S:
            release_pages(S.data, S.indices, S.indptr)
        release_pages(*(self.eb or ()))

    def build(self, k: int) -> HeldoutChunk:
        """The ``HeldoutChunk`` of piece k."""
        i, lo, hi, h = self.pieces[k]
        idx = np.arange(i, len(self.targets), self.n_chunks)[lo:hi]
        v, eb, B = self.vidx[:, idx], self.eb, self.B

        def param_of(g, p, e):  # the weight of a stored value: by entry or by position
            if eb is None:
                return v[g][p]
            out = g * B + eb[g][e].astype(np.int64)
            release_pages(eb[g])
            return out
        try:
            return _union_chunk(self.params, [r[idx] for r in self.rows], self.targets[idx],
                                param_of, self.P, hessian_positions=h)
        finally:
            self.release()


def _cut(t: np.ndarray, max_entries: int | None) -> list:
    """Consecutive ``(lo, hi)`` runs of positions touching at most ``max_entries`` entries
    each (at least one position). Example: t [3, 3, 3], max 6 -> [(0, 2), (2, 3)]."""
    if max_entries is None or int(t.sum()) <= max_entries:
        return [(0, len(t))]
    cs = np.cumsum(t)
    out, lo = [], 0
    while lo < len(t):
        before = int(cs[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cs, before + max_entries, side="right")))
        out.append((lo, hi))
        lo = hi
    return out


class PieceTerms:
    """The terms of some pieces of a ``HeldoutPlan`` (``owned``, in order), each piece built
    once and kept while the kept pieces hold at most ``cache_bytes`` (None: all), else built
    again at every call. ``__call__(lam, derivatives, exact)``: ``[(k, out, h)]`` with ``out``
    as ``_chunk_terms`` and h the positions of piece k in the Hessian used (0 = none)."""

    def __init__(self, plan: HeldoutPlan, owned, cache_bytes: int | None = None):
        self.plan, self.owned, self.cache_bytes = plan, list(owned), cache_bytes
        self.kept: dict = {}  # piece -> its HeldoutChunk
        self.full: dict = {}  # piece -> its exact Hessian part (unbounded only)
        self.held = 0

    def _chunk(self, k: int) -> HeldoutChunk:
        if k in self.kept:
            return self.kept[k]
        ch = self.plan.build(k)
        size = self.plan.entries[k] * HELD_BYTES
        if self.cache_bytes is None or self.held + size <= self.cache_bytes:
            self.kept[k], self.held = ch, self.held + size
        return ch

    def _exact(self, k: int, ch: HeldoutChunk) -> HeldoutChunk:
        """``ch`` with its Hessian on every position (kept only when nothing is bounded)."""
        part = self.full.get(k)
        if part is None:
            part = ch.hess if ch.hess is not None and ch.hess.h == ch.n else \
                _hessian_part(ch.X, ch.pos, ch.n)
            if self.cache_bytes is None:
                self.full[k] = part
        return dataclasses.replace(ch, hess=part)

    def __call__(self, lam: np.ndarray, derivatives: bool, exact: bool) -> list:
        out = []
        for k in self.owned:
            ch = self._chunk(k)
            with_h = derivatives and (exact or ch.hess is not None)
            if exact:  # the exact Hessian: every position of every piece
                ch = self._exact(k, ch)
            out.append((k, _chunk_terms(ch, lam, derivatives, with_h),
                        ch.hess.h if with_h else 0))
        return out


_WORKER: dict = {}


def _worker_terms(item):
    """One worker's answer (``pool.WorkerGroup``): its pieces' terms at ``lam``; the
    first call builds its ``PieceTerms`` from the plan inherited by fork."""
    k, lam, derivatives, exact = item
    if "terms" not in _WORKER:
        plan, owners, cache_bytes = _WORKER["plan"]
        _WORKER["terms"] = PieceTerms(plan, owners[k], cache_bytes)
    return _WORKER["terms"](lam, derivatives, exact)


def _set_plan(plan, owners, cache_bytes) -> None:  # a worker's initializer
    _WORKER.clear()
    _WORKER["plan"] = (plan, owners, cache_bytes)


@contextmanager
def piece_terms(plan: HeldoutPlan, workers: int = 1, cache_bytes: int | None = None):
    """The terms of every piece of ``plan``, as a callable ``(lam, derivatives, exact) ->
    [(k, out, h)]`` (``HeldoutNLL``'s ``terms``): a ``PieceTerms`` in this process, or with
    ``workers`` > 1 that many processes (``pool.WorkerGroup``, stopped when the block
    ends, also on any error), each building and keeping its share of the pieces
    (``share_pieces``). ``cache_bytes``: what each process may keep (None: everything)."""
    if workers <= 1:
        yield PieceTerms(plan, range(len(plan.pieces)), cache_bytes)
        return
    owners = share_pieces(plan, workers)
    with WorkerGroup(_worker_terms, workers, init=_set_plan,
                     init_args=(plan, owners, cache_bytes),
                     what="a weight-search worker") as group:
        def terms(lam, derivatives, exact):
            answers = group.ask([(k, lam, derivatives, exact) for k in range(workers)])
            return [t for answer in answers for t in answer]
        yield terms


def share_pieces(plan: HeldoutPlan, workers: int) -> list:
    """Pieces per worker, balanced by cost (touched entries, twice for a piece in the Hessian
    sample), largest first to the least loaded; each worker's list in piece order."""
    cost = [e * (2 if p[3] else 1) for e, p in zip(plan.entries, plan.pieces)]
    load, owners = [0] * workers, [[] for _ in range(workers)]
    for k in sorted(range(len(cost)), key=lambda k: (-cost[k], k)):
        w = min(range(workers), key=lambda w: (load[w], w))
        owners[w].append(k)
        load[w] += cost[k]
    return [sorted(o) for o in owners]


def search_bounds(densest: int, max_bytes: int | None, workers: int):
    """``(max_entries per piece, cache bytes per process)`` for a search that may hold
    ``max_bytes`` in all (None: no bound) in ``workers`` processes; ``MemoryLimitError``
    if the densest held-out position (``densest`` touched entries) cannot be built in its
    process's share."""
    if max_bytes is None:
        return None, None
    share = max_bytes // workers
    need = densest * BUILD_BYTES * workers
    if need > max_bytes:
        raise MemoryLimitError(
            f"the weight search needs {format_bytes(need)} ({need} bytes) to build one "
            f"held-out position in each of {workers} processes but may use "
            f"{format_bytes(max_bytes)}; raise max_memory or use fewer workers")
    # half for the piece being built, half for the pieces kept
    return max(1, share // 2 // BUILD_BYTES), share // 2


class HeldoutNLL:
    """The held-out NLL per token (nats) as a function of the weights (G, B), over pieces.

    ``terms(lam_flat, derivatives, exact)`` gives every piece's ``(k, out, h)`` (one
    ``PieceTerms`` in this process, or the workers' answers); they are added in piece order,
    so the value does not depend on who computed them. ``__call__(lam)``: the NLL;
    ``derivatives=True``: ``(nll, grad (P,), hess (P, P))``, the Hessian estimated on the
    pieces' samples (averaged over their positions), or, with ``exact=True``, on every
    position. ``base``: ``-mean log q[target]``, the NLL at lambda = 0.
    """

    def __init__(self, terms, base: float, n_tokens: int, n_params: int):
        self.terms, self.base, self.N, self.P = terms, base, n_tokens, n_params

    def __call__(self, lam: np.ndarray, derivatives: bool = False, exact: bool = False):
        P = self.P
        nll, grad, hess = 0.0, np.zeros(P), np.zeros((P, P))
        h_tokens = 0
        for _, out, h in sorted(self.terms(lam.ravel(), derivatives, exact),
                                key=lambda x: x[0]):
            if not derivatives:
                nll += out
                continue
            nll += out[0]
            grad += out[1]
            if h:
                h_tokens += h
                hess += out[2]
        nll = self.base + nll / self.N
        return (nll, grad / self.N, hess / max(h_tokens, 1)) if derivatives else nll
