r"""Fast exact scoring of pure MKN n-gram models: id sequences -> natural-log probabilities.

Input: a ``SparseParams`` of groups ``Suffix(1..M)`` with all lambdas 1 (an exact interpolated
Kneser-Ney model, ``mkn.py``), its log-gamma tables (``tables.loggamma_tables``) and token-id
sequences. Output: float64 (N,) ``log P(target | history)`` for every target (the ids and the
EOS of each sequence), the same numbers as ``tables.mkn_log_proba`` over
``features.context_rows`` (the same additions in the same order, so equal to the last bit).

How: the chained ``Suffix`` keys (``key = parent row * V + oldest token``, sorted) are a trie
read newest token first, as KenLM's: the children of a row at level m are one contiguous run of
level m+1's keys (``cptr``). One compiled pass (numba) walks every position of every sequence
in order and carries KenLM-style state: every stored entry (h, w) knows the row of the history
``h w`` one level up (built once per model, ``_build``), so a position's history rows come
from the entries its predecessor found, with no search; a target not stored means ``h w`` is
no row whenever every row is some entry's successor (``closed``: true of every model lmkit
trains), and otherwise the trie is searched. Per level: ``+ log gamma``, then, while the
target was stored at every lower level, ``+ S`` (the target found by a binary search in the
row, or by a hash at level 0 whose rows are long). No padded buffer, no history sort.
Tables are built only once enough positions were scored through a model (``BUILD_AFTER``).
docs/ngram_score.md has the layout and the measurements.

The three loops (``_build``, ``_hash_level0``, ``_score``) are numba source run as cached native
object code (``native.py``, ``native_kernel`` here): numba compiles them once, and later
processes load the object file with llvmlite and call it through ctypes (GIL released), without
importing numba (~0.5 CPU s of a fresh ``lmkit score``: docs/speed.md, "Start-up of `lmkit
score`"). They allocate nothing (scratch comes from ``MknWalker``) and cannot raise.
Without numba (``pip install lmkit[fast]``), or with ``scoring.USE_COMPILED`` False,
``walker`` returns None and the caller uses ``context_rows`` + ``mkn_log_proba``.
"""
from __future__ import annotations

import importlib.util
import mmap
import threading
from itertools import chain

import numpy as np

from ..errors import InputError, MissingDependencyError
from ..params import stored_arrays
from ..sortedsearch import lower_bound  # compiled here with the walk (native_kernel)

# numba is optional: without it the numpy route (ngram.tables.mkn_log_proba) scores. It is
# imported only to compile the loops the first time (``native_kernel``), never to run them.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_JIT_LOCK = threading.Lock()


def _gallop(a, lo, hi, x):  # pragma: no cover (jit)
    """``lower_bound(a, lo, hi, x)`` found by steps of 1, 2, 4, ... from ``lo``: cheap when
    the answer is near ``lo`` (a run of rising searches in one row)."""
    step = 1
    while lo + step < hi and a[lo + step - 1] < x:
        lo += step
        step *= 2
    return lower_bound(a, lo, min(lo + step, hi), x)


def _row_state(r, rowi, rowf, st, sl, lev):  # pragma: no cover (jit)
    """Level ``lev`` of ``st`` (start, end, kind) and ``sl`` (log gamma): row record ``r``
    (-1: no row)."""
    if r < 0:
        st[lev, 2] = 0
    else:
        st[lev, 0] = rowi[2 * r]
        st[lev, 1] = rowi[2 * r + 2]
        st[lev, 2] = 1
        sl[lev] = rowf[2 * r + 1]


def _score(flat, lengths, bos, eos, V, map1, keys, koff, cptr, cbase, rowi, rowf, rbase, h0, h0f,
           ent, entf, closed, logq, out, st, sl, nst, nsl, hit):  # pragma: no cover (jit)
    """Fill ``out`` (N,) = log P of every target: per sequence its tokens, then its EOS.

    ``flat`` int32 (T,): the tokens of every sequence, ``lengths`` int64 (S,), N = T + S.
    Level l = histories of l + 1 tokens. All levels' tables are concatenated (one array each:
    numba counts references on every access to a tuple of arrays) and packed so that one cache
    line serves each step. Row r of level l is record ``g = rbase[l] + r``: ``rowi[2g]`` its
    first entry, ``rowi[2g + 2]`` one past its last, ``rowf[2g + 1]`` its log gamma (``rowf``:
    the same buffer as float64). Entry e (sorted by column within its row):
    ``ent[4e] = column << 32 | len(next)``, ``ent[4e + 1]`` = first entry of ``next`` (-1: no
    such row, -2: not known, search the trie), ``entf[4e + 2]`` = S value, ``entf[4e + 3]`` =
    log gamma of ``next``, where ``next`` is the level-(l+1) row of the history ``h w``;
    Level 0's rows are long: its entries are found in ``h0`` (``h0f``: as float64), a hash of
    (row start, column) with 8 words a slot (one cache line): the entry's 4 words, then its row
    start (-1: empty slot); ``_hash_level0``.
    ``map1`` int64 (V,): the level-0 record of each token (-1: unseen); ``keys``: the sorted
    chained keys of levels 1.. (level l's from ``koff[l]``), the children of level-(l-1) row r
    at ``keys[cptr[cbase[l-1] + r]:cptr[cbase[l-1] + r + 1]]`` (only for histories not known
    from the previous position); ``closed[l]``: every level-(l+1) row is the ``next`` of a
    level-l entry, so a target not stored after h means ``h w`` is no row (uint8 (M,), 1:
    closed); ``logq`` log P_1.

    The history rows of a position come from the entries its predecessor found (KenLM's
    state): per level (start, end, kind) in ``st`` (kind 1: a row, 0: none, -1: not known) and
    its log gamma in ``sl``. Every known level is searched (independent loads, so their cache
    misses overlap); the sum takes S only while the target was stored at every lower level,
    exactly as ``ngram.tables.mkn_log_proba``. Scratch (no allocation here): ``st``, ``nst``
    int64 (M + 1, 3), ``sl``, ``nsl`` float64 (M + 1,), ``hit`` int64 (M + 1,).
    """
    M = closed.shape[0]
    mask = h0.shape[0] // 8 - 1
    shift = _slot_shift(h0.shape[0] // 8)
    n = 0
    b = 0
    for s in range(lengths.shape[0]):
        L = lengths[s]
        _row_state(map1[bos], rowi, rowf, st, sl, 0)
        for i in range(L + 1):
            t = eos if i == L else flat[b + i]
            top = min(M, i + 1)  # deeper histories would need a second BOS
            for l in range(1, top):  # a level not known from the predecessor: walk the trie
                if st[l - 1, 2] == 0:
                    break
                if st[l, 2] == -1:
                    r = map1[flat[b + i - 1] if i >= 1 else bos]
                    for m in range(1, top):
                        j = i - m - 1
                        if r >= 0:
                            k = (r - rbase[m - 1]) * V + (bos if j == -1 else flat[b + j])
                            c = cbase[m - 1] + r - rbase[m - 1]
                            end = cptr[c + 1]
                            lo = lower_bound(keys, cptr[c], end, k)
                            r = rbase[m] + lo - koff[m] if lo < end and keys[lo] == k else -1
                        if m >= l:
                            _row_state(r, rowi, rowf, st, sl, m)
                    break
            tk = np.int64(t) << 32
            depth = 0  # levels with a row
            for l in range(top):
                if st[l, 2] != 1:
                    break
                depth = l + 1
                lo = st[l, 0]
                end = st[l, 1]
                hi = end
                if l == 0:  # long rows: hashed by (row start, column), one cache line a slot
                    slot = _slot(lo * V + t, shift)
                    hit[0] = -1
                    while True:
                        w = 8 * slot
                        if h0[w + 4] < 0:
                            break
                        if h0[w + 4] == lo and (h0[w] >> 32) == t:
                            hit[0] = w
                            break
                        slot = (slot + 1) & mask
                else:
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if ent[4 * mid] < tk:
                            lo = mid + 1
                        else:
                            hi = mid
                    hit[l] = 4 * lo if lo < end and (ent[4 * lo] >> 32) == t else -1
            o = logq[t]
            stored = True  # the target was stored at every lower level
            for l in range(depth):
                o += sl[l]
                if stored:
                    if hit[l] >= 0:
                        o += h0f[hit[0] + 2] if l == 0 else entf[hit[l] + 2]
                    else:
                        stored = False
            out[n] = o
            n += 1
            # the successor's histories: its level l+1 is this level l's history + t
            _row_state(map1[t], rowi, rowf, nst, nsl, 0)
            for l in range(min(M - 1, top)):
                if l < depth and hit[l] >= 0:
                    rec, recf, e = (h0, h0f, hit[0]) if l == 0 else (ent, entf, hit[l])
                    nx = rec[e + 1]
                    if nx >= 0:
                        nst[l + 1, 0] = nx
                        nst[l + 1, 1] = nx + (rec[e] & 0xFFFFFFFF)
                        nst[l + 1, 2] = 1
                        nsl[l + 1] = recf[e + 3]
                    else:
                        nst[l + 1, 2] = 0 if nx == -1 else -1
                else:  # h unseen or h w not stored: no row if level l is closed
                    nst[l + 1, 2] = 0 if closed[l] else -1
                    break
            st, nst = nst, st  # levels the successor does not reach are never read
            sl, nsl = nsl, sl
        b += L


def _slot(k, shift):  # pragma: no cover (jit)
    """Fibonacci hashing of a non-negative int64 key to a slot in [0, 2^(64 - shift))."""
    return np.int64((np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)) >> shift)


def _slot_shift(n_slots):  # pragma: no cover (jit)
    """``_slot``'s shift for a power of two ``n_slots``: 64 - log2(n_slots) (integers only:
    no libm call in the object code)."""
    b = 0
    while (1 << (b + 1)) <= n_slots:
        b += 1
    return np.uint64(64 - b)


def _hash_level0(V, rowi, R0, ent, h0):  # pragma: no cover (jit)
    """Copy every level-0 entry e (row start s, column c) into slot ``_slot(s V + c)`` of
    ``h0`` (8 words a slot: e's 4 words of ``ent``, then s; word 4 = -1: empty), probing
    linearly; ``h0`` has at least twice as many slots as entries."""
    n_slots = h0.shape[0] // 8
    mask = n_slots - 1
    shift = _slot_shift(n_slots)
    for r in range(R0):
        s = rowi[2 * r]
        for e in range(s, rowi[2 * r + 2]):
            slot = _slot(s * V + (ent[4 * e] >> 32), shift)
            while h0[8 * slot + 4] >= 0:
                slot = (slot + 1) & mask
            for k in range(4):
                h0[8 * slot + k] = ent[4 * e + k]
            h0[8 * slot + 4] = s


def _build(V, tok0, map1, keys, koff, R, rbase, indices, cptr, cbase, rowi, rowf, ent, entf,
           nxt, closed):  # pragma: no cover (jit)
    """Fill ``_score``'s tables (its docstring) from the concatenated per-level arrays: the
    row records come with their first words set (``rowi[2g]``: the CSR pointers of every level,
    absolute, level l's from record ``rbase[l]``, one past its last row included;
    ``rowf[2g + 1]`` the row's log gamma, 0 past the last) and each entry's S value in
    ``entf[4e + 2]`` (``MknWalker`` writes them with numpy, from the stored arrays);
    ``indices`` (nnz,) the columns; ``nxt`` (nnz,) int32 scratch.

    The ``next`` row of an entry (h, w) of level l: ``h w`` minus its oldest token is the entry
    (parent(h), w) one level down, whose ``next`` is already known (level 0: the row of w);
    then one search among that row's children for the oldest token of h. -2 where that entry
    is not stored (patterns not nested), -1 where it is but ``h w`` is not a row.
    """
    M = R.shape[0]
    # children pointers (level l+1's keys in [r V, (r+1) V)): one merge against the sorted keys
    for l in range(M - 1):
        p = koff[l + 1]
        stop = p + R[l + 1]
        for r in range(R[l] + 1):
            while p < stop and keys[p] < r * V:
                p += 1
            cptr[cbase[l] + r] = p
    for l in range(M):
        found = 0
        for r in range(R[l]):
            if l == 0:
                tok = tok0[r]
                parent = -1
            else:
                key = keys[koff[l] + r]
                parent = key // V
                tok = key % V
                pc = rbase[l - 1] + parent
                plo = rowi[2 * pc]  # the row's columns rise: each search starts where the last ended
                pend = rowi[2 * pc + 2]
            for e in range(rowi[2 * (rbase[l] + r)], rowi[2 * (rbase[l] + r + 1)]):
                w = indices[e]
                nx = -2
                if l + 1 < M:
                    if l == 0:
                        a = map1[w]
                    else:
                        plo = _gallop(indices, plo, pend, w)
                        a = nxt[plo] if plo < pend and indices[plo] == w else -2
                    if a == -1:
                        nx = -1
                    elif a >= 0:
                        k = a * V + tok
                        c = cbase[l] + a
                        end = cptr[c + 1]
                        lo = lower_bound(keys, cptr[c], end, k)
                        nx = lo - koff[l + 1] if lo < end and keys[lo] == k else -1
                        if nx >= 0:
                            found += 1
                nxt[e] = nx
        # closed level: every row above is some entry's next (one-to-one), so what is unknown
        # (-2) is no row (-1), and a target not stored means no row above
        closed[l] = 1 if l + 1 < M and found == R[l + 1] else 0
        for e in range(rowi[2 * rbase[l]], rowi[2 * (rbase[l] + R[l])]):
            nx = nxt[e]
            if nx == -2 and closed[l]:
                nx = -1
                nxt[e] = -1
            ent[4 * e] = np.int64(indices[e]) << 32
            if nx >= 0:  # the next row's record: one cache line holds all three
                g = rbase[l + 1] + nx
                ent[4 * e] |= rowi[2 * g + 2] - rowi[2 * g]
                ent[4 * e + 1] = rowi[2 * g]
                entf[4 * e + 3] = rowf[2 * g + 1]
            else:
                ent[4 * e + 1] = nx
                entf[4 * e + 3] = 0.0


# the kernels' arguments in order (``native.Kernel``: dtype:ndim, or an int)
ARGSPECS = {
    "build": ["int", "i8:1", "i8:1", "i8:1", "i8:1", "i8:1", "i8:1", "i4:1", "i8:1", "i8:1",
              "i8:1", "f8:1", "i8:1", "f8:1", "i4:1", "u1:1"],
    "hash_level0": ["int", "i8:1", "int", "i8:1", "i8:1"],
    "score": ["i4:1", "i8:1", "int", "int", "int", "i8:1", "i8:1", "i8:1", "i8:1", "i8:1",
              "i8:1", "f8:1", "i8:1", "i8:1", "f8:1", "i8:1", "f8:1", "u1:1", "f8:1", "f8:1",
              "i8:2", "f8:1", "i8:2", "f8:1", "i8:1"],
}


def native_kernel(name: str):
    """``(cfunc, argspec)`` for ``native.kernel("ngram.score", name)``: ``build``,
    ``hash_level0`` or ``score`` (``_build``, ``_hash_level0``, ``_score``; arguments in their
    order). The inline helpers are compiled first and replace their Python versions in this
    module, because numba resolves them as globals when it compiles their callers; numba's
    error model is numpy's (no exception can be raised, so the object needs no numba
    runtime)."""
    from numba import njit

    from ..jitargs import arg1, arg2, argi, block_cfunc
    with _JIT_LOCK:
        g = globals()
        for helper in ("_row_state", "_slot", "_slot_shift", "lower_bound", "_gallop"):
            if not hasattr(g[helper], "py_func"):
                g[helper] = njit(inline="always", error_model="numpy")(g[helper])
    i8, i4, f8, u1 = np.int64, np.int32, np.float64, np.uint8
    if name == "build":
        build = njit(error_model="numpy")(_build)

        def entry(blk):  # pragma: no cover (jit)
            build(argi(blk, 0), arg1(blk, 1, i8), arg1(blk, 2, i8), arg1(blk, 3, i8),
                  arg1(blk, 4, i8), arg1(blk, 5, i8), arg1(blk, 6, i8), arg1(blk, 7, i4),
                  arg1(blk, 8, i8), arg1(blk, 9, i8), arg1(blk, 10, i8), arg1(blk, 11, f8),
                  arg1(blk, 12, i8), arg1(blk, 13, f8), arg1(blk, 14, i4), arg1(blk, 15, u1))
    elif name == "hash_level0":
        hash_level0 = njit(error_model="numpy")(_hash_level0)

        def entry(blk):  # pragma: no cover (jit)
            hash_level0(argi(blk, 0), arg1(blk, 1, i8), argi(blk, 2), arg1(blk, 3, i8),
                        arg1(blk, 4, i8))
    elif name == "score":
        score = njit(error_model="numpy")(_score)

        def entry(blk):  # pragma: no cover (jit)
            score(arg1(blk, 0, i4), arg1(blk, 1, i8), argi(blk, 2), argi(blk, 3), argi(blk, 4),
                  arg1(blk, 5, i8), arg1(blk, 6, i8), arg1(blk, 7, i8), arg1(blk, 8, i8),
                  arg1(blk, 9, i8), arg1(blk, 10, i8), arg1(blk, 11, f8), arg1(blk, 12, i8),
                  arg1(blk, 13, i8), arg1(blk, 14, f8), arg1(blk, 15, i8), arg1(blk, 16, f8),
                  arg1(blk, 17, u1), arg1(blk, 18, f8), arg1(blk, 19, f8), arg2(blk, 20, i8),
                  arg1(blk, 21, f8), arg2(blk, 22, i8), arg1(blk, 23, f8), arg1(blk, 24, i8))
    else:
        raise ValueError(f"no kernel {name!r} in ngram.score")
    return block_cfunc(entry), ARGSPECS[name]


def _kernels() -> dict | None:
    """The three loops as ``native.Kernel`` s (cached object code; compiled by numba the first
    time), or None without numba."""
    from .. import native
    return native.kernels("ngram.score", ARGSPECS)


# transparent huge pages for the tables (and the build's scratch) only for a job this long
# (positions forecast): the walk's random reads miss the TLB less on 2 MiB pages (30-60 ns a
# position less: 0.34-0.46 vs 0.40-0.55 CPU s per 1.5M positions), but the kernel's work to
# hand out 2 MiB pages (zeroed, found free or compacted) cost the build more than that on a
# shared VM: 0.41-0.45 vs 0.10-0.15 s of system time for the order-5 model's 250 MB
# (docs/speed.md, "A fresh `lmkit score` against a fresh KenLM process"): a long job repays it
HUGE_PAGES_AFTER = 10_000_000


def _zeros(n: int, dtype, huge: bool) -> np.ndarray:
    """A zeroed, writable (n,) array. ``huge``: numpy's own (on Linux numpy asks for transparent
    huge pages for arrays of 4 MiB and more); else an anonymous mapping of its own, which
    keeps the system's default (small pages, where huge pages are only given on request)."""
    nbytes = int(n) * np.dtype(dtype).itemsize
    if huge or nbytes == 0:
        return np.zeros(n, dtype=dtype)
    if hasattr(mmap, "MAP_ANONYMOUS"):  # private: a fault costs ~30 % less than shared memory's
        return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS),
                             dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype)


def _concat(parts, dtype, huge: bool, add=None) -> np.ndarray:
    """``np.concatenate(parts).astype(dtype)`` into a ``_zeros`` array, ``add[i]`` added to
    part i's values (the row pointers of every level, made absolute)."""
    out = _zeros(sum(len(p) for p in parts), dtype, huge)
    at = 0
    for i, p in enumerate(parts):
        out[at:at + len(p)] = p
        if add is not None:
            out[at:at + len(p)] += add[i]
        at += len(p)
    return out


class MknWalker:
    """Derived tables of one pure MKN ``SparseParams`` for ``_score`` (built once: ``walker``).

    ``log_proba(seqs, bos_id, eos_id)`` -> float64 (N,) natural logs, targets in sequence order.
    Memory: 32 bytes per stored entry, 32 per row (record, key, child pointer), 64 per slot
    of level 0's hash (160 MiB for the default corpus's order-5 model: 50 MiB of arrays).
    ``huge_pages``: allocate the tables as numpy does (huge pages where Linux gives them on
    request), else on the system's default pages (``HUGE_PAGES_AFTER``); the same numbers.
    """

    def __init__(self, params, loggammas, huge_pages: bool = False):
        self._k = _kernels()
        if self._k is None:
            raise MissingDependencyError("the compiled MKN walk needs numba to compile it once; "
                                         "install it with `pip install 'lmkit[fast]'`")
        V = params.vocab_size
        keys = [np.asarray(k, dtype=np.int64) for k in params.keys]
        # the groups as stored (a loaded folder's are never widened to SciPy CSRs here: the
        # walk reads them once, into its own tables): (data, indices, indptr) per group
        S = [stored_arrays(params.S, g) for g in range(len(params.S))]
        M = len(S)
        self.V = V
        self.map1 = np.full(V, -1, dtype=np.int64)
        self.map1[keys[0]] = np.arange(len(keys[0]))  # keys[0]: sorted token ids (validated)
        R = np.array([len(k) for k in keys], dtype=np.int64)
        self.koff = np.concatenate([[0, 0], np.cumsum(R[1:])])[:M].astype(np.int64)
        huge = self.huge_pages = bool(huge_pages)
        self.keys = _concat(keys[1:], np.int64, huge)
        nnz = np.array([len(data) for data, _, _ in S], dtype=np.int64)
        eoff = np.concatenate([[0], np.cumsum(nnz)[:-1]])
        self.rbase = np.concatenate([[0], np.cumsum(R + 1)[:-1]]).astype(np.int64)
        self.cbase = np.concatenate([[0], np.cumsum(R[:-1] + 1)])[:max(M - 1, 1)].astype(np.int64)
        self.cptr = _zeros(max(int((R[:-1] + 1).sum()), 1), np.int64, huge)
        self.rowi = _zeros(2 * int((R + 1).sum()), np.int64, huge)
        self.rowf = self.rowi.view(np.float64)
        self.ent = _zeros(4 * int(nnz.sum()), np.int64, huge)
        self.entf = self.ent.view(np.float64)
        # the first words of the records straight from the stored arrays (no concatenated
        # copies): row g's first entry and log gamma, entry e's S value (float32 values widen
        # exactly); the build kernel fills the rest
        for l, ((data, _, ptr), g0, e0) in enumerate(zip(S, self.rbase, eoff)):
            rec = self.rowi[2 * g0: 2 * (g0 + R[l] + 1): 2]
            rec[:] = ptr
            rec += e0
            self.rowf[2 * g0 + 1: 2 * (g0 + R[l]): 2] = loggammas[l]
            self.entf[4 * e0 + 2: 4 * (e0 + nnz[l]): 4] = data
        self.closed = np.zeros(M, dtype=np.uint8)
        indices = _concat([ind for _, ind, _ in S], np.int32, huge)
        self._k["build"](V, np.ascontiguousarray(keys[0]), self.map1, self.keys, self.koff, R,
                         self.rbase, indices, self.cptr, self.cbase, self.rowi, self.rowf,
                         self.ent, self.entf, _zeros(len(indices), np.int32, huge), self.closed)
        self.h0 = _zeros(8 << max(4, int(2 * nnz[0]).bit_length()), np.int64, huge)
        self.h0.fill(-1)
        self.h0f = self.h0.view(np.float64)
        self._k["hash_level0"](V, self.rowi, R[0], self.ent, self.h0)
        self.logq = np.log(params.q)

    def log_proba(self, seqs: list, bos_id: int, eos_id: int) -> np.ndarray:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
        return self.log_proba_flat(flat, lengths, bos_id, eos_id)

    def log_proba_flat(self, flat: np.ndarray, lengths: np.ndarray, bos_id: int,
                       eos_id: int) -> np.ndarray:
        """``log_proba`` of the sequences given flattened: ``flat`` (T,) every id in order,
        ``lengths`` int64 (S,) each sequence's count (``Tokenizer.encode_flat``)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        total = int(lengths.sum())
        if len(flat) != total:
            raise ValueError(f"{len(flat)} ids for sequences of {total}")
        if total and (flat.min() < 0 or flat.max() >= self.V):
            bad = int(flat[(flat < 0) | (flat >= self.V)][0])
            raise InputError(f"token id {bad} is out of range for a vocabulary of {self.V}; "
                             "encode the text with this model's tokenizer")
        out = np.empty(total + len(lengths))
        M = len(self.closed)
        st, nst = np.zeros((M + 1, 3), dtype=np.int64), np.zeros((M + 1, 3), dtype=np.int64)
        self._k["score"](np.ascontiguousarray(flat, dtype=np.int32),
                         np.ascontiguousarray(lengths), bos_id, eos_id, self.V, self.map1,
                         self.keys, self.koff, self.cptr, self.cbase, self.rowi, self.rowf,
                         self.rbase, self.h0, self.h0f, self.ent, self.entf, self.closed,
                         self.logq, out, st, np.zeros(M + 1), nst, np.zeros(M + 1),
                         np.zeros(M + 1, dtype=np.int64))
        return out


# the tables cost ~0.1 us per stored entry to build and save ~0.5 us per scored position over
# the numpy route (measured on the default corpus's order-5 model): build them once the
# positions scored through one model reach this fraction of its entries (ski rental: a small
# job never pays more than about twice what it would have cost either way)
BUILD_AFTER = 1 / 8


def walker(params, loggammas, seqs=(), expected: int = 0, n_positions: int | None = None):
    """The ``MknWalker`` of ``params`` (kept on the frozen object), or None when the compiled
    loop is unavailable (no numba) or switched off (``scoring.USE_COMPILED = False``), or while
    the positions scored through ``params`` (``seqs``' targets counted in) are still fewer
    than ``BUILD_AFTER`` times its stored entries (the numpy route is cheaper until then).

    ``expected``: positions the caller forecasts it will score next (``lmkit score`` knows its
    input's size), counted in the decision but not kept: a long job builds the tables at its
    start instead of first scoring an eighth of the entries' worth on the slower route.
    ``n_positions``: the targets of ``seqs`` when given as a count instead."""
    from .. import scoring
    if not HAVE_NUMBA or not scoring.USE_COMPILED:
        return None
    w = params.__dict__.get("_mkn_walker")
    if w is None:
        if n_positions is None:
            n_positions = sum(map(len, seqs)) + len(seqs)
        seen = params.__dict__.get("_mkn_positions", 0) + n_positions
        object.__setattr__(params, "_mkn_positions", seen)
        n_entries = sum(len(stored_arrays(params.S, g)[0]) for g in range(len(params.S)))
        if seen + max(int(expected), 0) < BUILD_AFTER * n_entries:
            return None
        if _kernels() is None:
            return None
        w = MknWalker(params, loggammas,
                      huge_pages=seen + max(int(expected), 0) >= HUGE_PAGES_AFTER)
        object.__setattr__(params, "_mkn_walker", w)
    return w
