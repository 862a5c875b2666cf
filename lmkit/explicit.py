r"""Explicit solver: co-occurrence counts -> the weights of a single-layer softmax, in closed form.

Input: ``Counts`` (see ``counts.py``). Output: ``SparseParams`` — a continuation unigram ``q``
(V,), and per window group a sparse matrix ``S_k`` (V, V) with the sparsity pattern of ``F_k``,
plus the group weights ``lambdas``. Natural logarithms throughout.

Why a closed form exists
------------------------
The model is ``logits[j] = b[j] + sum_k W_k[c_k, j]`` where ``c_k`` is the token k positions
back. Write its input as a multi-hot vector x (one block per offset k) and the target as one-hot
y. The cross-entropy over the corpus is ``L = -sum_t log softmax(x_t W + b)[y_t]`` and its
gradient is ``dL/dW = X^T (P - Y)``: rows of X are inputs, rows of P predicted distributions.
With one-hot inputs (K = 1), row i of ``X^T (P - Y)`` only sums the positions whose context is i;
all of them share the same prediction ``softmax(W[i] + b)``, so the row is
``f[i] * softmax(W[i] + b) - F[i]`` with ``F[i, j]`` the co-occurrence counts and ``f[i] = sum_j
F[i, j]``. It vanishes exactly when ``softmax(W[i] + b) = F[i] / f[i]``: the optimum is
``W[i, j] = log P(j | i)`` (with b = 0; any per-row constant cancels in the softmax). Counting
*is* training.

Smoothing
---------
Unseen pairs must not get ``log 0``. Per offset k, interpolated absolute discounting toward a
continuation distribution (Kneser-Ney style):

    P_k(j | i) = max(F_k[i, j] - d_k, 0) / f_k[i] + gamma_k[i] q[j],
    gamma_k[i] = d_k N1+(k, i) / f_k[i],

``N1+(k, i)`` = distinct targets after context i, ``q[j]`` proportional to the number of distinct
left neighbours of j (plus a floor so every token has mass), ``d_k = n1 / (n1 + 2 n2)`` from the
count-of-counts unless given. Rows never seen fall back to ``q``.

Wider context (K > 1) and the sparse form
-----------------------------------------
``W_k = lambda_k log P_k``, ``b = (1 - sum_k lambda_k) log q``. Since ``log(gamma q + r) =
log gamma + log q + log(1 + r / (gamma q))`` and per-row constants cancel in the softmax, the whole
model is exactly

    logits[j] = const + log q[j] + sum_k lambda_k S_k[c_k, j],
    S_k[i, j] = log(1 + max(F_k[i, j] - d_k, 0) / (d_k N1+(k, i) q[j]))

(``f_k[i] gamma_k[i] = d_k N1+(k, i)``), non-zero only where ``F_k`` is. The normaliser is
``Z = sum_j q[j] exp(s[j]) = 1 + sum_{j in U} q[j] (exp(s[j]) - 1)`` over the union U of the
non-zero columns of the rows used, so scoring costs the non-zeros touched, not V.
The lambdas are chosen without any gradient through W: the held-out NLL is convex in the G
scalars lambda, and ``choose_lambdas`` minimises it with a few projected Newton steps.

Weights that depend on evidence
-------------------------------
A row seen once and a row seen a thousand times deserve different trust. With one weight per
group x bucket of the row's training count (``history_counts``, ``count_buckets``), the logits
are ``log q + sum_g lambda_{g, b_g(row)} S_g[row]``: still linear in the weights inside the
log-sum-exp, so the held-out NLL stays convex and the same Newton steps fit them
(``choose_lambdas(..., buckets=)``). ``fold_lambdas`` then scales each row of ``S_g`` by its
bucket's weight, so the stored model has lambdas 1 and scores exactly as before.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .counts import Counts
from .errors import InputError, OptionError
from .features import Window
from .heldout_nll import HeldoutNLL, HeldoutPlan, piece_terms, search_bounds
from .params import SparseParams
from .sparse import lookup_rows, lookup_values


def estimate_discount(F: sp.csr_matrix) -> float:
    """Absolute discount ``n1 / (n1 + 2 n2)`` from count-of-counts of ``F``.

    Example: counts with n1 = 6 singletons and n2 = 2 doubletons -> 6 / 10 = 0.6.
    Falls back to 0.5 when there are no singletons or doubletons; clipped to [0.05, 0.95].
    """
    return discount_from_counts(int(np.count_nonzero(F.data == 1)),
                                int(np.count_nonzero(F.data == 2)))


def discount_from_counts(n1: int, n2: int) -> float:
    """``estimate_discount`` from the numbers of singletons ``n1`` and doubletons ``n2`` (sums
    over blocks of a group's rows give the whole group's discount)."""
    if n1 + n2 == 0:
        return 0.5
    return float(np.clip(n1 / (n1 + 2 * n2), 0.05, 0.95))


def continuation_unigram(F1: sp.csr_matrix, floor: float = 0.5) -> np.ndarray:
    """``q[j]`` proportional to (number of distinct left neighbours of j) + ``floor``; (V,)."""
    distinct_left = np.bincount(F1.indices, minlength=F1.shape[1]).astype(np.float64)
    q = distinct_left + floor
    return q / q.sum()


def solve_group(F: sp.csr_matrix, q: np.ndarray, d: float) -> sp.csr_matrix:
    """``S[i, j] = log(1 + max(F[i,j] - d, 0) / (d N1+(i) q[j]))`` on the pattern of F; float64."""
    F = F.tocsr()
    n_distinct = np.diff(F.indptr)
    row = np.repeat(np.arange(F.shape[0]), n_distinct)
    r = np.maximum(F.data.astype(np.float64) - d, 0.0)
    data = np.log1p(r / (d * n_distinct[row] * q[F.indices]))
    S = sp.csr_matrix((data, F.indices.copy(), F.indptr.copy()), shape=F.shape)
    S.has_sorted_indices = F.has_sorted_indices
    S.sort_indices()
    return S


def solve_explicit(counts: Counts, *, discount=None, floor: float = 0.5) -> SparseParams:
    """Closed-form smoothed solution for every window group, all ``lambdas`` = 1.

    ``discount``: None (estimate per group), a float for all groups, or a sequence per group.
    """
    groups = counts.groups
    for g in groups:
        if not isinstance(g, Window):
            raise InputError(f"solve_explicit handles window groups; got {g.name} "
                             "(use lmkit.ngram.mkn for suffix groups)")
    first = groups.index(Window(1)) if Window(1) in groups else 0
    q = continuation_unigram(counts.F[first], floor)
    ds = _discounts(discount, counts)
    S = [solve_group(F, q, d) for F, d in zip(counts.F, ds)]
    return SparseParams(list(groups), q, S, list(counts.keys), np.ones(len(groups)),
                        {"discounts": ds, "floor": floor})


def _discounts(discount, counts: Counts) -> list:
    if discount is None:
        return [estimate_discount(F) for F in counts.F]
    ds = [float(discount)] * len(counts.F) if np.isscalar(discount) else [float(x) for x in discount]
    if len(ds) != len(counts.F):
        raise OptionError(f"discount needs 1 or {len(counts.F)} values, got {len(ds)}")
    for d in ds:
        if not 0.0 < d < 1.0:
            raise OptionError(f"discount must be in (0, 1), got {d}; omit it to estimate it from counts")
    return ds


def _start_weights(G: int, B: int, init, fixed):
    """Start weights (G, B) (default lambda = (1, 0, ...)) and which may move, (G * B,) bool."""
    lam = np.zeros((G, B))
    lam[0] = 1.0
    if init is not None:
        lam = np.broadcast_to(np.asarray(init, dtype=np.float64).reshape(G, -1), (G, B)).copy()
    movable = np.ones(G, bool) if fixed is None else ~np.asarray(fixed, dtype=bool)
    return lam, np.repeat(movable[:, None], B, axis=1).ravel()


def _position_buckets(rows: list, buckets, entry_buckets, B: int, N: int) -> np.ndarray:
    """(G, N) int64: the bucket of each group's row at each position (0 without row buckets);
    ``InputError`` unless every row or entry bucket lies in ``[0, B)``."""
    bk = np.zeros((len(rows), N), dtype=np.int64) if buckets is None else \
        np.stack([np.where(r >= 0, np.asarray(b, dtype=np.int64), 0) for b, r in zip(buckets, rows)])
    # entry buckets may come in a small integer type (one per stored value): checked per group,
    # widened only for the entries a chunk touches
    for b in [bk] if entry_buckets is None else [np.asarray(x) for x in entry_buckets if len(x)]:
        if b.min() < 0 or b.max() >= B:
            raise InputError(f"lambda buckets must lie in [0, {B}), got [{b.min()}, {b.max()}]")
    return bk


def _projected_newton(objective: HeldoutNLL, lam: np.ndarray, movable: np.ndarray,
                      max_iter: int, tol: float, sampled: bool, record) -> tuple[np.ndarray, list]:
    """Minimise the convex ``objective`` over weights >= 0 from ``lam`` (G, B): Newton steps on
    the free weights (active set: a weight at 0 whose gradient pushes it below stays), each
    with a backtracking line search on the projected step; stop when a step gains less than
    ``tol`` nats per token. ``sampled``: the Hessian is a sample (a weight with no curvature
    in it gets the exact Hessian for that step). ``record(lam)``: the trace's copy of lam.
    Returns the weights and the trace ``[(record(lam), nll)]``."""
    G, B = lam.shape
    nll, grad, hess = objective(lam, True)
    trace = [(record(lam), nll)]
    for it in range(max_iter):
        x = lam.ravel()
        free = ((x > 0) | (grad < 0)) & movable  # active set: at 0 and pushed below 0 stay
        if sampled and (np.diag(hess)[free] <= 0).any():
            # a weight whose positions all fall outside the sampled chunks: take the exact Hessian
            nll, grad, hess = objective(lam, True, exact=True)
        step = np.zeros(G * B)
        if free.any():
            h = hess[np.ix_(free, free)] + 1e-9 * np.eye(int(free.sum()))
            step[free] = -np.linalg.solve(h, grad[free])
        t, fresh = 1.0, None
        while t > 1e-4:  # backtracking line search on the projected step
            trial = np.maximum(x + t * step, 0.0).reshape(G, B)
            if t == 1.0:  # the full step is usually taken: its derivatives serve the next step
                fresh = objective(trial, True)
                tnll = fresh[0]
            else:
                fresh, tnll = None, objective(trial)
            if tnll <= nll - 1e-12:
                break
            t /= 2
        else:
            break
        converged = nll - tnll < tol
        lam = trial
        if converged:
            nll = tnll
            trace.append((record(lam), nll))
            break
        nll, grad, hess = fresh if fresh is not None else objective(lam, True)
        trace.append((record(lam), nll))
    return lam, trace


def choose_lambdas(params: SparseParams, rows: list, targets: np.ndarray,
                   max_iter: int = 30, tol: float = 1e-7, init=None, fixed=None,
                   buckets=None, n_buckets: int = 1, chunk: int = 2048,
                   hessian_every: int = 1, hessian_tokens: int | None = None,
                   entry_buckets=None, max_bytes: int | None = None,
                   workers: int = 1) -> tuple[np.ndarray, list]:
    """Group weights lambda >= 0 that minimise held-out NLL, by projected Newton steps.

    ``rows``: per group, row index per held-out position (-1 = no feature); ``targets`` (N,).
    The held-out NLL ``mean_n [log Z_n(lambda) - lambda . t_n]`` is convex in lambda (a
    log-sum-exp of functions linear in lambda), so a few Newton steps on these scalars find
    its minimum; W itself is never touched by a gradient.

    Evidence-dependent weights: with ``buckets`` (per group an int (N,) array in
    ``[0, n_buckets)``: the bucket of the row used at each position, e.g. of its history count)
    there is one lambda per (group, bucket) and the position's group weight is its bucket's.
    The NLL stays convex (still linear in the weights inside the log-sum-exp). Returns lambdas
    of shape (G,) without buckets, (G, n_buckets) with them.

    Starts from ``init`` ((G,) or (G, B); default lambda = (1, 0, ...)); groups where
    ``fixed[g]`` is true keep their initial weight (pure n-gram models fix their suffix groups
    at 1). Returns the lambdas and the trace ``[(lambdas, nll)]``.

    Steps: ``_start_weights``, ``_position_buckets``, ``heldout_nll.HeldoutPlan`` (how the
    positions are cut), ``heldout_nll.piece_terms`` (who computes the pieces' terms),
    ``heldout_nll.HeldoutNLL`` (the objective, summed over the pieces), ``_projected_newton``
    (the loop).

    Cost: the held-out positions are processed in chunks of ``chunk`` (interleaved: chunk i
    holds positions i, i + n_chunks, ...); for each, the touched entries are laid out once as a
    sparse design matrix on the union of their (position, column) cells, kept, and every Newton
    step is a few sparse products with it: time and memory are proportional to the touched
    entries (held-out tokens x mean row length). The Hessian is a sparse Gram product, costing
    the touched entries times the groups sharing a cell. With ``hessian_every = k`` it is
    estimated on every k-th chunk only, and with ``hessian_tokens = h`` on the first h positions
    of those chunks; the gradient and the NLL stay exact, so the line search still only accepts
    true descent and the minimiser is the same (a quasi-Newton step). A weight with no curvature
    in the sample gets the exact Hessian for that step.

    Bounded and parallel (the same weights): ``max_bytes`` bounds what the search holds (all
    processes together): a chunk touching more entries than a piece may hold is cut into
    pieces of its positions (the same sums, added in another order: equal up to rounding),
    and only the pieces that fit are kept, the others built again at every evaluation
    (``MemoryLimitError`` if one position cannot be built). ``workers`` > 1: the pieces are
    built, kept and evaluated by that many processes (``pool.WorkerGroup``), their terms
    added here in piece order: the very numbers of one process (when there are fewer chunks
    than workers, the chunks are cut into pieces so that every worker has some: equal up to
    rounding).
    """
    G = len(params.S)
    if buckets is not None and entry_buckets is not None:
        raise InputError("choose_lambdas takes row buckets or entry buckets, not both")
    B = int(n_buckets) if buckets is not None or entry_buckets is not None else 1
    N = len(targets)
    lam, movable = _start_weights(G, B, init, fixed)
    squeeze = (lambda x: x[:, 0].copy()) if B == 1 and buckets is None else (lambda x: x.copy())
    if not movable.any() or N == 0:
        return squeeze(lam), []
    bk = _position_buckets(rows, buckets, entry_buckets, B, N)
    plan = HeldoutPlan(params, rows, targets, bk, entry_buckets, B, chunk, hessian_every,
                       hessian_tokens)
    workers = max(1, min(int(workers), len(targets)))
    max_entries, cache_bytes = search_bounds(plan.densest, max_bytes, workers)
    if workers > len(plan.pieces):  # fewer chunks than workers: pieces for every worker
        even = -(-sum(plan.entries) // workers)
        max_entries = even if max_entries is None else min(max_entries, even)
    if max_entries is not None:  # cut the chunks too large for the bound into pieces
        plan = HeldoutPlan(params, rows, targets, bk, entry_buckets, B, chunk, hessian_every,
                           hessian_tokens, max_entries)
    workers = min(workers, len(plan.pieces))
    base = float(-np.log(params.q[targets]).mean())
    sampled = bool(hessian_every > 1 or hessian_tokens)

    with piece_terms(plan, workers, cache_bytes) as terms:  # worker processes end here
        lam, trace = _projected_newton(HeldoutNLL(terms, base, N, G * B), lam, movable,
                                       max_iter, tol, sampled, lambda x: squeeze(x).tolist())
    return squeeze(lam), trace


def history_counts(counts: Counts, params: SparseParams) -> list:
    """Per group, the training count of each row of ``params.S[g]`` (how often its context was
    seen), int64 (R_g,); rows are matched through the keys, so pruned models work too."""
    out = []
    for F, ck, pk in zip(counts.F, counts.keys, params.keys):
        total = np.asarray(F.sum(axis=1)).ravel().astype(np.int64)
        out.append(total if pk is None else total[lookup_rows(ck, pk)])
    return out


def count_buckets(row_counts: np.ndarray, edges=(2, 4, 16)) -> np.ndarray:
    """Bucket of each row count: ``edges`` are the lower bounds of buckets 1..B-1.

    Example: edges (2, 4, 16): counts 1 -> 0, 2..3 -> 1, 4..15 -> 2, 16+ -> 3.
    """
    return np.searchsorted(np.asarray(edges), np.asarray(row_counts), side="right")


def fold_lambdas(params: SparseParams, lam: np.ndarray, row_buckets: list, **info) -> SparseParams:
    """Bake per-(group, bucket) weights into the rows of S: ``S'_g[i] = lam[g, b_g(i)] S_g[i]``.

    The result has ``lambdas`` = 1, so storage and scoring are unchanged; the bucket weights
    are kept in ``info['bucket_lambdas']``.
    """
    S = []
    for g, (Sg, b) in enumerate(zip(params.S, row_buckets)):
        scale = lam[g][b]
        rows = np.repeat(np.arange(Sg.shape[0]), np.diff(Sg.indptr))
        Sn = sp.csr_matrix((Sg.data * scale[rows], Sg.indices.copy(), Sg.indptr.copy()), shape=Sg.shape)
        Sn.has_sorted_indices = True
        S.append(Sn)
    return SparseParams(params.groups, params.q, S, params.keys, np.ones(len(S)),
                        {**params.info, "bucket_lambdas": np.asarray(lam).tolist(), **info})


def entry_counts(counts: Counts, params: SparseParams) -> list:
    """Per group, the training count ``F[i, j]`` of each stored value of ``params.S[g]`` (aligned
    with ``S.data``), int64; rows are matched through the keys, so pruned models work too."""
    out = []
    for F, ck, S, pk in zip(counts.F, counts.keys, params.S, params.keys):
        F = F.tocsr()
        F.sort_indices()
        same_rows = pk is ck or (pk is not None and ck is not None and np.array_equal(pk, ck))
        if same_rows and np.array_equal(F.indptr, S.indptr) and np.array_equal(F.indices, S.indices):
            out.append(F.data.astype(np.int64))  # S on the pattern of F (unpruned): no search
            continue
        frow = np.arange(S.shape[0]) if pk is None else lookup_rows(ck, pk)
        row = np.repeat(frow, np.diff(S.indptr))
        out.append(lookup_values(F, row, S.indices).astype(np.int64))
    return out


def split_entries(params: SparseParams, entry_buckets: list, n_buckets: int) -> SparseParams:
    """One group per (group, bucket): ``S_g`` restricted to the stored values in that bucket.

    Group ``g * B + b`` of the result holds the entries of ``S_g`` whose bucket is b (same rows
    and keys), so ``sum_b S_{g,b} = S_g`` and ``choose_lambdas`` on the result fits one weight per
    group x entry bucket (an SNM-style metafeature: the count of the (context, target) pair).
    """
    S, keys, groups = [], [], []
    for Sg, kg, group, b in zip(params.S, params.keys, params.groups, entry_buckets):
        row = np.repeat(np.arange(Sg.shape[0]), np.diff(Sg.indptr))
        for k in range(n_buckets):
            m = b == k
            indptr = np.concatenate([[0], np.cumsum(np.bincount(row[m], minlength=Sg.shape[0]))])
            S.append(sp.csr_matrix((Sg.data[m], Sg.indices[m], indptr), shape=Sg.shape))
            keys.append(kg)
            groups.append(group)
    return SparseParams(groups, params.q, S, keys, np.ones(len(S)), {})


def fold_entry_lambdas(params: SparseParams, lam: np.ndarray, entry_buckets: list,
                       **info) -> SparseParams:
    """Bake per-(group, entry bucket) weights into S: ``S'_g[i, j] = lam[g, b(i, j)] S_g[i, j]``.

    Lambdas become 1 (storage and scoring unchanged); the weights go to ``info['entry_lambdas']``.
    """
    S = []
    for g, (Sg, b) in enumerate(zip(params.S, entry_buckets)):
        # the index arrays are shared (SparseParams arrays are read-only): only the values change
        Sn = sp.csr_matrix((Sg.data * lam[g][b], Sg.indices, Sg.indptr), shape=Sg.shape)
        Sn.has_sorted_indices = True
        S.append(Sn)
    return SparseParams(params.groups, params.q, S, params.keys, np.ones(len(S)),
                        {**params.info, "entry_lambdas": np.asarray(lam).tolist(), **info})
