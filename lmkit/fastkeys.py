"""Compiled key search of ``features.lookup_keys``, loaded only with numba (and many queries).

Input: ``table`` int64 (R,) sorted ascending (a group's row keys: checked sorted and unique when
a model folder is loaded), ``queries`` int64 (N,) in any order, -1 = no feature.
Output: int64 (N,), the index in ``table`` of each query's key, -1 where it is absent or -1.

Why: a keyed group (skip-gram, cluster history, line position) has keys that no shared
permutation sorts, so each search used to sort its own queries (``np.argsort``, a comparison
sort, ~0.11 s per million) and then ``np.searchsorted`` them. Here the queries are sorted by an
LSD radix sort (11-bit digits, only over the bits the keys span; passes where every key has the
same digit are skipped) and matched by one merge-like walk of the table, galloping from the
previous match: both read memory in order. Measured on the 18.9M-token model's test file
(1.1M queries, tables of 15k-4.7M keys): docs/speed.md.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .sortedsearch import lower_bound

_lower_bound = njit(cache=True, nogil=True, inline="always")(lower_bound)  # the one binary search

DIGIT = 11  # radix bits per pass: 2,048 buckets, whose write fronts stay in cache


@njit(cache=True, nogil=True)
def _radix_order(keys, pos):  # pragma: no cover (jit)
    """``(keys, pos)`` sorted by key (stable LSD radix sort); keys >= 0. Returns new arrays."""
    n = keys.shape[0]
    if n == 0:
        return keys, pos
    lo, hi = keys[0], keys[0]
    for i in range(n):
        lo = min(lo, keys[i])
        hi = max(hi, keys[i])
    span = hi - lo
    k = keys - lo
    p = pos.copy()
    tk = np.empty(n, np.int64)
    tp = np.empty(n, np.int64)
    B = 1 << DIGIT
    mask = B - 1
    cnt = np.empty(B + 1, np.int64)
    shift = 0
    while shift < 63 and (span >> shift) > 0:
        cnt[:] = 0
        for i in range(n):
            cnt[((k[i] >> shift) & mask) + 1] += 1
        if cnt.max() < n:  # else every key has this digit: nothing to reorder
            for b in range(B):
                cnt[b + 1] += cnt[b]
            for i in range(n):
                d = (k[i] >> shift) & mask
                j = cnt[d]
                cnt[d] = j + 1
                tk[j] = k[i]
                tp[j] = p[i]
            k, tk = tk, k
            p, tp = tp, p
        shift += DIGIT
    return k + lo, p


@njit(cache=True, nogil=True)
def find_keys(queries, table):  # pragma: no cover (jit)
    """Index of each query in ``table`` (-1: absent or a -1 query); see the module docstring."""
    n = queries.shape[0]
    m = 0
    for i in range(n):
        m += queries[i] >= 0
    keys = np.empty(m, np.int64)
    pos = np.empty(m, np.int64)
    m = 0
    for i in range(n):
        if queries[i] >= 0:
            keys[m] = queries[i]
            pos[m] = i
            m += 1
    keys, pos = _radix_order(keys, pos)
    out = np.full(n, -1, np.int64)
    _merge(table, keys, pos, out)
    return out


@njit(cache=True, nogil=True)
def find_ordered(table, queries, order):  # pragma: no cover (jit)
    """``find_keys`` when ``order`` (N,) already sorts the queries that are not -1 (the
    ``features.history_order`` of the suffix groups): no sort, one walk. A query out of
    order would only be missed (-1), never read out of bounds: the walk checks what it finds."""
    n = queries.shape[0]
    m = 0
    for i in range(n):
        m += queries[order[i]] >= 0
    keys = np.empty(m, np.int64)
    pos = np.empty(m, np.int64)
    m = 0
    for i in range(n):
        o = order[i]
        if queries[o] >= 0:
            keys[m] = queries[o]
            pos[m] = o
            m += 1
    out = np.full(n, -1, np.int64)
    _merge(table, keys, pos, out)
    return out


@njit(cache=True, nogil=True)
def _merge(table, keys, pos, out):  # pragma: no cover (jit)
    """``out[pos[i]]`` = index of ``keys[i]`` in ``table`` where present, for ascending keys."""
    R = table.shape[0]
    j = 0  # first table index whose key is >= the current query (queries ascending)
    for i in range(keys.shape[0]):
        x = keys[i]
        if j < R and table[j] < x:  # gallop: the next key is usually close by
            step = 1
            while j + step < R and table[j + step] < x:
                j += step
                step *= 2
            j = _lower_bound(table, j + 1, min(j + step, R), x)  # table[j] < x: in (j, j + step]
        if j < R and table[j] == x:
            out[pos[i]] = j
