r"""Exact sampling from an interpolated modified Kneser-Ney model, without forming the V-vector.

Input: ``SparseParams`` of a pure n-gram model (``Suffix(1..M)`` groups, lambdas 1; see
``ngram/mkn.py``). Output: token ids drawn from ``P_N(w | h)`` exactly (temperature 1, no top-k/p).

The interpolated form is a mixture at every order::

    P_n(w | h) = r_n(h, w) + gamma_n(h) P_{n-1}(w | h'),   sum_w r_n(h, w) = 1 - gamma_n(h),
    P_1(w)     = r_1(w) + gamma_0 / V,

so a draw starts at the longest seen history h and, with probability 1 - gamma(h), takes a
successor w of h with probability proportional to ``r(h, w)``; otherwise it backs off to h' and
repeats; at the bottom it draws from ``r_1`` or, with probability gamma_0, uniformly. Histories
that were never seen contribute nothing (gamma = 1), which is why the walk starts at the longest
seen one. From the stored parameters: ``r = P (1 - exp(-S))`` on the pattern of ``S``, since
``S = log(P / (gamma P_lower))``; ``gamma`` comes from ``backoff_tables``; ``gamma_0 / V = q[BOS]``
(BOS is never a target, so only the uniform part gives it mass). BOS is padding, never a target:
a draw that lands on it is redone (rejection), which is the exact renormalised distribution that
``generate`` samples from.

Each step advances ``batch`` sequences at once: one chained row lookup per order, then a
binary search inside each sequence's row of per-row cumulative sums (exact to float64 round-off).
"""
from __future__ import annotations

import numpy as np

from ..config import SampleConfig
from ..errors import InputError, OptionError
from ..features import Suffix
from .tables import backoff_tables
from ..params import SparseParams
from ..sparse import lookup_rows


def is_pure_ngram(params) -> bool:
    """True for parameters this sampler draws from exactly (pure suffix groups, lambdas 1)."""
    return (isinstance(params, SparseParams) and len(params.groups) > 0
            and all(isinstance(g, Suffix) for g in params.groups)
            and bool(np.all(params.lambdas == 1.0)))


class NgramSampler:
    """Batched exact sampler. ``bos_id``: None = inferred (the one id never a target)."""

    def __init__(self, params: SparseParams, bos_id: int | None = None, eos_id: int | None = None):
        if not is_pure_ngram(params):
            raise OptionError("exact n-gram sampling needs a pure n-gram model (order N, no "
                              "context, lambdas 1); sample others with `lmkit generate`")
        self.params = params
        self.V = params.vocab_size
        self.M = len(params.groups)
        logps, loggammas = backoff_tables(params)
        q = np.asarray(params.q)
        self.bos = int(np.argmin(q)) if bos_id is None else int(bos_id)
        self.eos = eos_id
        u = float(q[self.bos])  # gamma_0 / V: the uniform share of every token
        r1 = np.maximum(q - u, 0.0)
        self.stay0 = float(r1.sum())  # 1 - gamma_0
        self.cum0 = _normalised_cumsum(r1)
        self.levels = []
        for m in range(self.M):
            S = params.S[m].tocsr()
            r = np.exp(logps[m]) * -np.expm1(-S.data)
            er = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
            indptr = S.indptr.astype(np.int64)
            self.levels.append({
                "keys": params.keys[m], "indptr": indptr, "indices": S.indices,
                "stay": -np.expm1(loggammas[m]),  # 1 - gamma(h) per row
                "cum": _row_cumsum(r, er, indptr)})

    def rows(self, hist: np.ndarray, length: np.ndarray) -> list:
        """Row per order for each context: ``hist`` (B, M) last M tokens (BOS-padded, newest
        last), ``length`` (B,) tokens generated so far (a history holds at most one BOS)."""
        out, parent = [], None
        for m, lev in enumerate(self.levels):
            tok = hist[:, self.M - 1 - m].astype(np.int64)
            key = tok if parent is None else np.where(parent >= 0, parent * self.V + tok, -1)
            if m > 0:
                key = np.where(length >= m, key, -1)  # m + 1 tokens back would pass the BOS
            parent = lookup_rows(lev["keys"], key)
            out.append(parent)
        return out

    def draw(self, rows: list, rng: np.random.Generator) -> np.ndarray:
        """One token per context (rows from ``rows``), exactly from P_N; never BOS."""
        n = len(rows[0])
        out = np.full(n, -1, dtype=np.int64)
        todo = np.arange(n)
        while len(todo):
            out[todo] = self._draw_once([r[todo] for r in rows], rng)
            todo = todo[out[todo] == self.bos]  # rejection: BOS is never a target
        return out

    def _draw_once(self, rows: list, rng) -> np.ndarray:
        n = len(rows[0])
        out = np.full(n, -1, dtype=np.int64)
        u = rng.random(n)
        open_ = np.ones(n, dtype=bool)
        for m in range(self.M - 1, -1, -1):
            lev, r = self.levels[m], rows[m]
            at = np.flatnonzero(open_ & (r >= 0))
            if not len(at):
                continue
            stay = lev["stay"][r[at]]
            take = u[at] < stay
            t = at[take]
            if len(t):  # u / stay is again uniform on [0, 1): the position inside the row
                rr = r[t]
                idx = _search_rows(lev["cum"], lev["indptr"][rr], lev["indptr"][rr + 1],
                                   u[t] / stay[take])
                out[t] = lev["indices"][idx]
                open_[t] = False
            back = at[~take]  # backed off: (u - stay) / (1 - stay) is uniform again
            u[back] = (u[back] - stay[~take]) / (1.0 - stay[~take])
        rest = np.flatnonzero(open_)
        if len(rest):
            v = u[rest]
            from_r = v < self.stay0
            i = rest[from_r]
            out[i] = np.minimum(np.searchsorted(self.cum0, v[from_r] / self.stay0, side="right"),
                                self.V - 1)
            j = rest[~from_r]
            out[j] = rng.integers(0, self.V, size=len(j))
        return out

    def sample_sequences(self, n_tokens: int, *, batch: int = 4096, max_len: int = 256,
                         seed: int = SampleConfig.seed):
        """Yield lists of sampled sequences (ids, EOS dropped) until ``n_tokens`` targets (EOS
        included) were drawn; a sequence reaching ``max_len`` tokens is cut there. Same contract
        as ``synthetic.sample_batch``; deterministic for a given ``seed``."""
        eos = self._eos()
        rng = np.random.default_rng(seed)
        M = self.M
        hist = np.full((batch, M), self.bos, dtype=np.int64)
        cur = np.zeros((batch, max_len), dtype=np.int32)
        lens = np.zeros(batch, dtype=np.int64)
        ar = np.arange(batch)
        done = 0
        while done < n_tokens:
            nxt = self.draw(self.rows(hist, lens), rng)
            keep = nxt != eos
            cur[ar[keep], lens[keep]] = nxt[keep]
            lens[keep] += 1
            done += batch
            finished = np.flatnonzero(~keep | (lens >= max_len))
            if len(finished):
                yield [cur[i, :lens[i]].tolist() for i in finished]
                lens[finished] = 0
            hist[:, :-1] = hist[:, 1:]
            hist[:, -1] = nxt
            hist[finished] = self.bos

    def continue_ids(self, prompt_ids, *, max_tokens: int,
                     num_samples: int = SampleConfig.num_samples, seed: int = SampleConfig.seed,
                     exclude=()) -> list:
        """``num_samples`` continuations (prompt ids + new ids, EOS dropped) of one prompt, all
        sampled together; each stops at EOS or after ``max_tokens`` new tokens. The exact path
        for ``generate`` at temperature 1, top_k 0, top_p 1. ``exclude``: token ids never drawn
        (BOS, UNK): a draw of one is redrawn, which samples exactly the distribution
        renormalised without them (rejection sampling), as ``generate``'s masking does."""
        exclude = np.asarray(list(exclude), dtype=np.int64)
        eos = self._eos()
        rng = np.random.default_rng(seed)
        prompt = [int(x) for x in prompt_ids]
        ctx = ([self.bos] * self.M + prompt)[-self.M:]
        hist = np.tile(np.asarray(ctx, dtype=np.int64), (num_samples, 1))
        lens = np.full(num_samples, len(prompt), dtype=np.int64)
        outs = [list(prompt) for _ in range(num_samples)]
        alive = np.arange(num_samples)
        for _ in range(max_tokens):
            if not len(alive):
                break
            nxt = self.draw(self.rows(hist[alive], lens[alive]), rng)
            bad = np.flatnonzero(np.isin(nxt, exclude))
            while len(bad):  # rejection: their mass is tiny, a redraw or two suffices
                sub = alive[bad]
                nxt[bad] = self.draw(self.rows(hist[sub], lens[sub]), rng)
                bad = bad[np.isin(nxt[bad], exclude)]
            for i, t in zip(alive.tolist(), nxt.tolist()):
                if t != eos:
                    outs[i].append(t)
            hist[alive, :-1] = hist[alive, 1:]
            hist[alive, -1] = nxt
            lens[alive] += 1
            alive = alive[nxt != eos]
        return outs

    def _eos(self) -> int:
        if self.eos is None:
            raise InputError("pass eos_id= to NgramSampler to sample whole sequences")
        return int(self.eos)


def _normalised_cumsum(w: np.ndarray) -> np.ndarray:
    c = np.cumsum(w)
    return c / c[-1] if len(c) and c[-1] > 0 else c


def _row_cumsum(r: np.ndarray, er: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Cumulative sums of ``r`` restarted at every CSR row and scaled to end at 1 (exactly).

    One global cumulative sum in extended precision (``longdouble``), minus each row's start:
    the round-off of a sum over a million rows stays far below float64's resolution of a row.
    """
    c = np.concatenate([[0.0], np.cumsum(r, dtype=np.longdouble)])
    before, tot = c[indptr[:-1]], c[indptr[1:]] - c[indptr[:-1]]
    out = ((c[1:] - before[er]) / np.where(tot > 0, tot, 1.0)[er]).astype(np.float64)
    out[indptr[1:][indptr[1:] > indptr[:-1]] - 1] = 1.0
    return out


def _search_rows(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """First index i in [lo, hi) with cum[i] > u, per query (batched binary search)."""
    lo, hi = lo.copy(), hi - 1  # cum[hi - 1] = 1 > u always
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        right = active & (cum[mid] <= u)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
