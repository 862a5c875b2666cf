r"""Exact causal adaptation of an n-gram model: interpolated modified Kneser-Ney that keeps
counting while it reads.

Input: token-id sequences (lists of int, no BOS/EOS) of the training text, then of the text to
score, one line at a time; the order N, vocabulary size, BOS/EOS ids and per-order discounts
``(D1, D2, D3+)`` (frozen: those of the static fit). Output: natural-log probabilities of each
line's targets (tokens, then EOS), each from the MKN model of ``ngram/mkn.py`` re-solved on the
training text plus every line scored before it.

What is re-solved after each line (and what is frozen)
------------------------------------------------------
Frozen: the order and the discounts of each order. Updated exactly, for the touched entries
only: raw counts at the top order and for histories starting with BOS, continuation counts
``N1+(. h w)`` below (a new distinct left extension adds one), and per history ``h`` its total
``a(h .)`` and the count-of-counts ``N1(h .), N2(h .), N3+(h .)`` that give ``gamma(h)``.
Probabilities are evaluated from these on demand, ``P_n(w|h) = (a - D(a)) / a(h .) + gamma(h)
P_{n-1}(w|h')`` down to the unigram interpolated with uniform, which is the closed form of
``ngram.mkn.solve_ngram`` (no pruning) on the same counts: tests/test_adapt.py and
tests/test_adapt_exact.py check equality to 1e-9 against re-solving on train + the scored lines
with the same discounts.

Two implementations of the same model: ``AdaptiveNgram`` (dictionaries of tuples in Python,
about 1 s per 100k tokens per order: the readable reference) and ``adaptive_log_proba`` (the
whole scored text in one pass from ``NgramTables`` of the training counts, what ``lmkit eval
--adapt --adapt-mode counts`` runs; tested equal to the reference and to re-solving). That pass
never lets a line see itself or a later line: every statistic at a target is a count of
*events* (one per n-gram occurrence that changes an adjusted count) at buffer positions before
the start of the target's line, added to the training table's value:

    a(h w)  = a_train(h w) + #events of (h, w) before the line
    a(h .)  = a_train(h .) + #events of h before the line
    Nk(h .) = Nk_train(h .) + sum of the events' changes to Nk (an event taking a(h w) from
              j to j + 1 moves one entry from N_j to N_{j+1}, capped at 3+)

An event at order n is every occurrence of a raw-counted (h, w) (top order, or h starts with
BOS), and for the other entries every occurrence of an order-(n+1) n-gram (v h w) that neither
the training text nor any earlier position held (a new left extension). With numba the
events are added in one compiled loop in reading order (``adapt_fast.adapt_pass``); without,
sorting them by (entry, position) turns each statistic into one ``searchsorted`` per target
(``_numpy_pass``). Same numbers, tested.

This is the model's own adaptation (counts enter the n-gram model itself); the cache of
``cache.py`` is the other, model-independent mechanism (``adapt.py`` can stack it on top).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .counts import Counts
from .errors import InputError
from .features import Suffix, check_suffix_chain, group_rows, pad_sequences
from .ngram.tables import entry_index


class AdaptiveNgram:
    """MKN of order ``order`` over token ids, updated exactly line by line (see the module).

    ``discounts``: one ``(D1, D2, D3+)`` for every order, or a list of ``order`` of them
    (index 0 = unigrams), e.g. ``model.params.info["discounts"]`` of a static n-gram model.
    """

    def __init__(self, order: int, vocab_size: int, bos_id: int, eos_id: int, discounts):
        if not isinstance(order, int) or order < 2:
            raise InputError(f"order must be an integer >= 2, got {order!r}")
        d = [tuple(float(x) for x in discounts)] * order if len(discounts) == 3 and \
            all(isinstance(x, (int, float)) for x in discounts) else [tuple(map(float, x)) for x in discounts]
        if len(d) != order or not all(len(x) == 3 and all(0 < dk <= k for k, dk in
                                                          zip((1, 2, 3), x)) for x in d):
            raise InputError(f"discounts: need {order} triples (D1, D2, D3+) with 0 < Dk <= k, got "
                             f"{discounts!r}")
        self.order, self.vocab_size, self.bos_id, self.eos_id = order, vocab_size, bos_id, eos_id
        self.discounts = d
        # per order n = 1..N (index n-1): raw counts {(h, w): count}, and the adjusted counts
        # {h: {w: a}} with per-history [total, N1, N2, N3+]
        self.raw_ = [dict() for _ in range(order)]
        self.adjusted_ = [dict() for _ in range(order)]
        self.rows_ = [dict() for _ in range(order)]

    # ---- counting ----------------------------------------------------------------------------
    def _bump(self, n: int, h: tuple, w: int) -> None:
        """a(h w) += 1 at order n, keeping the row's total and count-of-counts."""
        row = self.adjusted_[n - 1].setdefault(h, {})
        old = row.get(w, 0)
        row[w] = old + 1
        st = self.rows_[n - 1].setdefault(h, [0, 0, 0, 0])
        st[0] += 1
        if old in (1, 2):
            st[old] -= 1
        st[min(old + 1, 3)] += 1 if old < 3 else 0

    def _raw_type(self, n: int, h: tuple) -> bool:
        """Order-n entries with history h hold raw counts (top order, or h starts with BOS)."""
        return n == self.order or (len(h) > 0 and h[0] == self.bos_id)

    def add(self, seqs) -> "AdaptiveNgram":
        """Count the lines ``seqs`` (lists of token ids, no BOS/EOS) into the model."""
        for s in seqs:
            self.add_line(s)
        return self

    def add_line(self, ids) -> None:
        """Count one line: its n-grams of every order, histories reaching at most one BOS back."""
        buf = (self.bos_id, *(int(t) for t in ids), self.eos_id)
        for i in range(1, len(buf)):
            w = buf[i]
            for n in range(1, min(self.order, i + 1) + 1):
                h = buf[i - n + 1:i]
                raw = self.raw_[n - 1]
                key = (h, w)
                first = key not in raw
                raw[key] = raw.get(key, 0) + 1
                if self._raw_type(n, h):
                    self._bump(n, h, w)
                if first and n >= 2:  # a new left extension of (h[1:], w) one order down
                    if not self._raw_type(n - 1, h[1:]):
                        self._bump(n - 1, h[1:], w)

    # ---- probabilities -----------------------------------------------------------------------
    def _level(self, n: int, h: tuple, w: int):
        """``((a - D(a)) / a(h .), gamma(h))`` at order n, or None when h was never a history."""
        st = self.rows_[n - 1].get(h)
        if st is None:
            return None
        d = self.discounts[n - 1]
        a = self.adjusted_[n - 1][h].get(w, 0)
        total = st[0]
        disc = 0.0 if a == 0 else d[0] if a == 1 else d[1] if a == 2 else d[2]
        gamma = (d[0] * st[1] + d[1] * st[2] + d[2] * st[3]) / total
        return (a - disc) / total, gamma

    def prob(self, history: tuple, w: int) -> float:
        """P(w | history) with ``history`` the tokens before w (BOS first at a line start)."""
        lv = self._level(1, (), w)
        p = 1.0 / self.vocab_size if lv is None else lv[0] + lv[1] / self.vocab_size
        for n in range(2, min(self.order, len(history) + 1) + 1):
            lv = self._level(n, tuple(history[len(history) - n + 1:]), w)
            if lv is None:
                break  # a longer history is unseen too (its suffix is a history of it)
            p = lv[0] + lv[1] * p
        return p

    def log_proba_line(self, ids) -> list:
        """Natural-log probabilities of the targets of one line (tokens, then EOS), unchanged
        by the line itself: call ``add_line`` after."""
        buf = (self.bos_id, *(int(t) for t in ids), self.eos_id)
        reach = self.order - 1
        return [math.log(self.prob(buf[max(0, i - reach):i], buf[i])) for i in range(1, len(buf))]

    def score_adaptive(self, seqs) -> list:
        """Score each line, then count it: list of per-line log-probability lists."""
        out = []
        for s in seqs:
            out.append(self.log_proba_line(s))
            self.add_line(s)
        return out


# ---- the vectorised pass -------------------------------------------------------------------------
@dataclass(frozen=True)
class NgramTables:
    """The training side of ``adaptive_log_proba``: MKN of order M + 1 before any scored text.

    Per history length m = 0..M (order m + 1): ``A[m]`` CSR (R_m, V) int64 adjusted counts
    (m = 0: one row), ``rows[m]`` int64 (4, R_m) = a(h .), N1, N2, N3+ of each row, ``raw[m]``
    CSR (R_m, V) int64 raw counts (m >= 1; None at m = 0); ``keys[m-1]`` the sorted chained
    row keys of ``Suffix(m)`` (features.py); ``discounts[m]`` = (D1, D2, D3+) of order m + 1."""

    vocab_size: int
    bos_id: int
    eos_id: int
    keys: list
    A: list
    rows: list
    raw: list
    discounts: list

    @property
    def order(self) -> int:
        return len(self.A)

    @property
    def rows_by_row(self) -> list:
        """``rows`` as (R_m, 4) C-contiguous arrays (one row's four numbers together)."""
        if not hasattr(self, "_by_row"):
            object.__setattr__(self, "_by_row", [np.ascontiguousarray(r.T) for r in self.rows])
        return self._by_row


def row_stats(A: sp.csr_matrix) -> np.ndarray:
    """a(h .), N1, N2, N3+ of every row of an adjusted-count CSR: int64 (4, R).
    Example: one row [1, 2, 5] -> [[8], [1], [1], [1]]."""
    r = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    v = A.data
    out = np.zeros((4, A.shape[0]), dtype=np.int64)
    out[0] = np.bincount(r, weights=v, minlength=A.shape[0]).astype(np.int64)
    for j in (1, 2, 3):
        out[j] = np.bincount(r[(v == j) if j < 3 else (v >= 3)], minlength=A.shape[0])
    return out


def adjusted_counts(counts: Counts, m: int, top: int, bos_id: int) -> sp.csr_matrix:
    """MKN adjusted counts of the order-(m+1) n-grams, CSR on the pattern of the raw counts of
    ``Suffix(m)`` (m = 0: a (1, V) matrix); ``top`` = M, the longest history. Raw counts for
    m = top and for histories starting with BOS; else the number of distinct left extensions
    (the entries of ``Suffix(m+1)`` whose history minus its oldest token is row h), as
    ``ngram.mkn.adjusted_counts`` computes them (the query side imports no solver; tested
    equal)."""
    V = counts.vocab_size
    if m == top:
        A = counts.F[m - 1].tocsr().astype(np.int64)
        A.sort_indices()
        return A
    up, up_keys = counts.F[m].tocsr(), counts.keys[m]
    if m == 0:
        return sp.csr_matrix(np.bincount(up.indices, minlength=V).astype(np.int64)[None, :])
    F = counts.F[m - 1].tocsr()
    F.sort_indices()
    parent = up_keys[np.repeat(np.arange(up.shape[0]), np.diff(up.indptr))] // V
    a = np.bincount(entry_index(F, parent, up.indices), minlength=F.nnz).astype(np.int64)
    bos_entries = np.repeat((counts.keys[m - 1] % V) == bos_id, np.diff(F.indptr))
    a[bos_entries] = F.data[bos_entries]  # histories starting with BOS: raw counts
    return sp.csr_matrix((a, F.indices.copy(), F.indptr.copy()), shape=F.shape)


def ngram_tables(counts: Counts, discounts, bos_id: int, eos_id: int) -> NgramTables:
    """``NgramTables`` of ``counts`` (groups ``Suffix(1..M)`` only, unpruned) and the frozen
    ``discounts`` (M + 1 triples, index 0 = unigrams, e.g. ``params.info["discounts"]``)."""
    M = check_suffix_chain(counts.groups)
    if M != len(counts.groups) or M < 1:
        raise InputError(f"exact adaptation needs the counts of a pure n-gram model (suffix1.."
                         f"suffixM), got {[g.name for g in counts.groups]}")
    d = [tuple(float(x) for x in t) for t in discounts]
    if len(d) != M + 1 or not all(len(t) == 3 and all(0 < x <= k for k, x in zip((1, 2, 3), t))
                                  for t in d):
        raise InputError(f"discounts: need {M + 1} triples (D1, D2, D3+) with 0 < Dk <= k, got "
                         f"{discounts!r}")
    A = [adjusted_counts(counts, m, M, bos_id) for m in range(M + 1)]
    raw = [None] + [counts.F[m - 1].tocsr().astype(np.int64) for m in range(1, M + 1)]
    for x in A + raw[1:]:
        x.sort_indices()
    return NgramTables(counts.vocab_size, int(bos_id), int(eos_id), list(counts.keys), A,
                       [row_stats(a) for a in A], raw, d)


def _lookup(M: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, lin=None) -> np.ndarray:
    """M[rows, cols] (0 where absent or rows < 0): int64 (n,)."""
    if M.nnz == 0:
        return np.zeros(len(rows), dtype=np.int64)
    idx = entry_index(M, rows, cols, lin, missing_ok=True)
    return np.where(idx >= 0, M.data[np.maximum(idx, 0)], 0).astype(np.int64)


def _rank_in_group(ids: np.ndarray) -> np.ndarray:
    """How many earlier positions carry the same id: int64 (n,). Example: [4, 2, 4, 4] ->
    [0, 0, 1, 2]."""
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    start = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(start, np.arange(len(s)), 0)) if len(s) else s
    out = np.empty(len(ids), dtype=np.int64)
    out[order] = np.arange(len(s)) - first
    return out


def _before(group: np.ndarray, pos: np.ndarray, values: list, q_group: np.ndarray,
            q_pos: np.ndarray, span: int) -> list:
    """For each query (group g, position s): the number of events of group g at positions < s,
    then the sum of each of ``values`` over them: list of int64 (n_queries,)."""
    key = group * span + pos
    order = np.argsort(key, kind="stable")
    sk = key[order]
    lo = np.searchsorted(sk, q_group * span)
    hi = np.searchsorted(sk, q_group * span + q_pos)
    out = [hi - lo]
    for v in values:
        c = np.r_[0, np.cumsum(v[order])]
        out.append(c[hi] - c[lo])
    return out


def _dense_ids(x: np.ndarray) -> np.ndarray:
    """Equal values -> equal ids in [0, n): int64 (n,)."""
    return np.unique(x, return_inverse=True)[1].astype(np.int64).ravel()


def _discount(a: np.ndarray, d) -> np.ndarray:
    return np.where(a == 0, 0.0, np.where(a == 1, d[0], np.where(a == 2, d[1], d[2])))


def _tuple_ids(buf: np.ndarray, pos: np.ndarray, starts: np.ndarray, M: int, V: int) -> tuple:
    """Exact ids of the scored text's n-grams, shared by both passes.

    Returns ``(pid, hid, n_pid, n_hid)``: per history length m = 0..M, ``pid[m]`` int64 (T,) =
    id of (history of length m, target), ``hid[m]`` = id of the history alone (-1 where the
    line has fewer than m tokens before the target, BOS included), and the number of ids of
    each. Equal ids <=> equal token tuples. One ``np.unique`` per length: the tuple of length L
    ending at buffer index j is (tuple of length L-1 ending at j-1, buf[j]), and the history
    of length m of the target at j is the tuple of length m ending at j-1."""
    n_buf = len(buf)
    # index of the BOS of each buffer position's line (positions that are no line's BOS or
    # token get n_buf: no tuple of theirs is valid)
    line_bos = np.full(n_buf, n_buf, dtype=np.int64)
    line_bos[pos] = starts - 1
    line_bos[starts - 1] = starts - 1
    j = np.arange(n_buf, dtype=np.int64)
    g = [None, buf.astype(np.int64)]  # g[L]: id of the tuple of length L ending at j, or -1
    g[1] = np.where(line_bos <= j, g[1], -1)
    sizes = [1, V]
    for L in range(2, M + 2):
        ok = np.flatnonzero(j - L + 1 >= line_bos)
        out = np.full(n_buf, -1, dtype=np.int64)
        ids = np.unique(g[L - 1][ok - 1] * (V + 1) + buf[ok], return_inverse=True)[1]
        out[ok] = ids.ravel()
        g.append(out)
        sizes.append(int(ids.max()) + 1 if len(ids) else 0)
    T = len(pos)
    pid = [g[m + 1][pos] for m in range(M + 1)]
    hid = [np.zeros(T, dtype=np.int64)] + [g[m][pos - 1] for m in range(1, M + 1)]
    return pid, hid, sizes[1:], sizes[:-1]


def _train_values(t: NgramTables, rows: list, w: np.ndarray) -> tuple[list, list]:
    """Per history length m: the training text's adjusted count a(h w) and raw count c(h w) of
    every target (0 where absent; raw None at m = 0). ``A[m]`` and ``raw[m]`` share one
    pattern (that of the raw counts), so one search finds both."""
    a_train, raw_train = [], [None]
    for m in range(t.order):
        ok = np.flatnonzero(rows[m] >= 0)
        a = np.zeros(len(w), dtype=np.int64)
        c = np.zeros(len(w), dtype=np.int64)
        if t.A[m].nnz and len(ok):
            idx = entry_index(t.A[m], rows[m][ok], w[ok], missing_ok=True)
            hit = idx >= 0
            a[ok[hit]] = t.A[m].data[idx[hit]]
            if m:
                c[ok[hit]] = t.raw[m].data[idx[hit]]
        a_train.append(a)
        if m:
            raw_train.append(c)
    return a_train, raw_train


def adaptive_log_proba(tables: NgramTables, seqs, compiled: bool | None = None) -> np.ndarray:
    """Natural-log probability of every target of ``seqs`` (lists of ids, no BOS/EOS; each
    line's tokens then its EOS, in reading order), each under the MKN model of ``tables``
    re-solved on the training text plus every line before its own: float64 (T,). Equal to
    ``AdaptiveNgram.score_adaptive`` and to re-solving (tests/test_adapt_exact.py).
    ``compiled``: use the numba pass (``adapt_fast.py``; default: when numba is installed) or
    the numpy one; both give the same numbers (tested)."""
    t = tables
    V, M = t.vocab_size, t.order - 1
    if not len(seqs):
        return np.zeros(0)
    buf, pos, starts = pad_sequences(seqs, M, t.bos_id, t.eos_id)
    if len(buf) and (buf.min() < 0 or buf.max() >= V):
        raise InputError(f"token ids must lie in [0, {V}); the text was encoded with another "
                         "tokenizer")
    w = buf[pos].astype(np.int64)
    reach = pos - starts + 1  # tokens available as history, the BOS included
    train_rows = [np.zeros(len(pos), dtype=np.int64)] + group_rows(
        [Suffix(m) for m in range(1, M + 1)], t.keys, buf, pos, starts, V)
    pid, hid, n_pid, n_hid = _tuple_ids(buf, pos, starts, M, V)
    fast = _fast() if compiled is None or compiled else None
    if compiled and fast is None:
        raise InputError("compiled=True needs numba (pip install lmkit[fast])")
    if fast is None:
        a_train, raw_train = _train_values(t, train_rows, w)
        base = [np.where(r >= 0, st[:, np.maximum(r, 0)], 0) for r, st in zip(train_rows, t.rows)]
        return np.log(_numpy_pass(len(buf) + 1, pos, starts, reach, pid, hid, a_train,
                                  raw_train, base, t.discounts, V))
    T = len(pos)
    a_train = np.zeros((T, M + 1), dtype=np.int64)
    raw_train = np.zeros((T, M + 1), dtype=np.int64)
    base = np.zeros((T, M + 1, 4), dtype=np.int64)
    for m in range(M + 1):  # the raw counts share the adjusted counts' pattern (m >= 1)
        A, R = t.A[m], (t.raw[m] if m else t.A[m])
        a, c, b = np.zeros(T, np.int64), np.zeros(T, np.int64), np.zeros((T, 4), np.int64)
        fast.train_values(A.indptr, A.indices, A.data, R.data, t.rows_by_row[m],
                          train_rows[m], w, a, c, b)
        a_train[:, m], raw_train[:, m], base[:, m] = a, c, b
    line_end = np.r_[np.flatnonzero(np.diff(starts)) + 1, T]
    p = fast.adapt_pass(line_end, reach, np.stack(pid, axis=1), np.stack(hid, axis=1),
                        np.asarray(n_pid, np.int64), np.asarray(n_hid, np.int64), a_train,
                        raw_train, base, np.asarray(t.discounts, np.float64), V)
    return np.log(p)


def _fast():
    """The ``adapt_fast`` module when numba is installed, else None (numpy pass)."""
    try:
        from . import adapt_fast
    except ImportError:  # numba is optional (pip install lmkit[fast])
        return None
    return adapt_fast


def _numpy_pass(span, pos, starts, reach, pid, hid, a_train, raw_train, base, discounts, V):
    """Adaptive probabilities of the targets (float64 (T,)) by sorting the events (module)."""
    M = len(pid) - 1
    # novel[m]: the order-(m+1) n-gram at this position was never seen before it
    novel = [None] + [(reach >= m) & (raw_train[m] == 0) & (_rank_in_group(pid[m]) == 0)
                      for m in range(1, M + 1)]
    p = np.zeros(len(pos))
    alive = np.ones(len(pos), bool)
    for m in range(M + 1):
        ok = reach >= m
        raw_type = (m == M) | ((m >= 1) & (reach == m))
        # events: every occurrence of a raw-counted entry, else a new left extension above
        ev = np.flatnonzero(ok & (raw_type | novel[m + 1]) if m < M else ok)
        k = a_train[m][ev] + _rank_in_group(pid[m][ev])  # a(h w) just before each event
        dn = [(k == 0).astype(np.int64) - (k == 1), (k == 1).astype(np.int64) - (k == 2),
              (k == 2).astype(np.int64)]
        q = np.flatnonzero(ok & alive)
        n_pair, = _before(pid[m][ev], pos[ev], [], pid[m][q], starts[q], span)
        n_row, n1, n2, n3 = _before(hid[m][ev], pos[ev], dn, hid[m][q], starts[q], span)
        b = base[m][:, q]
        a = a_train[m][q] + n_pair
        tot = b[0] + n_row
        d = discounts[m]
        seen = tot > 0
        q, a, tot = q[seen], a[seen], tot[seen].astype(np.float64)
        gamma = (d[0] * (b[1] + n1) + d[1] * (b[2] + n2) + d[2] * (b[3] + n3))[seen] / tot
        lower = np.full(len(q), 1.0 / V) if m == 0 else p[q]
        p[q] = (a - _discount(a, d)) / tot + gamma * lower
        alive = np.zeros(len(pos), bool)
        alive[q] = True
        if m == 0 and len(q) != len(pos):
            p[~alive] = 1.0 / V  # no training text at all: the uniform distribution
            alive[:] = True
    return p
