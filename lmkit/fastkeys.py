"""Compiled key search of ``features.lookup_keys`` (many queries): numba source, run as cached
native object code (``native.py``: later processes call it without importing numba).

Input: ``table`` int64 (R,) sorted ascending (a group's row keys: checked sorted and unique when
a model folder is loaded), ``queries`` int64 (N,) in any order, -1 = no feature.
Output: int64 (N,), the index in ``table`` of each query's key, -1 where it is absent or -1
(written into the caller's array; scratch comes from the caller too: nothing is allocated here,
so the object code needs no numba runtime).

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

from .jitargs import arg1, arg2, block_cfunc
from .sortedsearch import lower_bound

_lower_bound = njit(inline="always")(lower_bound)  # the one binary search

@njit(inline="always")
def _radix_order(k, p, tk, tp, cnt, carry=True):  # pragma: no cover (jit)
    """``(k, p)`` sorted by key (stable LSD radix sort), in place in the buffers ``k``, ``p``,
    ``tk``, ``tp`` (m,) and ``cnt`` (2 ** digit + 1,): ``digit`` radix bits per pass (the
    caller's choice, ``features.RADIX_BITS``). Returns the pair of buffers that holds the
    result. ``carry`` False: the keys alone (``p`` and ``tp`` are not touched)."""
    n = k.shape[0]
    if n == 0:
        return k, p
    lo, hi = k[0], k[0]
    for i in range(n):
        lo = min(lo, k[i])
        hi = max(hi, k[i])
    span = hi - lo
    for i in range(n):
        k[i] -= lo
    digit = 0
    while (2 << digit) < cnt.shape[0]:
        digit += 1
    B = 1 << digit
    mask = B - 1
    shift = 0
    while shift < 63 and (span >> shift) > 0:
        for b in range(B + 1):
            cnt[b] = 0
        for i in range(n):
            cnt[((k[i] >> shift) & mask) + 1] += 1
        top = 0
        for b in range(B + 1):
            top = max(top, cnt[b])
        if top < n:  # else every key has this digit: nothing to reorder
            for b in range(B):
                cnt[b + 1] += cnt[b]
            for i in range(n):
                d = (k[i] >> shift) & mask
                j = cnt[d]
                cnt[d] = j + 1
                tk[j] = k[i]
                if carry:
                    tp[j] = p[i]
            k, tk = tk, k
            if carry:
                p, tp = tp, p
        shift += digit
    for i in range(n):
        k[i] += lo
    return k, p


@njit
def find_keys(queries, table, out, buf, cnt):  # pragma: no cover (jit)
    """``out`` = index of each query in ``table`` (-1: absent or a -1 query); see the module
    docstring. Scratch: ``buf`` int64 (4, N), ``cnt`` int64 (2 ** digit + 1,), digit >= 1."""
    n = queries.shape[0]
    m = 0
    for i in range(n):
        if queries[i] >= 0:
            buf[0, m] = queries[i]
            buf[1, m] = i
            m += 1
    keys, pos = _radix_order(buf[0, :m], buf[1, :m], buf[2, :m], buf[3, :m], cnt)
    for i in range(n):
        out[i] = -1
    _merge(table, keys, pos, out)


@njit
def find_ordered(table, queries, order, out, buf):  # pragma: no cover (jit)
    """``find_keys`` when ``order`` (N,) already sorts the queries that are not -1 (the
    ``features.history_order`` of the suffix groups): no sort, one walk. A query out of
    order would only be missed (-1), never read out of bounds: the walk checks what it finds.
    Scratch: ``buf`` int64 (2, N)."""
    n = queries.shape[0]
    m = 0
    for i in range(n):
        o = order[i]
        if queries[o] >= 0:
            buf[0, m] = queries[o]
            buf[1, m] = o
            m += 1
    for i in range(n):
        out[i] = -1
    _merge(table, buf[0, :m], buf[1, :m], out)


@njit
def search_sorted(queries, table, out, buf, cnt):  # pragma: no cover (jit)
    """``out`` = ``np.searchsorted(table, queries)`` (side left: the first index whose key is
    >= the query) for non-negative ``queries``, by the same radix sort and walk. Scratch:
    ``buf`` int64 (4, N), ``cnt`` as ``find_keys``'."""
    n = queries.shape[0]
    for i in range(n):
        buf[0, i] = queries[i]
        buf[1, i] = i
    keys, pos = _radix_order(buf[0], buf[1], buf[2], buf[3], cnt)
    j = 0
    for i in range(n):
        j = _next_bound(table, j, keys[i])
        out[pos[i]] = j


@njit
def sort_values(a, tmp, cnt):  # pragma: no cover (jit)
    """``a`` (non-negative int64) sorted ascending in place by the LSD radix sort; scratch
    ``tmp`` (N,) int64 and ``cnt`` as ``find_keys``'."""
    k, _ = _radix_order(a, tmp, tmp, tmp, cnt, False)
    for i in range(a.shape[0]):  # the result is in a or in tmp (a copy onto itself: no-op)
        a[i] = k[i]


@njit(inline="always")
def _next_bound(table, j, x):  # pragma: no cover (jit)
    """The first index >= j whose key is >= x (table ascending; x at least the previous
    query's): galloping from j, then a binary search."""
    R = table.shape[0]
    if j < R and table[j] < x:  # gallop: the next key is usually close by
        step = 1
        while j + step < R and table[j + step] < x:
            j += step
            step *= 2
        j = _lower_bound(table, j + 1, min(j + step, R), x)  # table[j] < x: in (j, j + step]
    return j


@njit(inline="always")
def _merge(table, keys, pos, out):  # pragma: no cover (jit)
    """``out[pos[i]]`` = index of ``keys[i]`` in ``table`` where present, for ascending keys."""
    j = 0  # first table index whose key is >= the current query (queries ascending)
    for i in range(keys.shape[0]):
        j = _next_bound(table, j, keys[i])
        if j < table.shape[0] and table[j] == keys[i]:
            out[pos[i]] = j


ARGSPECS = {"find_keys": ["i8:1", "i8:1", "i8:1", "i8:2", "i8:1"],
            "search_sorted": ["i8:1", "i8:1", "i8:1", "i8:2", "i8:1"],
            "sort_values": ["i8:1", "i8:1", "i8:1"],
            "find_ordered": ["i8:1", "i8:1", "i8:1", "i8:1", "i8:2"]}


def native_kernel(name: str):
    """``(cfunc, argspec)`` for ``native.kernel`` (``find_keys``, ``find_ordered``,
    ``search_sorted`` or ``sort_values``, their arguments in order)."""
    if name == "find_keys":
        def entry(blk):  # pragma: no cover (jit)
            find_keys(arg1(blk, 0, np.int64), arg1(blk, 1, np.int64), arg1(blk, 2, np.int64),
                      arg2(blk, 3, np.int64), arg1(blk, 4, np.int64))
    elif name == "find_ordered":
        def entry(blk):  # pragma: no cover (jit)
            find_ordered(arg1(blk, 0, np.int64), arg1(blk, 1, np.int64), arg1(blk, 2, np.int64),
                         arg1(blk, 3, np.int64), arg2(blk, 4, np.int64))
    elif name == "search_sorted":
        def entry(blk):  # pragma: no cover (jit)
            search_sorted(arg1(blk, 0, np.int64), arg1(blk, 1, np.int64),
                          arg1(blk, 2, np.int64), arg2(blk, 3, np.int64), arg1(blk, 4, np.int64))
    elif name == "sort_values":
        def entry(blk):  # pragma: no cover (jit)
            sort_values(arg1(blk, 0, np.int64), arg1(blk, 1, np.int64), arg1(blk, 2, np.int64))
    else:
        raise ValueError(f"no kernel {name!r} in fastkeys")
    return block_cfunc(entry), ARGSPECS[name]
