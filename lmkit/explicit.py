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
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .counts import Counts
from .errors import InputError
from .features import Window
from .params import SparseParams
from .sparse import lookup_values, take_rows

def estimate_discount(F: sp.csr_matrix) -> float:
    """Absolute discount ``n1 / (n1 + 2 n2)`` from count-of-counts of ``F``.

    Example: counts with n1 = 6 singletons and n2 = 2 doubletons -> 6 / 10 = 0.6.
    Falls back to 0.5 when there are no singletons or doubletons; clipped to [0.05, 0.95].
    """
    n1 = int(np.count_nonzero(F.data == 1))
    n2 = int(np.count_nonzero(F.data == 2))
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
                             "(use lmkit.ngram for suffix groups)")
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
        raise InputError(f"--discount needs 1 or {len(counts.F)} values, got {len(ds)}")
    for d in ds:
        if not 0.0 < d < 1.0:
            raise InputError(f"--discount must be in (0, 1), got {d}; omit it to estimate it from counts")
    return ds


def _aligned_components(params: SparseParams, rows: list, targets: np.ndarray):
    """Per-group values of the scored rows, aligned on the union pattern of all groups.

    Returns ``(comp, pos, col, tgt)``: comp (G, U) values, pos/col (U,) position and column of
    each union entry, tgt (G, N) the group's value at each position's target. Relies on
    ``S >= 0`` (true for the closed form): ``A_g + C`` never cancels, so it keeps C's pattern.
    """
    N, V = len(targets), params.vocab_size
    A, tgt = [], np.zeros((len(params.S), N))
    for g, (S, r) in enumerate(zip(params.S, rows)):
        A.append(take_rows(S, r))
        present = r >= 0
        tgt[g, present] = lookup_values(S, r[present], targets[present])
    C = sp.csr_matrix((N, V))
    for a in A:
        C = C + sp.csr_matrix((np.ones(a.nnz), a.indices, a.indptr), shape=(N, V))
    C = C.tocsr()
    C.sort_indices()
    comp = np.empty((len(A), C.nnz))
    for g, a in enumerate(A):
        m = (a + C).tocsr()
        m.sort_indices()
        assert m.nnz == C.nnz
        comp[g] = m.data - C.data
    pos = np.repeat(np.arange(N), np.diff(C.indptr))
    return comp, pos, C.indices.astype(np.int64), tgt


def choose_lambdas(params: SparseParams, rows: list, targets: np.ndarray,
                   max_iter: int = 30, tol: float = 1e-7, init=None,
                   fixed=None) -> tuple[np.ndarray, list]:
    """Group weights lambda >= 0 that minimise held-out NLL, by projected Newton steps.

    ``rows``: per group, row index per held-out position (-1 = no feature); ``targets`` (N,).
    The held-out NLL ``mean_n [log Z_n(lambda) - lambda . t_n]`` is convex in lambda (a
    log-sum-exp of functions linear in lambda), so a few Newton steps on these G scalars find
    its minimum; W itself is never touched by a gradient. Starts from ``init`` (default
    lambda = (1, 0, ...)); groups where ``fixed[g]`` is true keep their initial weight (the n-gram
    solver fixes its suffix groups at 1). Returns the lambdas and the trace ``[(lambdas, nll)]``.
    """
    lam = np.zeros(len(params.S))
    lam[0] = 1.0
    if init is not None:
        lam = np.asarray(init, dtype=np.float64).copy()
    movable = np.ones(len(lam), bool) if fixed is None else ~np.asarray(fixed, dtype=bool)
    if not movable.any():
        return lam, []
    comp, pos, col, tgt = _aligned_components(params, rows, targets)
    N, G = len(targets), len(params.S)
    # union entries are grouped by position (CSR order): per-position sums are segment sums
    seg_pos, seg_start = np.unique(pos, return_index=True)
    qc = params.q[col]
    base = float(-np.log(params.q[targets]).mean())

    def seg_sum(x):  # (..., U) -> (..., N)
        out = np.zeros(x.shape[:-1] + (N,))
        if x.shape[-1]:
            out[..., seg_pos] = np.add.reduceat(x, seg_start, axis=-1)
        return out

    def nll_of(lam):
        w = qc * np.exp(lam @ comp)
        Z = 1.0 + seg_sum(w - qc)
        return base + float(np.mean(np.log(Z) - lam @ tgt)), w, Z

    def grad_hess(w, Z):
        dZ = seg_sum(comp * w) / Z  # (G, N)
        hess = np.empty((G, G))
        for g in range(G):
            for h in range(g, G):
                hess[g, h] = hess[h, g] = np.mean(seg_sum(comp[g] * comp[h] * w) / Z)
        hess -= dZ @ dZ.T / N
        return (dZ - tgt).mean(axis=1), hess

    nll, w, Z = nll_of(lam)
    trace = [(lam.tolist(), nll)]
    for _ in range(max_iter):
        grad, hess = grad_hess(w, Z)
        free = ((lam > 0) | (grad < 0)) & movable  # active set: at 0 and pushed below 0 stay
        step = np.zeros(G)
        if free.any():
            h = hess[np.ix_(free, free)] + 1e-9 * np.eye(int(free.sum()))
            step[free] = -np.linalg.solve(h, grad[free])
        t = 1.0
        while t > 1e-4:  # backtracking line search on the projected step
            trial = np.maximum(lam + t * step, 0.0)
            tnll, tw, tZ = nll_of(trial)
            if tnll <= nll - 1e-12:
                break
            t /= 2
        else:
            break
        converged = nll - tnll < tol
        lam, nll, w, Z = trial, tnll, tw, tZ
        trace.append((lam.tolist(), nll))
        if converged:
            break
    return lam, trace
