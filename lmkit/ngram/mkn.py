r"""N-gram solver: suffix-context counts -> interpolated modified Kneser-Ney as one softmax layer.

Input: ``Counts`` (``counts.py``) whose groups are ``Suffix(1..M)`` (an order N = M + 1 model),
optionally followed by ``Window`` groups. ``F[m]`` is CSR (R_m, V) int64: rows = observed
m-token histories h (sorted chained keys ``row(h') * V + oldest token``, see ``features.py``),
columns = next token w.
Output: ``SparseParams`` with ``q`` (V,) = the interpolated MKN unigram ``P_1``, per suffix group
``S_m`` CSR (R_m, V) float64 on the pattern of ``F[m]``, window groups solved as in
``explicit.py`` against the same ``q``; ``lambdas`` = 1 (suffix weights stay 1: that *is* MKN).

Interpolated modified Kneser-Ney (Chen & Goodman 1998; as in KenLM's lmplz)
---------------------------------------------------------------------------
Adjusted counts ``a``: raw counts ``c(h w)`` at the highest order N and for n-grams starting
with BOS; otherwise the continuation count ``N1+(. h w)`` = number of distinct tokens seen left
of ``h w`` (BOS included). Each nonzero of ``F[m+1]`` is one distinct ``(v h, w)``, so
``a(h w)`` = number of nonzeros of ``F[m+1]`` in rows whose key // V is row(h): the lower orders
are derived from the higher-order count matrices, nothing else is counted. Per order n three
discounts from the count-of-counts ``n_k`` of its adjusted counts::

    Y = n1 / (n1 + 2 n2),  D1 = 1 - 2Y n2/n1,  D2 = 2 - 3Y n3/n2,  D3+ = 3 - 4Y n4/n3.

With ``D(a)`` the discount of a count a and ``h'`` = h without its oldest token::

    P_n(w | h) = (a(h w) - D(a(h w))) / a(h .) + gamma_n(h) P_{n-1}(w | h'),
    gamma_n(h) = sum_w D(a(h w)) / a(h .)    (= (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / a(h .)),
    P_1(w) = (a(w) - D(a(w))) / a(.) + gamma_0 / V          (interpolated with uniform),

and ``P_n(w | h) = P_{n-1}(w | h')`` when h was never seen as a history.

The sparse softmax form
-----------------------
Write ``r_n(h, w) = (a - D(a)) / a(h .)`` (zero off the observed pairs). Then
``P_n(w|h) = gamma_n(h) P_{n-1}(w|h') (1 + r_n / (gamma_n(h) P_{n-1}(w|h')))``, and unrolling
the recursion from order N down to the unigram::

    log P_N(w | h) = log q[w] + sum_m S_m[h_m, w] + sum_m log gamma_{m+1}(h_m),
    S_m[h, w]      = log(1 + r_{m+1}(h, w) / (gamma_{m+1}(h) P_m(w | h'))) >= 0,

where ``h_m`` is the last m tokens of the history, ``q = P_1`` and an unseen history contributes
nothing (gamma = 1, S = 0). The last sum depends on the context only, so it is the negative log
normaliser: ``log Z = -sum_m log gamma(h_m)``. Hence MKN is exactly the single softmax layer
``logits = log q + sum_m S_m[h_m]`` with one-hot suffix features and all lambdas 1, and the
generic scorer (which normalises over the union of touched columns) returns MKN probabilities.
Conversely gamma is recoverable from q and S alone, ``gamma(h) = 1 / (1 + sum_{w in row h}
P_m(w|h') expm1(S[h, w]))``, which is how ``tables.backoff_tables`` rebuilds the ARPA backoffs. The
solver also keeps log gamma per row (``info["loggamma"]``, saved as ``G{g}`` arrays), so loading
a model derives nothing (``tables.loggamma_tables``); ``sample.py`` samples this model exactly.

The query side (back-off tables, the exact scorer) is ``tables.py``; ARPA export: ``arpa.py``.
"""
from __future__ import annotations


import numpy as np
import scipy.sparse as sp

from ..counts import Counts
from ..errors import InputError, OptionError
from ..explicit import estimate_discount, solve_group
from ..features import Suffix, decode_histories, decode_suffix_key, encode_histories
from ..params import SparseParams
from ..progress import log
from .tables import _lower_logp, _suffix_order, entry_index

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


# ---- discounts and adjusted counts ------------------------------------------------------------
def mkn_discounts(values: np.ndarray) -> tuple[tuple[float, float, float], bool]:
    """``(D1, D2, D3+)`` from the count-of-counts of ``values`` (the adjusted counts of an order).

    Returns the discounts and whether they were estimated (False: the count-of-counts were too
    sparse, e.g. a tiny corpus, and ``FALLBACK_DISCOUNTS`` are used). Example: n1..n4 = 10, 4,
    2, 1 -> Y = 10/18, D1 = 1 - 2*(10/18)*0.4 = 0.5556, D2 = 2 - 3*(10/18)*0.5 = 1.1667,
    D3+ = 3 - 4*(10/18)*0.5 = 1.8889.
    """
    return discounts_from_count_of_counts([int(np.count_nonzero(values == k)) for k in (1, 2, 3, 4)])


def discounts_from_count_of_counts(n) -> tuple[tuple[float, float, float], bool]:
    """``mkn_discounts`` from the count-of-counts ``n = (n1, n2, n3, n4)`` themselves."""
    n = [int(x) for x in n]
    if min(n) == 0:
        return FALLBACK_DISCOUNTS, False
    y = n[0] / (n[0] + 2 * n[1])
    d = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
    if not all(0 < dk <= k for k, dk in zip((1, 2, 3), d)):
        return FALLBACK_DISCOUNTS, False
    return tuple(float(x) for x in d), True


def _discount_of(values: np.ndarray, d) -> np.ndarray:
    """D(a) per count: D1 for 1, D2 for 2, D3+ for 3 or more."""
    return np.where(values == 1, d[0], np.where(values == 2, d[1], d[2]))


def adjusted_counts(counts: Counts, m: int, top: int, bos_id: int) -> sp.csr_matrix:
    """MKN adjusted counts of the order-(m+1) n-grams, CSR on the pattern of ``F[m]``.

    ``m`` = history length (0 = unigrams: a (1, V) matrix); ``top`` = M, the longest history.
    Raw counts for m = top and for histories starting with BOS; else the number of distinct
    left extensions, read off ``F[m+1]``.
    """
    return _adjusted_counts(counts, m, top, bos_id)[0]


def _adjusted_counts(counts: Counts, m: int, top: int, bos_id: int):
    """``adjusted_counts`` and, for 0 < m < top, the link of every order-(m+2) n-gram (h w) to
    its order-(m+1) suffix (h' w) as an index into the returned pattern (None otherwise): the
    solve needs the very same join for the lower-order probability."""
    V = counts.vocab_size
    if m == top:
        A = counts.F[m - 1].tocsr().astype(np.int64)
        A.sort_indices()
        return A, None
    up, up_keys = counts.F[m].tocsr(), counts.keys[m]  # Suffix(m+1) is group index m
    if m == 0:
        return sp.csr_matrix(np.bincount(up.indices, minlength=V).astype(np.int64)[None, :]), None
    F = counts.F[m - 1].tocsr()
    F.sort_indices()
    entry_row = np.repeat(np.arange(up.shape[0]), np.diff(up.indptr))
    parent = up_keys[entry_row] // V  # chained keys: the row of h w's history minus its oldest
    idx = entry_index(F, parent, up.indices, compiled=True)
    a = np.bincount(idx, minlength=F.nnz).astype(np.int64)
    bos_rows = (counts.keys[m - 1] % V) == bos_id  # oldest token BOS: nothing extends it
    bos_entries = np.repeat(bos_rows, np.diff(F.indptr))
    a[bos_entries] = F.data[bos_entries]
    assert (a > 0).all(), "adjusted counts must have the pattern of the raw counts"
    return sp.csr_matrix((a, F.indices, F.indptr), shape=F.shape), idx


def infer_bos_id(counts: Counts) -> int:
    """The BOS id: the one history token of ``Suffix(1)`` that is never a target."""
    g = counts.groups.index(Suffix(1))
    cand = counts.keys[g][counts.target[counts.keys[g]] == 0]
    if len(cand) != 1:
        raise InputError(f"cannot tell the BOS id from the counts ({len(cand)} candidates); "
                         "pass bos_id= to solve_ngram")
    return int(cand[0])


def _check_discount(discount):
    if discount is None:
        return None
    d = (float(discount),) * 3 if np.isscalar(discount) else tuple(float(x) for x in discount)
    if len(d) != 3 or not all(0 < dk <= k for k, dk in zip((1, 2, 3), d)):
        raise OptionError(f"discount for an n-gram model needs 1 or 3 values D1 D2 D3+ with 0 < Dk <= k, "
                         f"got {list(d)}; omit it to estimate the discounts from count-of-counts")
    return d


# ---- the solver -------------------------------------------------------------------------------
def solve_ngram(counts: Counts, *, discount=None, prune=None, bos_id: int | None = None,
                floor: float = 0.5) -> SparseParams:
    """Interpolated modified Kneser-Ney for the suffix groups (+ closed form for window groups).

    ``discount``: None (per order from count-of-counts), one float, or ``(D1, D2, D3+)`` for
    every order. ``prune``: None or per-order count thresholds (see ``prune_thresholds``).
    ``floor`` is accepted for signature compatibility with ``solve_explicit`` (unused: q is MKN).
    """
    groups = list(counts.groups)
    M = _suffix_order(groups)
    V = counts.vocab_size
    bos = infer_bos_id(counts) if bos_id is None else int(bos_id)
    given = _check_discount(discount)
    thresholds = prune_thresholds(prune, M + 1)

    A, links = (list(x) for x in zip(*[_adjusted_counts(counts, m, M, bos) for m in range(M + 1)]))
    discounts, estimated = order_discounts([count_of_counts(a.data) for a in A], given)
    keep = _pruned_patterns(A, counts.keys, thresholds, V)
    q = unigram_level(A[0].toarray().ravel(), discounts[0])

    S, keys, loggamma, logp_prev, parent_map = [], [], [], None, np.zeros(1, dtype=np.int64)
    for m in range(1, M + 1):
        # unpruned, order m's entries link to order m-1's (the patterns of logp_prev) as counted
        link = links[m - 1] if keep[m] is None and keep[m - 1] is None else None
        links[m - 1] = None  # used once: free it
        Sm, km, logp_prev, parent_map, lg = _solve_order(A[m], counts.keys[m - 1], discounts[m],
                                                         keep[m], q, logp_prev, parent_map, V, link)
        S.append(Sm)
        keys.append(km)
        loggamma.append(lg)
    for g in groups[M:]:
        F = counts.F[groups.index(g)]
        S.append(solve_group(F, q, estimate_discount(F)))
        keys.append(counts.keys[groups.index(g)])
    info = {"discounts": discounts, "discounts_estimated": estimated, "bos_id": bos,
            "smoothing": "interpolated modified Kneser-Ney", "prune": thresholds,
            # pure MKN keeps lambdas 1 (exact, ARPA-exportable); with window groups every
            # lambda is tuned, starting from MKN: measured 78.3 vs 80.5 test ppl with the suffix
            # lambdas fixed at 1 (order 5 + window 1..3, scripts/ngram_vs_window.py)
            "lambda_init": [1.0] * M + [0.0] * (len(groups) - M),
            "lambda_fixed": [len(groups) == M] * len(groups)}
    if len(groups) == M:  # pure MKN: saved with the model so that loading derives nothing
        info["loggamma"] = loggamma
    return SparseParams(groups, q, S, keys, np.ones(len(groups)), info)


def _solve_order(A, keys, d, keep, q, logp_prev, parent_map, V, link=None):
    """One suffix group: S (CSR on the kept pattern), its row keys, log P on that pattern, the
    map old row -> kept row (-1: pruned) that re-keys the next group's chained keys, and log
    gamma per kept row.

    ``logp_prev``: CSR of log P_m(w | h') on the previous group's kept pattern (None for m = 1);
    ``parent_map``: the previous group's old -> kept row map; ``link``: index of each (h' w) in
    ``logp_prev`` when already known (no pruning). Pruned entries keep their whole
    adjusted count in gamma (their mass backs off).
    """
    R = A.shape[0]
    entry_row = np.repeat(np.arange(R), np.diff(A.indptr))
    vals = A.data.astype(np.float64)
    disc = _discount_of(vals, d)
    total = np.bincount(entry_row, vals, minlength=R)
    r = (vals - disc) / total[entry_row]
    backoff_mass = disc if keep is None else disc + np.where(keep, 0.0, vals - disc)
    gamma = np.bincount(entry_row, backoff_mass, minlength=R) / total
    if keep is None:  # nothing pruned: every row and entry stays, keys keep their numbering
        new_row = np.arange(R)
        rows_kept, er, cols = new_row, entry_row, A.indices
    else:
        rows_kept = np.flatnonzero(np.bincount(entry_row[keep], minlength=R) > 0)
        new_row = np.full(R, -1)
        new_row[rows_kept] = np.arange(len(rows_kept))
        er, cols, r = new_row[entry_row[keep]], A.indices[keep], r[keep]
    # chained keys name the parent's row: re-key them into the kept numbering of the parent
    k = keys[rows_kept]
    parent = parent_map[k // V]
    assert (parent >= 0).all(), "a kept history lost its suffix: pruning must keep it"
    new_keys = parent * V + k % V
    g = gamma[rows_kept][er]
    lower = logp_prev.data[link] if link is not None else _lower_logp(parent[er], cols, q, logp_prev)
    data = np.log1p(r / (g * np.exp(lower)))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(er, minlength=len(rows_kept)))])
    shape = (len(rows_kept), V)
    cols = cols.astype(np.int32)
    S = sp.csr_matrix((data, cols, indptr), shape=shape)
    logp = sp.csr_matrix((np.log(g) + lower + data, cols, indptr), shape=shape)
    return S, new_keys, logp, new_row, np.log(gamma[rows_kept])


def prune_thresholds(prune, n_orders: int) -> list:
    """Per-order count thresholds (KenLM ``--prune``): n-grams whose adjusted count is <= t_n
    are dropped (their mass backs off). Unigrams are never pruned; a shorter list repeats its
    last value for the higher orders. Example: order 4, prune=[0, 1] -> [0, 0, 1, 1]."""
    if not prune:
        return [0] * n_orders
    t = [int(x) for x in prune]
    if any(x < 0 for x in t) or t[0] != 0 or any(b < a for a, b in zip(t, t[1:])):
        raise OptionError(f"prune thresholds must be >= 0, non-decreasing and start with 0 "
                          f"(unigrams are never pruned), got {list(prune)}; e.g. prune 0 0 1")
    return (t + [t[-1]] * n_orders)[:n_orders]


def _pruned_patterns(A, keys, thresholds, V) -> list:
    """Boolean keep-mask per order over the nonzeros of ``A[m]`` (index 0 = unigrams), or None
    per order when nothing is pruned.

    Pruned top-down; an n-gram is kept when its count exceeds the threshold or when a kept
    longer n-gram needs it: as its suffix (``h' w``) or as its context (``h w`` is a kept row).
    """
    M = len(A) - 1
    if not any(thresholds):
        return [None] * (M + 1)
    keep = [np.ones(a.nnz, dtype=bool) for a in A]
    needed = {}  # order m -> mask of n-grams that kept (m+1)-grams need
    for m in range(M, 0, -1):
        a = A[m]
        keep[m] = a.data > thresholds[m]
        if m < M:
            keep[m] |= needed[m]
        if m > 1:  # mark what this order's kept n-grams need one order down
            er = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))[keep[m]]
            cols = a.indices[keep[m]].astype(np.int64)
            lower = A[m - 1]
            mark = np.zeros(lower.nnz, dtype=bool)
            mark[entry_index(lower, keys[m - 1][er] // V, cols)] = True  # suffix h' w
            # context: the row h of a kept entry, as an m-gram (h[:-1], h[-1])
            hist = decode_histories(keys, m, V)[np.unique(er)]
            ctx_rows = encode_histories(keys, hist[:, :-1], V)
            mark[entry_index(lower, ctx_rows, hist[:, -1])] = True
            needed[m - 1] = mark
    return keep


# ---- pieces of a partitioned build (ngram/dask.py; the same steps as solve_ngram) -------------
def count_of_counts(values) -> np.ndarray:
    """n1..n4 of positive integer counts: int64 (4,). Sums over partitions are exact, and
    ``discounts_from_count_of_counts`` of the sum equals ``mkn_discounts`` of the union.
    Example: [1, 1, 2, 7] -> [2, 1, 0, 1]."""
    return np.bincount(np.minimum(np.asarray(values, dtype=np.int64), 5), minlength=6)[1:5]


def order_discounts(nk, given=None) -> tuple[list, list]:
    """Per order (index 0 = unigrams): ``[D1, D2, D3+]`` and whether it was estimated, from the
    count-of-counts rows ``nk`` (n_orders, 4), or ``given`` (checked) for every order. Logs the
    orders that fell back to ``FALLBACK_DISCOUNTS``."""
    discounts, estimated = [], []
    for n in nk:
        d, ok = (given, True) if given else discounts_from_count_of_counts(n)
        discounts.append([float(x) for x in d])
        estimated.append(ok)
    if given is None and not all(estimated):
        log(f"      MKN discounts: count-of-counts too sparse for orders "
            f"{[n + 1 for n, ok in enumerate(estimated) if not ok]}, using {FALLBACK_DISCOUNTS}")
    return discounts, estimated


def unigram_level(a1, d) -> np.ndarray:
    """``q = P_1`` (V,) float64 from the unigram adjusted counts ``a1`` (V,) and their discounts
    ``d``, interpolated with the uniform distribution (module docstring)."""
    a1 = np.asarray(a1, dtype=np.float64)
    d1 = np.where(a1 > 0, _discount_of(a1, d), 0.0)
    return (a1 - d1) / a1.sum() + d1.sum() / a1.sum() / len(a1)


def solve_partition(A, keys, links, discounts, q, V) -> tuple[list, list, list]:
    """Unpruned MKN of the orders 2..N of one partition of histories (all ending in the same
    token range): ``A``, ``links`` as ``_adjusted_counts`` gives them for m = 0..M (index 0
    unused), ``keys`` the partition's chained row keys per suffix group, global ``discounts``
    and ``q``. Returns per suffix group S (CSR), row keys (partition-local chained ids) and log
    gamma, exactly ``solve_ngram``'s rows of that partition."""
    S, K, G, logp, parent_map = [], [], [], None, np.zeros(1, dtype=np.int64)
    for m in range(1, len(A)):
        Sm, km, logp, parent_map, lg = _solve_order(A[m], keys[m - 1], discounts[m], None, q,
                                                    logp, parent_map, V, links[m - 1])
        S.append(Sm)
        K.append(km)
        G.append(lg)
    return S, K, G


def stitch_partitions(parts, V) -> tuple[list, list, list]:
    """Partitions ``[(S, keys, loggamma), ...]`` in token-range order -> the global tables.

    Rows of partition p follow those of partition p-1 at every order, so a chained key
    ``parent * V + oldest`` only moves by the parent level's rows before p (a monotone shift:
    the stitched keys stay sorted). Example: V = 10, order-3 keys [3, 14] then [2] (parent rows
    0, 1 then 0; partition 0 has 2 order-2 rows) -> [3, 14, 22]."""
    S, K, G = [], [], []
    for m in range(len(parts[0][0])):
        if m:  # parents are rows of group m-1: shift by that group's rows in earlier partitions
            rows = np.array([p[0][m - 1].shape[0] for p in parts], dtype=np.int64)
            shift = (np.cumsum(rows) - rows) * V
        else:  # Suffix(1) keys are token ids
            shift = np.zeros(len(parts), dtype=np.int64)
        K.append(np.concatenate([p[1][m] + s for p, s in zip(parts, shift)]))
        S.append(sp.vstack([p[0][m] for p in parts], format="csr") if len(parts) > 1
                 else parts[0][0][m])
        G.append(np.concatenate([p[2][m] for p in parts]))
    return S, K, G


__all__ = ["solve_ngram", "mkn_discounts", "adjusted_counts", "count_of_counts", "order_discounts",
           "unigram_level", "solve_partition", "stitch_partitions", "prune_thresholds",
           "decode_suffix_key"]
