r"""Cache: the already-scored token stream -> causal n-gram statistics -> adaptive probabilities.

Input: a token stream (int64 (T,): every line's ids followed by its EOS, in reading order), the
line of each position, and the static model's natural-log probability of each target (T,).
Output: the adaptive log-probability of each target (T,), natural log.

The cache is a hierarchy of levels over the text *already scored* (never the current or a
later token), with the static model as its base::

    P_{-1}(w)  = P_static(w | line so far)
    Q_k(w)     = (max(n_k - d_k, 0) + d_k u_k P_{k-1}(w)) / c_k
    P_k(w)     = (1 - l_k) P_{k-1}(w) + l_k Q_k(w),   l_k = a_k c_k / (c_k + b_k + e_k u_k)

for levels k = 0..L-1 (l_k = 0 when c_k = 0). Level k of the first ``order`` levels has the
history ``h_k`` = the k tokens before the target and counts over all the text read: ``c_k``
how often ``h_k`` occurred as a history before, ``n_k`` how often it was followed by w,
``u_k`` by how many distinct tokens. The last ``window_order`` levels (histories of 0, 1, 2
tokens) count only the last ``window`` tokens (recency: names and topics of the current scene;
d = e = 0 there, so u is not needed). ``a`` in [0, 1], ``b`` > 0, ``d`` in [0, 1], ``e`` >= 0
are the cache weights, fitted on held-out text (``fit_cache``). Each Q_k sums to 1 over w
whenever P_{k-1} does (the discounted mass ``d_k u_k`` goes to the level below), so only
P_static(target) is needed: the cache costs O(T L) on top of static scoring and never builds a
V-vector.

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

from .errors import InputError

# Chosen on the valid split of the default corpus with the default model: cache order 8,
# window 500, histories reaching 1 line back, fitted jointly (``lmkit eval --adapt --cache-fit
# --json`` prints them): test 2.110 -> 1.890 bits/byte.
WINDOW_ORDER = 3  # recency levels: histories of 0..2 tokens within the window
DEFAULT_WEIGHTS = {
    "a": [0.0, 0.22661733139107798, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0070732535411457305,
          0.10591142486864574, 0.17844438854465974],
    "b": [2.0002149117916255, 0.08289654311471707, 0.0009118819655545162, 0.014786582731656473,
          0.08893052621597812, 0.15204799886073092, 2.0911820611785914, 2.4374442124078755,
          0.9955601913439894, 3.295923776917468, 1.303492958019933],
    "d": [0.5381116601015647, 0.1655810565546571, 0.7999905622334801, 0.8269807790152518,
          0.8221816338536027, 0.616212234109277, 1.0, 1.0, 0.0, 0.0, 0.0],
    "e": [0.045114722487422286, 4.491619889346594, 4.0418487112747865, 4.9739364861242406,
          3.838433591020929, 2.9428194698240704, 0.9782737061506764, 0.9242433868901112, 0.0, 0.0,
          0.0],
    "window": 500, "window_order": 3,
}


@dataclass(frozen=True)
class CacheWeights:
    """Per level: the most weight ``a`` in [0, 1] it may take, its strength ``b`` > 0 and
    ``e`` >= 0 (weight a c / (c + b + e u)) and discount ``d`` in [0, 1] (see the module).
    Levels 0..order-1 count all the text read; the last ``window_order`` levels (orders
    0..window_order-1) only its last ``window`` tokens, with d = e = 0."""

    a: tuple
    b: tuple
    d: tuple
    e: tuple
    window: int = 0
    window_order: int = 0

    @property
    def order(self) -> int:
        return len(self.a) - self.window_order

    def to_json(self) -> dict:
        return {**{k: [float(x) for x in getattr(self, k)] for k in "abde"},
                "window": self.window, "window_order": self.window_order}

    @classmethod
    def from_json(cls, obj) -> "CacheWeights":
        try:
            a, b, d, e = ([float(x) for x in obj[k]] for k in "abde")
            window, wo = obj.get("window", 0), obj.get("window_order", 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError("cache weights must be {\"a\": [...], \"b\": [...], \"d\": [...], "
                             "\"e\": [...]} (lists of numbers); refit them with cache_fit") from None
        ok = (len(a) == len(b) == len(d) == len(e) and a
              and all(0.0 <= x <= 1.0 for x in a + d)
              and all(math.isfinite(x) and x > 0 for x in b)
              and all(math.isfinite(x) and x >= 0 for x in e))
        if not ok:
            raise InputError(f"cache weights: need as many a, d in [0, 1], b > 0 and e >= 0, got "
                             f"a={a} b={b} d={d} e={e}; refit them with cache_fit")
        if not (isinstance(window, int) and isinstance(wo, int) and window >= 0
                and 0 <= wo < len(a) and (wo == 0) == (window == 0)
                and all(x == 0 for x in d[len(a) - wo:] + e[len(a) - wo:])):
            raise InputError(f"cache weights: window {window!r} and window_order {wo!r} must be "
                             "integers, both 0 or both > 0, with d = e = 0 on the window levels; "
                             "refit them with cache_fit")
        return cls(tuple(a), tuple(b), tuple(d), tuple(e), window, wo)


def default_weights(order: int, window: int) -> "CacheWeights":
    """``DEFAULT_WEIGHTS`` (there are defaults for their order and window only)."""
    w = CacheWeights.from_json(DEFAULT_WEIGHTS)
    if (order, window) != (w.order, w.window):
        raise InputError(f"the default cache weights are for order {w.order} and window "
                         f"{w.window}, not {order} and {window}; fit weights for them with "
                         "cache_fit")
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


def window_stats(stream: np.ndarray, line: np.ndarray, order: int, context_lines: int,
                 vocab_size: int, window: int) -> np.ndarray:
    """``cache_stats`` over the last ``window`` tokens before each position only (c, n; u = 0):
    int64 (3, order, T)."""
    T = len(stream)
    t = np.arange(T, dtype=np.int64)
    out = np.zeros((3, order, T), dtype=np.int64)
    for k, h in enumerate(history_ids(stream, line, order, context_lines, vocab_size)):
        for j, ids in enumerate((h, h * (vocab_size + 1) + stream)):
            group = np.unique(ids, return_inverse=True)[1].astype(np.int64).ravel()
            key = group * T + t  # sorted keys: by group, then by time
            sk = np.sort(key)
            start = np.searchsorted(sk, group * T)
            # earlier positions of the group, minus those more than `window` back
            out[j, k] = np.searchsorted(sk, key) - np.maximum(np.searchsorted(sk, key - window),
                                                              start)
    return out


def level_stats(stream: np.ndarray, line: np.ndarray, order: int, window: int,
                window_order: int, context_lines: int, vocab_size: int,
                compiled: bool | None = None) -> np.ndarray:
    """The statistics of ``order`` full levels then ``window_order`` window levels (none when
    ``window`` is 0): int64 (3, levels, T). ``compiled``: count in one compiled loop per level
    (``adapt_fast.cache_counts``; default: when numba is installed) or by sorting (numpy);
    the same integers either way (tested)."""
    fast = _fast() if compiled is None or compiled else None
    if compiled and fast is None:
        raise InputError("compiled=True needs numba (pip install lmkit[fast])")
    if fast is not None and len(stream):
        wo = window_order if window else 0
        K = max(order, wo)
        hist = np.stack(history_ids(stream, line, K, context_lines, vocab_size))
        pair = np.stack([np.unique(h * (vocab_size + 1) + stream, return_inverse=True)[1].ravel()
                         for h in hist]).astype(np.int64)
        return fast.cache_counts(hist, pair, hist.max(axis=1) + 1, pair.max(axis=1) + 1,
                                 order, int(window), wo)
    parts = [cache_stats(stream, line, order, context_lines, vocab_size)]
    if window and window_order:
        parts.append(window_stats(stream, line, window_order, context_lines, vocab_size, window))
    return np.concatenate(parts, axis=1)


def _fast():
    """The compiled loops (``adapt_fast``) when numba is installed, else None."""
    try:
        from . import adapt_fast
    except ImportError:  # numba is optional (pip install lmkit[fast]): the numpy pass
        return None
    return adapt_fast


def _levels(stats: np.ndarray) -> list:
    """Per level, the positions whose history was seen (c > 0) and their c, n, u as float64:
    the only positions a level changes."""
    out = []
    for k in range(stats.shape[1]):
        idx = np.flatnonzero(stats[0, k] > 0)
        out.append((idx, *(stats[j, k, idx].astype(np.float64) for j in range(3))))
    return out


def _forward(static_logp, levels, a, b, d, e):
    """Probabilities of the targets at every level: list of float64 (T,), level -1 first."""
    ps = [np.exp(static_logp)]
    for k, (idx, c, n, u) in enumerate(levels):
        p = ps[-1].copy()
        pk = p[idx]
        q = (np.maximum(n - d[k], 0.0) + d[k] * u * pk) / c
        lam = a[k] * c / (c + b[k] + e[k] * u)
        p[idx] = pk + lam * (q - pk)
        ps.append(p)
    return ps


def cache_log_proba(static_logp: np.ndarray, stats: np.ndarray, weights: "CacheWeights") -> np.ndarray:
    """Adaptive natural-log probability of every target: float64 (T,) (see the module);
    ``stats``: ``level_stats`` for ``weights``."""
    L = len(weights.a)
    if stats.shape[1] != L:
        raise InputError(f"cache weights of {L} levels need statistics of that many")
    a, b, d, e = (np.asarray(x, float) for x in (weights.a, weights.b, weights.d, weights.e))
    # static probabilities are > 0 and every level keeps a share >= 1 - a_k c/(c + b_k) > 0
    return np.log(_forward(static_logp, _levels(stats), a, b, d, e)[-1])


def _nll_and_grad(x, static_logp, levels, K):
    """Mean NLL (nats/token) and its gradient in x = (a, log b, d, e), by the chain rule
    (K = number of levels; ``levels``: ``_levels(stats)``)."""
    a, b, d, e = x[:K], np.exp(x[K:2 * K]), x[2 * K:3 * K], x[3 * K:]
    ps = _forward(static_logp, levels, a, b, d, e)
    T = len(static_logp)
    g = -1.0 / (ps[-1] * T)  # dL/dp at the top level
    grad = np.zeros(4 * K)
    for k in range(K - 1, -1, -1):
        idx, c, n, u = levels[k]
        p, gk = ps[k][idx], g[idx]
        q = (np.maximum(n - d[k], 0.0) + d[k] * u * p) / c
        den = c + b[k] + e[k] * u
        frac = c / den
        lam = a[k] * frac
        gq = gk * (q - p)
        grad[k] = np.dot(gq, frac)
        grad[K + k] = -np.dot(gq, lam * b[k] / den)  # d/d log b
        grad[2 * K + k] = np.dot(gk, lam * (u * p - (n > d[k])) / c)
        grad[3 * K + k] = -np.dot(gq, lam * u / den)
        g = g.copy()
        g[idx] = gk * ((1 - lam) + lam * d[k] * u / c)
    return -float(np.log(ps[-1]).mean()), grad


def fit_cache(static_logp: np.ndarray, stats: np.ndarray, order: int, window: int = 0,
              window_order: int = 0, max_iter: int = 500) -> tuple:
    """Cache weights minimising the held-out NLL (nats per token) of ``static_logp`` with
    ``stats`` (``level_stats`` of ``order`` full and ``window_order`` window levels);
    deterministic: L-BFGS-B with the exact gradient from a = 0.5, b = 2, d = 0.5, e = 0 on the
    full levels and a = 0.2, b = 1 on the window levels (a, d in [0, 1], log b in [-7, 12], e
    in [0, 1e4]). Returns ``(weights, nll_per_token)``."""
    K, R = order, window_order
    L = K + R
    if stats.shape[1] != L:
        raise InputError(f"{L} levels need statistics of that many, got {stats.shape[1]}")
    x0 = np.r_[[0.5] * K + [0.2] * R, np.log([2.0] * K + [1.0] * R), [0.5] * K + [0.0] * R,
               [0.0] * L]
    zero = [(0.0, 0.0)] * R  # window levels: no discount, no u (their u is not counted)
    bounds = ([(0.0, 1.0)] * L + [(-7.0, 12.0)] * L + [(0.0, 1.0)] * K + zero
              + [(0.0, 1e4)] * K + zero)
    levels = _levels(stats)  # once, not at every evaluation
    from scipy.optimize import minimize  # only a fit needs it: every CLI start imported it (~1 s)
    res = minimize(_nll_and_grad, x0, args=(static_logp, levels, L), jac=True, method="L-BFGS-B",
                   bounds=bounds, options={"maxiter": max_iter})
    x = res.x
    parts = (x[:L], np.exp(x[L:2 * L]), x[2 * L:3 * L], x[3 * L:])
    w = CacheWeights(*(tuple(float(v) for v in part) for part in parts),
                     window=int(window) if R else 0, window_order=R)
    return w, float(res.fun)
