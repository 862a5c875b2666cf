"""Binary search of a sorted array, written once for every compiled loop that needs it.

``lower_bound`` is plain Python so that this module imports no numba; each compiled module
(``ngram.score``, ``adapt_fast``, ``fastkeys``) compiles it into its own loops
(``njit(inline="always")``). Example: ``lower_bound(np.array([1, 3, 3, 7]), 0, 4, 3)`` = 1.
"""
from __future__ import annotations


def lower_bound(a, lo, hi, x):  # pragma: no cover (jit)
    """The first index in ``[lo, hi)`` whose value in the sorted ``a`` is >= ``x`` (``hi`` if
    none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo
