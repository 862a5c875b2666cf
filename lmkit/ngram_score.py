r"""Fast exact scoring of pure MKN n-gram models: id sequences -> natural-log probabilities.

Input: a ``SparseParams`` of groups ``Suffix(1..M)`` with all lambdas 1 (an exact interpolated
Kneser-Ney model, ``ngram.py``), its log-gamma tables (``ngram.loggamma_tables``) and token-id
sequences. Output: float64 (N,) ``log P(target | history)`` for every target (the ids and the
EOS of each sequence), the same numbers as ``ngram.mkn_log_proba`` over
``features.context_rows`` (the same additions in the same order, so equal to the last bit).

How: the chained ``Suffix`` keys (``key = parent row * V + oldest token``, sorted) are a trie
read newest token first, as KenLM's: the children of a row at order m are one contiguous run of
order m+1's keys (``child_ptr``, built once per model by one ``searchsorted``), so finding a
position's history at order m+1 is a binary search over the few children of its order-m row,
not over the whole table. One compiled pass (numba) walks every position of every sequence:
per order, the history row (stop at the first unseen history, or where the history would
need a second BOS), ``+ log gamma``, then, while the target was stored at every lower order,
a binary search of the target in that row of ``S_m`` (the patterns are nested) ``+ S_m``.
No padded buffer, no history sort, no per-order arrays: one pass, memory O(N).

Without numba (``pip install lmkit[fast]``), or with ``scoring.USE_COMPILED`` False,
``walker`` returns None and the caller uses ``context_rows`` + ``mkn_log_proba``.
"""
from __future__ import annotations

from itertools import chain

import numpy as np

from .errors import InputError

try:  # numba is optional: without it the numpy route (ngram.mkn_log_proba) scores
    from numba import njit
except ImportError:  # pragma: no cover (numba is a test dependency)
    njit = None


def _score(flat, lengths, bos, eos, V, map1, keys, koff, cptr, cbase, rptr, rbase, indices,
           data, nxt, lg, lgbase, logq, out):  # pragma: no cover (jit)
    """Fill ``out`` (N,) = log P of every target: per sequence its tokens, then its EOS.

    ``flat`` int32 (T,): the tokens of every sequence, ``lengths`` int64 (S,), N = T + S.
    Every order's tables are concatenated (one array each, no tuple of arrays: numba would
    count references on every access); level l (histories of l + 1 tokens) owns rows
    ``0..R_l-1``: ``map1`` int64 (V,): the level-0 row of each token (-1: unseen history);
    ``keys``: the sorted chained keys of levels 1.. (level l's from ``koff[l]``); the children
    of level-(l-1) row r are ``keys[cptr[cbase[l-1] + r]:cptr[cbase[l-1] + r + 1]]``;
    ``indices``/``data``: the CSR entries of every ``S``, row r of level l at
    ``rptr[rbase[l] + r]:rptr[rbase[l] + r + 1]``; ``nxt`` (nnz,) int32: per entry (h, w) the
    level-(l+1) row of the history ``h w`` (-1: unseen, -2: not known, search it);
    ``lg[lgbase[l] + r]``: log gamma; ``logq`` (V,) log P_1.
    """
    M = lgbase.shape[0]
    hrow = np.empty(M + 1, dtype=np.int64)  # this position's history rows, levels < known
    nrow = np.empty(M + 1, dtype=np.int64)  # the next position's, from the entries found here
    n = 0
    b = 0
    for s in range(lengths.shape[0]):
        L = lengths[s]
        hrow[0] = map1[bos]
        known = 1
        for i in range(L + 1):
            t = eos if i == L else flat[b + i]
            o = logq[t]
            nrow[0] = map1[t]
            nknown = 1
            stored = True  # the target was stored at every lower level (nested patterns)
            row = -1
            for l in range(min(M, i + 1)):  # deeper histories would need a second BOS
                if l < known:
                    row = hrow[l]
                else:  # binary search among the children of the level-(l-1) row
                    j = i - l - 1
                    k = row * V + (bos if j == -1 else flat[b + j])
                    c = cbase[l - 1] + row
                    lo = cptr[c]
                    end = cptr[c + 1]
                    hi = end
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if keys[mid] < k:
                            lo = mid + 1
                        else:
                            hi = mid
                    row = lo - koff[l] if lo < end and keys[lo] == k else -1
                if row < 0:  # unseen history: gamma = 1 and S = 0 here and at every higher level
                    break
                o += lg[lgbase[l] + row]
                if stored:
                    c = rbase[l] + row
                    lo = rptr[c]
                    end = rptr[c + 1]
                    hi = end
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if indices[mid] < t:
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo < end and indices[lo] == t:
                        o += data[lo]
                        if nknown == l + 1 and l + 1 < M and nxt[lo] != -2:
                            nrow[l + 1] = nxt[lo]
                            nknown = l + 2
                    else:
                        stored = False
            out[n] = o
            n += 1
            for l in range(nknown):
                hrow[l] = nrow[l]
            known = nknown
        b += L


def _next_rows(V, tok0, map1, keys, koff, cptr, cbase, rptr, rbase, indices, R,
               nxt):  # pragma: no cover (jit)
    """``nxt`` (nnz,) int32: per entry (h, w) of level l < M - 1 the level-(l+1) row of the
    history ``h w`` (-1: not a row), found from its suffix's row: ``h w`` minus its oldest
    token is the entry (parent(h), w) one level down, whose ``nxt`` is already known. -2 where
    that entry is not stored (patterns not nested: the scorer searches the trie there)."""
    M = R.shape[0]
    nxt[:] = -2
    for l in range(M - 1):
        for r in range(R[l]):
            if l == 0:
                tok = tok0[r]
                parent = -1
            else:
                key = keys[koff[l] + r]
                parent = key // V
                tok = key % V
            for e in range(rptr[rbase[l] + r], rptr[rbase[l] + r + 1]):
                w = indices[e]
                if l == 0:
                    a = map1[w]
                else:
                    c = rbase[l - 1] + parent
                    lo = rptr[c]
                    end = rptr[c + 1]
                    hi = end
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if indices[mid] < w:
                            lo = mid + 1
                        else:
                            hi = mid
                    a = nxt[lo] if lo < end and indices[lo] == w else -2
                if a == -2:
                    continue
                if a == -1:
                    nxt[e] = -1
                    continue
                k = a * V + tok
                c = cbase[l] + a
                lo = cptr[c]
                end = cptr[c + 1]
                hi = end
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if keys[mid] < k:
                        lo = mid + 1
                    else:
                        hi = mid
                nxt[e] = lo - koff[l + 1] if lo < end and keys[lo] == k else -1


_next_rows_compiled = njit(cache=True, nogil=True)(_next_rows) if njit is not None else None
_score_compiled = njit(cache=True, nogil=True)(_score) if njit is not None else None


class MknWalker:
    """Derived tables of one pure MKN ``SparseParams`` for ``_score`` (built once: ``walker``).

    ``log_proba(seqs, bos_id, eos_id)`` -> float64 (N,) natural logs, targets in sequence order.
    Memory: a copy of the keys, S entries and log gammas (concatenated) plus two int64 pointers
    per row.
    """

    def __init__(self, params, loggammas):
        V = params.vocab_size
        keys = [np.asarray(k, dtype=np.int64) for k in params.keys]
        S = [x.tocsr() for x in params.S]
        M = len(S)
        self.V = V
        self.map1 = np.full(V, -1, dtype=np.int64)
        self.map1[keys[0]] = np.arange(len(keys[0]))  # keys[0]: sorted token ids (validated)
        R = np.array([len(k) for k in keys], dtype=np.int64)
        self.koff = np.concatenate([[0, 0], np.cumsum(R[1:])])[:M].astype(np.int64)
        self.keys = np.concatenate([np.zeros(0, np.int64)] + keys[1:])
        # children of order-l row r: the keys of order l+1 in [r * V, (r + 1) * V)
        cp = [np.searchsorted(keys[l + 1], np.arange(R[l] + 1) * V) + self.koff[l + 1]
              for l in range(M - 1)]
        self.cbase = np.concatenate([[0], np.cumsum(R[:-1] + 1)])[:max(M - 1, 1)].astype(np.int64)
        self.cptr = np.concatenate([np.zeros(1, np.int64)] + cp).astype(np.int64) if M == 1 \
            else np.concatenate(cp).astype(np.int64)
        nnz = np.array([x.nnz for x in S], dtype=np.int64)
        eoff = np.concatenate([[0], np.cumsum(nnz)[:-1]])
        self.rbase = np.concatenate([[0], np.cumsum(R + 1)[:-1]]).astype(np.int64)
        self.rptr = np.concatenate([x.indptr.astype(np.int64) + o for x, o in zip(S, eoff)])
        self.indices = np.concatenate([x.indices for x in S]).astype(np.int32)
        self.data = np.concatenate([x.data for x in S]).astype(np.float64)
        self.nxt = np.empty(len(self.indices), dtype=np.int32)
        _next_rows_compiled(V, keys[0], self.map1, self.keys, self.koff, self.cptr, self.cbase,
                            self.rptr, self.rbase, self.indices, R, self.nxt)
        self.lgbase = np.concatenate([[0], np.cumsum(R)[:-1]]).astype(np.int64)
        self.lg = np.concatenate([np.asarray(g, dtype=np.float64) for g in loggammas])
        self.logq = np.log(params.q)

    def log_proba(self, seqs: list, bos_id: int, eos_id: int) -> np.ndarray:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        total = int(lengths.sum())
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=total)
        if total and (flat.min() < 0 or flat.max() >= self.V):
            bad = int(flat[(flat < 0) | (flat >= self.V)][0])
            raise InputError(f"token id {bad} is out of range for a vocabulary of {self.V}; "
                             "encode the text with this model's tokenizer")
        out = np.empty(total + len(seqs))
        _score_compiled(flat.astype(np.int32), lengths, bos_id, eos_id, self.V, self.map1,
                        self.keys, self.koff, self.cptr, self.cbase, self.rptr, self.rbase,
                        self.indices, self.data, self.nxt, self.lg, self.lgbase, self.logq, out)
        return out


def walker(params, loggammas):
    """The ``MknWalker`` of ``params`` (kept on the frozen object), or None when the compiled
    loop is unavailable (no numba) or switched off (``scoring.USE_COMPILED = False``)."""
    from . import scoring
    if _score_compiled is None or not scoring.USE_COMPILED:
        return None
    w = params.__dict__.get("_mkn_walker")
    if w is None:
        w = MknWalker(params, loggammas)
        object.__setattr__(params, "_mkn_walker", w)
    return w

