r"""Fast exact scoring of pure MKN n-gram models: id sequences -> natural-log probabilities.

Input: a ``SparseParams`` of groups ``Suffix(1..M)`` with all lambdas 1 (an exact interpolated
Kneser-Ney model, ``ngram/mkn.py``), its log-gamma tables (``ngram.tables.loggamma_tables``) and token-id
sequences. Output: float64 (N,) ``log P(target | history)`` for every target (the ids and the
EOS of each sequence), the same numbers as ``ngram.tables.mkn_log_proba`` over
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

from ..errors import InputError

try:  # numba is optional: without it the numpy route (ngram.tables.mkn_log_proba) scores
    from numba import njit
except ImportError:  # pragma: no cover (numba is a test dependency)
    njit = None


def _score(flat, lengths, bos, eos, V, map1, keys, koff, cptr, cbase, rowi, rowf, rbase, ent,
           entf, closed, logq, out):  # pragma: no cover (jit)
    """Fill ``out`` (N,) = log P of every target: per sequence its tokens, then its EOS.

    ``flat`` int32 (T,): the tokens of every sequence, ``lengths`` int64 (S,), N = T + S.
    Level l = histories of l + 1 tokens; its row r is the record ``g = rbase[l] + r``; all
    levels' tables are concatenated (one array each: numba would count references on every
    access to a tuple of arrays) and packed so that one cache line serves each step:
    ``rowi[2g]`` the first entry of row r (``rowi[2g + 2]``: one past its last),
    ``rowf[2g + 1]`` its log gamma (``rowf``: the same buffer as float64); entry e:
    ``ent[2e] = column << 32 | (next + 2)``, ``entf[2e + 1]`` = S value, where ``next`` is the
    level-(l+1) row of the history ``h w`` (-1: not a row, -2: unknown, search the trie).
    ``map1`` int64 (V,): the level-0 row of each token; ``keys``: the sorted chained keys of
    levels 1.. (level l's from ``koff[l]``), the children of level-(l-1) row r at
    ``keys[cptr[cbase[l-1] + r]:cptr[cbase[l-1] + r + 1]]``; ``closed[l]``: every level-(l+1)
    row is the ``next`` of a level-l entry (so a target not stored after h means ``h w`` is
    not a row); ``logq`` (V,) log P_1.
    """
    M = closed.shape[0]
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
            tk = np.int64(t) << 32
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
                    if closed[l] and nknown == l + 1 and l + 1 < M:
                        nrow[l + 1] = -1  # h unseen, so h w is no row either
                        nknown = l + 2
                    break
                g = 2 * (rbase[l] + row)
                o += rowf[g + 1]
                if stored:
                    lo = rowi[g]
                    end = rowi[g + 2]
                    hi = end
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if ent[2 * mid] < tk:
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo < end and (ent[2 * lo] >> 32) == t:
                        o += entf[2 * lo + 1]
                        nx = (ent[2 * lo] & 0xFFFFFFFF) - 2
                        if nknown == l + 1 and l + 1 < M and nx != -2:
                            nrow[l + 1] = nx
                            nknown = l + 2
                    else:
                        stored = False
                        if closed[l] and nknown == l + 1 and l + 1 < M:
                            nrow[l + 1] = -1
                            nknown = l + 2
            out[n] = o
            n += 1
            for l in range(nknown):
                hrow[l] = nrow[l]
            known = nknown
        b += L


def _build(V, tok0, map1, keys, koff, R, rptr, rbase, indices, data, lg, cptr, cbase, rowi,
           rowf, ent, entf, closed):  # pragma: no cover (jit)
    """Fill ``_score``'s tables (its docstring) from the concatenated per-level arrays: ``rptr``
    (sum(R + 1),) the CSR pointers of every level (level l's at ``rbase[l]``, absolute),
    ``indices``/``data`` (nnz,), ``lg`` (sum R,) the log gammas.

    The ``next`` row of an entry (h, w) of level l: ``h w`` minus its oldest token is the entry
    (parent(h), w) one level down, whose ``next`` is already known (level 0: the row of w);
    then one search among that row's children for the oldest token of h. -2 where that entry
    is not stored (patterns not nested), -1 where it is but ``h w`` is not a row.
    """
    M = R.shape[0]
    # children pointers (the keys of level l+1 in [r V, (r+1) V)): one merge of row r * V against the sorted keys of the level above
    for l in range(M - 1):
        p = koff[l + 1]
        stop = p + R[l + 1]
        for r in range(R[l] + 1):
            while p < stop and keys[p] < r * V:
                p += 1
            cptr[cbase[l] + r] = p
    found = np.zeros(M, dtype=np.int64)
    gl = 0
    for l in range(M):
        for r in range(R[l] + 1):
            g = rbase[l] + r
            rowi[2 * g] = rptr[g]
            rowf[2 * g + 1] = lg[gl + r] if r < R[l] else 0.0
        gl += R[l]
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
                nx = -2
                if l + 1 < M:
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
                        a = (ent[2 * lo] & 0xFFFFFFFF) - 2 if lo < end and indices[lo] == w \
                            else -2
                    if a == -1:
                        nx = -1
                    elif a >= 0:
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
                        nx = lo - koff[l + 1] if lo < end and keys[lo] == k else -1
                        if nx >= 0:
                            found[l] += 1
                ent[2 * e] = (np.int64(w) << 32) | (nx + 2)
                entf[2 * e + 1] = data[e]
        # closed level: every row above is some entry's next (one-to-one), so what is unknown
        # (-2) is no row (-1), and a target not stored means no row above
        closed[l] = l + 1 < M and found[l] == R[l + 1]
        if closed[l]:
            for e in range(rptr[rbase[l]], rptr[rbase[l] + R[l]]):
                if (ent[2 * e] & 0xFFFFFFFF) == 0:
                    ent[2 * e] += 1


_build_compiled = njit(cache=True, nogil=True)(_build) if njit is not None else None
_score_compiled = njit(cache=True, nogil=True)(_score) if njit is not None else None


class MknWalker:
    """Derived tables of one pure MKN ``SparseParams`` for ``_score`` (built once: ``walker``).

    ``log_proba(seqs, bos_id, eos_id)`` -> float64 (N,) natural logs, targets in sequence order.
    Memory: 16 bytes per stored entry and per row, plus the keys and two int64 pointers per row.
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
        nnz = np.array([x.nnz for x in S], dtype=np.int64)
        eoff = np.concatenate([[0], np.cumsum(nnz)[:-1]])
        self.rbase = np.concatenate([[0], np.cumsum(R + 1)[:-1]]).astype(np.int64)
        rptr = np.concatenate([x.indptr.astype(np.int64) + o for x, o in zip(S, eoff)])
        self.cbase = np.concatenate([[0], np.cumsum(R[:-1] + 1)])[:max(M - 1, 1)].astype(np.int64)
        self.cptr = np.zeros(max(int((R[:-1] + 1).sum()), 1), dtype=np.int64)
        self.rowi = np.empty(2 * len(rptr), dtype=np.int64)
        self.rowf = self.rowi.view(np.float64)
        self.ent = np.empty(2 * int(nnz.sum()), dtype=np.int64)
        self.entf = self.ent.view(np.float64)
        self.closed = np.zeros(M, dtype=np.bool_)
        _build_compiled(V, keys[0], self.map1, self.keys, self.koff, R, rptr, self.rbase,
                        np.concatenate([x.indices for x in S]).astype(np.int32, copy=False),
                        np.concatenate([x.data for x in S]).astype(np.float64, copy=False),
                        np.concatenate([np.asarray(g, dtype=np.float64) for g in loggammas]),
                        self.cptr, self.cbase, self.rowi, self.rowf, self.ent, self.entf,
                        self.closed)
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
                        self.keys, self.koff, self.cptr, self.cbase, self.rowi, self.rowf,
                        self.rbase, self.ent, self.entf, self.closed, self.logq, out)
        return out


def walker(params, loggammas):
    """The ``MknWalker`` of ``params`` (kept on the frozen object), or None when the compiled
    loop is unavailable (no numba) or switched off (``scoring.USE_COMPILED = False``)."""
    from .. import scoring
    if _score_compiled is None or not scoring.USE_COMPILED:
        return None
    w = params.__dict__.get("_mkn_walker")
    if w is None:
        w = MknWalker(params, loggammas)
        object.__setattr__(params, "_mkn_walker", w)
    return w

