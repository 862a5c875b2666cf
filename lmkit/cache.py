r"""Cache: the already-scored token stream -> causal n-gram statistics -> adaptive probabilities.

Input: a token stream (int64 (T,): every line's ids followed by its EOS, in reading order), the
line of each position, and the static model's natural-log probability of each target (T,).
Output: the adaptive log-probability of each target (T,), natural log.

The cache is a hierarchy of counts over the text *already scored* (never the current or a
later token), with the static model as its base::

    P_{-1}(w)    = P_static(w | line so far)
    P_k(w | h_k) = (max(n_k - d_k, 0) + (b_k + d_k u_k) P_{k-1}(w)) / (c_k + b_k)   if c_k > 0
                 = P_{k-1}(w)                                                        if c_k = 0

for orders k = 0..K, with ``h_k`` the k tokens before the target, ``c_k`` how often ``h_k``
occurred as a history before, ``n_k`` how often it was followed by w, ``u_k`` by how many
distinct tokens; ``d_k`` in [0, 1] and ``b_k`` > 0 are the cache weights (fitted on held-out
text, ``fit_cache``). Each level sums to 1 over w whenever the level below does (the discounted
mass ``d_k u_k`` plus ``b_k`` goes to the level below), so only P_static(target) is needed: the
cache costs O(T K) on top of static scoring and never builds a V-vector.

Histories may cross line ends (the EOS token is part of the stream): ``context_lines`` = how
many previous lines a history may reach into (0: histories stop at the line start, as the
static model's do; positions before it read as a "line start" marker). The statistics of every
position are exact integer counts computed in one vectorised pass (``cache_stats``): chained
history ids per order (``np.unique`` on (id of h_{k-1}, token k back)), then ranks within
groups in reading order. The weights do not change the statistics, so fitting them on held-out
text re-uses one pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .errors import InputError

# Chosen on the valid split of the default corpus with the default model, cache order 8 and
# histories reaching 1 line back (``lmkit eval --adapt --cache-fit --json`` prints them):
# valid 2.153 -> 1.899 bits/byte, test 2.110 -> 1.904.
DEFAULT_WEIGHTS = {
    "a": [0.0, 0.37935456637216985, 1.0, 0.9975628403887764, 0.9621104045002474,
          0.9753297455985687, 0.0, 0.0],
    "b": [2.000331275181938, 0.03725935732235706, 0.0030534385501117516, 0.008449535505664322,
          0.044262685467996034, 0.040032300620315646, 1.92370879103222, 2.1365409174995196],
    "d": [0.561580973897219, 0.20100300444460595, 0.7805894049798027, 0.8169076039492656,
          0.7422804104962915, 0.47354454362691867, 1.0, 1.0],
    "e": [0.07170442711707362, 6.271620601838376, 3.4079658541613456, 4.135959115506993,
          5.275760571094356, 4.301540094980014, 0.7941682409143607, 0.732931585903779],
}


@dataclass(frozen=True)
class CacheWeights:
    """Per order k = 0..K-1: the most weight ``a[k]`` in [0, 1] the level may take, its
    strength ``b[k]`` > 0 (weight a c / (c + b) after c sightings of the history) and its
    discount ``d[k]`` in [0, 1] (see the module)."""

    a: tuple
    b: tuple
    d: tuple
    e: tuple

    @property
    def order(self) -> int:
        return len(self.a)

    def to_json(self) -> dict:
        return {k: [float(x) for x in getattr(self, k)] for k in "abde"}

    @classmethod
    def from_json(cls, obj) -> "CacheWeights":
        try:
            a, b, d, e = ([float(x) for x in obj[k]] for k in "abde")
        except (KeyError, TypeError, ValueError):
            raise InputError("cache weights must be {\"a\": [...], \"b\": [...], \"d\": [...], "
                             "\"e\": [...]} (lists of numbers); refit them with cache_fit") from None
        ok = (len(a) == len(b) == len(d) == len(e) and a
              and all(0.0 <= x <= 1.0 for x in a + d)
              and all(math.isfinite(x) and x > 0 for x in b)
              and all(math.isfinite(x) and x >= 0 for x in e))
        if not ok:
            raise InputError(f"cache weights: need as many a, d in [0, 1], b > 0 and e >= 0, got "
                             f"a={a} b={b} d={d} e={e}; refit them with cache_fit")
        return cls(tuple(a), tuple(b), tuple(d), tuple(e))


def default_weights(order: int) -> "CacheWeights":
    """``DEFAULT_WEIGHTS`` (there are defaults for their order only)."""
    w = CacheWeights.from_json(DEFAULT_WEIGHTS)
    if order != w.order:
        raise InputError(f"the default cache weights are for order {w.order}, not {order}; "
                         "fit weights for it with cache_fit")
    return w


def stream_of(seqs, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The reading-order stream of ``seqs`` (lists of ids) with an EOS after each, and the line
    index of every position: int64 (T,), int64 (T,). Example: [[5, 6], [7]] -> [5, 6, E, 7, E],
    [0, 0, 0, 1, 1]."""
    lens = np.fromiter((len(s) + 1 for s in seqs), dtype=np.int64, count=len(seqs))
    out = np.full(int(lens.sum()), eos_id, dtype=np.int64)
    ends = np.cumsum(lens)
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(ends[-1] - len(seqs))
                       if len(seqs) else 0)
    keep = np.ones(len(out), bool)
    keep[ends - 1] = False
    out[keep] = flat
    return out, np.repeat(np.arange(len(seqs), dtype=np.int64), lens)


def _rank_in_group(ids: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions carry the same id: int64 (T,)."""
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    start = np.r_[True, s[1:] != s[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(s)), 0))
    out = np.empty(len(ids), dtype=np.int64)
    out[order] = np.arange(len(s)) - first
    return out


def _exclusive_sum_in_group(ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each position, the sum of ``x`` over earlier positions with the same id: int64 (T,)."""
    order = np.argsort(ids, kind="stable")
    s, xs = ids[order], x[order].astype(np.int64)
    c = np.cumsum(xs) - xs  # exclusive running sum over the sorted array
    start = np.r_[True, s[1:] != s[:-1]]
    base = np.maximum.accumulate(np.where(start, np.arange(len(s)), 0))
    out = np.empty(len(ids), dtype=np.int64)
    out[order] = c - c[base]
    return out


def history_ids(stream: np.ndarray, line: np.ndarray, order: int, context_lines: int,
                vocab_size: int) -> list:
    """Exact ids of the k-token history of every position, k = 0..order-1: list of int64 (T,).

    Equal ids <=> equal histories (a position before the reach of ``context_lines`` reads as
    one "line start" marker, and once a history has hit it every longer one has too)."""
    T = len(stream)
    ids = [np.zeros(T, dtype=np.int64)]
    marker = vocab_size  # the line-start marker, a token id no stream holds
    t = np.arange(T)
    for k in range(1, order):
        src = t - k
        tok = np.where(src >= 0, stream[np.maximum(src, 0)], marker)
        reach = (src >= 0) & (line[np.maximum(src, 0)] >= line - context_lines)
        tok = np.where(reach, tok, marker)
        pair = ids[-1] * (vocab_size + 1) + tok
        ids.append(np.unique(pair, return_inverse=True)[1].astype(np.int64).ravel())
    return ids


def cache_stats(stream: np.ndarray, line: np.ndarray, order: int, context_lines: int,
                vocab_size: int) -> np.ndarray:
    """Counts over the text before each position: int64 (3, order, T) = c, n, u per order k.

    ``c[k, t]``: earlier positions with the same k-history; ``n[k, t]``: ... and the same
    target; ``u[k, t]``: distinct targets among them."""
    T = len(stream)
    out = np.empty((3, order, T), dtype=np.int64)
    for k, h in enumerate(history_ids(stream, line, order, context_lines, vocab_size)):
        pair = h * (vocab_size + 1) + stream
        n = _rank_in_group(pair)
        out[0, k] = _rank_in_group(h)
        out[1, k] = n
        out[2, k] = _exclusive_sum_in_group(h, n == 0)  # first sightings of (h, w) before t
    return out


def _forward(static_logp, stats, a, b, d, e):
    """Probabilities of the targets at every level: list of float64 (T,), level -1 first."""
    ps = [np.exp(static_logp)]
    for k in range(len(a)):
        c, n, u = stats[0, k], stats[1, k], stats[2, k]
        p = ps[-1]
        seen = c > 0
        cs = np.maximum(c, 1)
        q = (np.maximum(n - d[k], 0.0) + d[k] * u * p) / cs
        lam = np.where(seen, a[k] * c / (c + b[k] + e[k] * u), 0.0)
        ps.append(p + lam * (q - p))
    return ps


def cache_log_proba(static_logp: np.ndarray, stats: np.ndarray, weights: "CacheWeights") -> np.ndarray:
    """Adaptive natural-log probability of every target: float64 (T,) (see the module)."""
    K = weights.order
    if stats.shape[1] < K:
        raise InputError(f"cache weights of order {K} need statistics of that order")
    a, b, d, e = (np.asarray(x, float) for x in (weights.a, weights.b, weights.d, weights.e))
    # static probabilities are > 0 and every level keeps a share >= 1 - a_k c/(c + b_k) > 0
    return np.log(_forward(static_logp, stats, a, b, d, e)[-1])


def _nll_and_grad(x, static_logp, stats, K):
    """Mean NLL (nats/token) and its gradient in x = (a, log b, d, e), by the chain rule."""
    a, b, d, e = x[:K], np.exp(x[K:2 * K]), x[2 * K:3 * K], x[3 * K:]
    ps = _forward(static_logp, stats, a, b, d, e)
    T = len(static_logp)
    g = -1.0 / (ps[-1] * T)  # dL/dp at the top level
    grad = np.zeros(4 * K)
    for k in range(K - 1, -1, -1):
        c, n, u = stats[0, k], stats[1, k], stats[2, k]
        p = ps[k]
        seen = c > 0
        cs = np.maximum(c, 1)
        q = (np.maximum(n - d[k], 0.0) + d[k] * u * p) / cs
        den = c + b[k] + e[k] * u
        frac = np.where(seen, c / den, 0.0)
        lam = a[k] * frac
        grad[k] = np.dot(g, frac * (q - p))
        grad[K + k] = np.dot(g, -lam * b[k] / den * (q - p))  # d/d log b
        grad[2 * K + k] = np.dot(g, lam * (u * p - (n > d[k])) / cs)
        grad[3 * K + k] = np.dot(g, -lam * u / den * (q - p))
        g = g * ((1 - lam) + lam * d[k] * u / cs)
    return -float(np.log(ps[-1]).mean()), grad


def fit_cache(static_logp: np.ndarray, stats: np.ndarray, order: int,
              init: "CacheWeights | None" = None, max_iter: int = 500) -> tuple:
    """Cache weights of ``order`` minimising the held-out NLL (nats per token); deterministic
    (L-BFGS-B with the exact gradient from ``init``, default a = 0.5, b = 2, d = 0.5, on a, d in
    [0, 1] and log b in [-7, 12]). Returns ``(weights, nll_per_token)``."""
    K = order
    w0 = init or CacheWeights((0.5,) * K, (2.0,) * K, (0.5,) * K, (0.0,) * K)
    if w0.order != K:
        raise InputError(f"init has order {w0.order}, asked for {K}")
    x0 = np.r_[np.asarray(w0.a, float), np.log(np.asarray(w0.b, float)), np.asarray(w0.d, float),
               np.asarray(w0.e, float)]
    res = minimize(_nll_and_grad, x0, args=(static_logp, stats, K), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, 1.0)] * K + [(-7.0, 12.0)] * K + [(0.0, 1.0)] * K
                   + [(0.0, 1e4)] * K, options={"maxiter": max_iter})
    x = res.x
    w = CacheWeights(*(tuple(float(v) for v in part) for part in
                       (x[:K], np.exp(x[K:2 * K]), x[2 * K:3 * K], x[3 * K:])))
    return w, float(res.fun)
