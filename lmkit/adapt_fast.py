"""Compiled pass of exact MKN adaptation (``adapt_ngram.adaptive_log_proba``), loaded only with
numba (``pip install lmkit[fast]``); the numpy pass of ``adapt_ngram`` gives the same numbers.

Input, per history length m = 0..M (columns of (T, M+1) int64 arrays, T = targets in reading
order: a target's orders lie together in memory): ``pid``/``hid`` dense ids of (history, target) and of the history (-1: the line is too
short), ``a_train``/``raw_train`` the training text's adjusted and raw counts of (h, w),
``base`` (T, M+1, 4) the training row's a(h .), N1, N2, N3+; ``line_end`` the end index of
each line's targets, ``reach`` tokens before each target in its line (BOS included),
``disc`` (M+1, 3) discounts. Output: P(target) float64 (T,).

Why a loop: read in order, each line is first scored from running counts (the training value
plus the counts of earlier lines' events, in arrays indexed by the dense ids), then its events
are added (``adapt_ngram``'s module docstring defines them): O(T (M+1)), no sort.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .sortedsearch import lower_bound

# the one binary search of the compiled loops (sortedsearch.py), compiled here too
_lower_bound = njit(cache=True, nogil=True, inline="always")(lower_bound)


@njit(cache=True, nogil=True)
def _discount(a, d):  # pragma: no cover (jit)
    if a == 0:
        return 0.0
    if a == 1:
        return d[0]
    if a == 2:
        return d[1]
    return d[2]


@njit(cache=True, nogil=True)
def adapt_pass(line_end, reach, pid, hid, n_pid, n_hid, a_train, raw_train, base, disc,
               V):  # pragma: no cover (jit)
    M = pid.shape[1] - 1
    T = pid.shape[0]
    width = max(n_pid.max(), n_hid.max())
    pair = np.zeros((M + 1, width), dtype=np.int64)      # events of (h, w) so far
    row = np.zeros((M + 1, width, 4), dtype=np.int64)   # events of h: a(h .), N1, N2, N3+
    seen = np.zeros((M + 1, width), dtype=np.bool_)     # (h, w) occurred in the scored text
    p = np.empty(T)
    a0 = 0
    for e in range(line_end.shape[0]):
        b = line_end[e]
        for t in range(a0, b):  # score the line from the counts before it
            pt = 1.0 / V
            top = min(M, reach[t])
            for m in range(top + 1):
                h = hid[t, m]
                tot = base[t, m, 0] + row[m, h, 0]
                if tot == 0:
                    if m == 0:
                        continue  # no training text: uniform, then the longer histories
                    break
                a = a_train[t, m] + pair[m, pid[t, m]]
                d = disc[m]
                gamma = (d[0] * (base[t, m, 1] + row[m, h, 1]) + d[1] * (base[t, m, 2]
                         + row[m, h, 2]) + d[2] * (base[t, m, 3] + row[m, h, 3])) / tot
                pt = (a - _discount(a, d)) / tot + gamma * pt
            p[t] = pt
        for t in range(a0, b):  # then count it
            top = min(M, reach[t])
            for m in range(top + 1):
                k = pid[t, m]
                if m == M or (m >= 1 and reach[t] == m):
                    event = True  # a raw-counted entry
                else:  # a new left extension: the (m+1)-gram is new to train and text
                    event = raw_train[t, m + 1] == 0 and not seen[m + 1, pid[t, m + 1]]
                seen[m, k] = True
                if event:
                    h = hid[t, m]
                    c = a_train[t, m] + pair[m, k]
                    pair[m, k] += 1
                    row[m, h, 0] += 1
                    if c == 0:
                        row[m, h, 1] += 1
                    elif c == 1:
                        row[m, h, 1] -= 1
                        row[m, h, 2] += 1
                    elif c == 2:
                        row[m, h, 2] -= 1
                        row[m, h, 3] += 1
        a0 = b
    return p


@njit(cache=True, nogil=True)
def train_values(indptr, indices, data_a, data_raw, stats, rows, cols, a_out, raw_out,
                 base_out):  # pragma: no cover (jit)
    """For every target n with training row ``rows[n]`` >= 0: a(h w) and c(h w) of the CSR
    entry (rows[n], cols[n]) (0 if absent; a binary search within the row) into ``a_out[n]``,
    ``raw_out[n]`` and the row's four ``stats[r]`` ((R, 4)) into ``base_out[n]``; the rest stay 0."""
    for n in range(rows.shape[0]):
        r = rows[n]
        if r < 0:
            continue
        for j in range(4):
            base_out[n, j] = stats[r, j]
        c = cols[n]
        lo = _lower_bound(indices, indptr[r], indptr[r + 1], c)
        if lo < indptr[r + 1] and indices[lo] == c:
            a_out[n] = data_a[lo]
            raw_out[n] = data_raw[lo]


@njit(cache=True, nogil=True)
def cache_counts(hist, pair, n_hist, n_pair, order, window, window_order):  # pragma: no cover
    """``cache.level_stats`` from dense ids: ``hist``/``pair`` (K, T) int64 ids of each
    position's k-token history and of (history, target), ``n_hist``/``n_pair`` (K,) how many of
    each. Returns int64 (3, order + window_order, T): per full level the counts over everything
    before t (c, n, u), per window level over positions t - window .. t - 1 (c, n; u = 0)."""
    T = hist.shape[1]
    L = order + (window_order if window > 0 else 0)
    out = np.zeros((3, L, T), dtype=np.int64)
    for k in range(order):
        ch = np.zeros(n_hist[k], dtype=np.int64)
        cp = np.zeros(n_pair[k], dtype=np.int64)
        u = np.zeros(n_hist[k], dtype=np.int64)
        for t in range(T):
            h = hist[k, t]
            p = pair[k, t]
            out[0, k, t] = ch[h]
            out[1, k, t] = cp[p]
            out[2, k, t] = u[h]
            ch[h] += 1
            if cp[p] == 0:
                u[h] += 1
            cp[p] += 1
    if window > 0:
        for k in range(window_order):
            ch = np.zeros(n_hist[k], dtype=np.int64)
            cp = np.zeros(n_pair[k], dtype=np.int64)
            for t in range(T):
                s = t - window - 1  # leaves the window
                if s >= 0:
                    ch[hist[k, s]] -= 1
                    cp[pair[k, s]] -= 1
                out[0, order + k, t] = ch[hist[k, t]]
                out[1, order + k, t] = cp[pair[k, t]]
                ch[hist[k, t]] += 1
                cp[pair[k, t]] += 1
    return out
