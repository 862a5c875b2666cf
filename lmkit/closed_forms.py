"""Closed forms per feature kind: one group's counts -> its weights, named by the registry.

Each function has the registry's signature ``(group, F, keys, q, d) -> S``: ``F`` CSR (R, V)
int64 counts of one group (rows keyed by ``keys`` (R,) int64, None: rows are token ids), ``q``
(V,) float64 the model's unigram, ``d`` in (0, 1) the absolute discount; ``S`` CSR (R, V)
float64 on the pattern of ``F``. ``kinds.py`` names them by dotted path (``"lmkit.closed_forms:
window"``) and imports this module only when a model is solved, so the query side (loading and
scoring a model) never imports a solver.
"""
from __future__ import annotations

from .explicit import solve_group
from .skipgram import solve_skip


def window(group, F, keys, q, d):
    """``Window(k)``: absolute discounting toward ``q`` (``explicit.solve_group``)."""
    return solve_group(F, q, d)


def skip(group, F, keys, q, d):
    """``Skip(r, s, a)`` and ``LinePosition(a, ...)``: the log-ratio to the part made of the
    ``a`` exact tokens (``skipgram.solve_skip``)."""
    return solve_skip(F, keys, group.a, q, d)


def cluster(group, F, keys, q, d):
    """``ClusterHistory(m, w)``: the log-ratio to its ``w`` exact-token part."""
    return solve_skip(F, keys, group.w, q, d)
