r"""Exact causal adaptation of an n-gram model: interpolated modified Kneser-Ney that keeps
counting while it reads.

Input: token-id sequences (lists of int, no BOS/EOS) of the training text, then of the text to
score, one line at a time; the order N, vocabulary size, BOS/EOS ids and per-order discounts
``(D1, D2, D3+)`` (frozen: those of the static fit). Output: natural-log probabilities of each
line's targets (tokens, then EOS), each from the MKN model of ``ngram.py`` re-solved on the
training text plus every line scored before it.

What is re-solved after each line (and what is frozen)
------------------------------------------------------
Frozen: the order and the discounts of each order. Updated exactly, for the touched entries
only: raw counts at the top order and for histories starting with BOS, continuation counts
``N1+(. h w)`` below (a new distinct left extension adds one), and per history ``h`` its total
``a(h .)`` and the count-of-counts ``N1(h .), N2(h .), N3+(h .)`` that give ``gamma(h)``.
Probabilities are evaluated from these on demand, ``P_n(w|h) = (a - D(a)) / a(h .) + gamma(h)
P_{n-1}(w|h')`` down to the unigram interpolated with uniform, which is the closed form of
``ngram.solve_ngram`` (no pruning) on the same counts: tests/test_adapt.py checks equality to
1e-9 against re-solving on train + the scored lines with the same discounts.

This is the model's own adaptation (counts enter the n-gram model itself); the cache of
``cache.py`` is the other, model-independent mechanism. Dictionaries of tuples in Python: fine
for tests and small corpora (about 1 s per 100k tokens per order), not a replacement for the
vectorised static scorer.
"""
from __future__ import annotations

import math

from .errors import InputError


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
