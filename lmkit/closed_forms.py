"""Closed forms per feature kind: one group's counts -> its weights, named by the registry.

Each function has the registry's signature ``(group, F, keys, q, d) -> S``: ``F`` CSR (R, V)
int64 counts of one group (rows keyed by ``keys`` (R,) int64, None: rows are token ids), ``q``
(V,) float64 the model's unigram, ``d`` in (0, 1) the absolute discount; ``S`` CSR (R, V)
float64 on the pattern of ``F``. A closed form whose rows need a statistic of the whole group
(the skip-like kinds: the adjacent part's counts) takes it as ``marginal=`` when the group is
solved a block of rows at a time, and names the function that makes it from a block's rows,
``(group, F, keys, V) -> summable`` (``skipgram.Marginal``; None when not needed), as the
kind's ``marginal``. ``kinds.py`` names them by dotted path (``"lmkit.closed_forms:
window"``) and imports this module only when a model is solved, so the query side (loading and
scoring a model) never imports a solver.
"""
from __future__ import annotations

from .explicit import solve_group
from .skipgram import Marginal, solve_skip


def window(group, F, keys, q, d):
    """``Window(k)``: absolute discounting toward ``q`` (``explicit.solve_group``)."""
    return solve_group(F, q, d)


def skip(group, F, keys, q, d, marginal=None):
    """``Skip(r, s, a)`` and ``LinePosition(a, ...)``: the log-ratio to the part made of the
    ``a`` exact tokens (``skipgram.solve_skip``)."""
    return solve_skip(F, keys, group.a, q, d, marginal=marginal)


def skip_marginal(group, F, keys, V):
    """The adjacent-part counts of ``skip``'s rows (None when ``a`` = 0: ``q`` is the base)."""
    return Marginal.of(F, keys, group.a, V) if group.a else None


def cluster(group, F, keys, q, d, marginal=None):
    """``ClusterHistory(m, w)``: the log-ratio to its ``w`` exact-token part."""
    return solve_skip(F, keys, group.w, q, d, marginal=marginal)


def cluster_marginal(group, F, keys, V):
    """The exact-token part's counts of ``cluster``'s rows (None when ``w`` = 0)."""
    return Marginal.of(F, keys, group.w, V) if group.w else None
