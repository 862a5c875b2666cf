r"""Exact SentencePiece BPE encoding of many lines through a cache of whitespace units (compiled).

Input: the lines of a batch (``str``, no "\n" inside) and a ``Tokenizer`` whose model passes
``decomposable`` (below). Output: ``(ids, lengths)``: int32 (T,) the ids of every line in
order, int64 (L,) each line's number of ids; exactly ``Tokenizer.encode_batch``'s lists,
flattened (``tests/test_wordcache.py`` compares them on odd text).

Why it is exact: a line's *units* are its maximal pieces "spaces, then non-spaces" (``"a  bc
d"`` -> ``"a"``, ``"  bc"``, ``" d"``). SentencePiece writes a space as "▁"; every unit but a
line's first starts where a non-space character is followed by "▁". When no vocabulary piece
holds "▁" after a character that is not "▁" (pieces are "▁"-runs or ``▁*[^▁]+``, as
SentencePiece's trainer makes them with ``split_by_whitespace``), no BPE symbol can ever span
that point, so every merge stays inside one unit; BPE's merge order (highest score first, the
leftmost pair on a tie) restricted to one unit is the same whether the unit is encoded alone or
in its line (positions shift by a constant), and the byte fallback is per symbol. So a line's
ids are its units' ids, concatenated. ``decomposable`` checks the model: BPE, the identity
normalizer (no rewrite rule, no dummy prefix, no whitespace removal, spaces escaped to "▁"),
whitespace as prefix, no user-defined symbols, and the "▁" rule for every piece. A unigram
model is not decomposed: its Viterbi sums float scores along the line, so a unit's best
segmentation could differ by rounding from the same unit alone. lmkit's own rule for a literal
"▁" in the text (``Tokenizer.encode``: split there, its three byte pieces between) splits at the
same points whether applied to a unit or its line, so units holding it go through
``encode_batch`` as every new unit does.

How: the batch is joined into UTF-8 bytes; one compiled pass splits it into units (boundaries are
ASCII bytes, so no character is cut), looks each up in an open-addressing hash of the units
seen before (FNV-1a over the bytes, the bytes compared on a hit) and appends the unseen ones;
Python encodes only those (``encode_batch``, one call) and a second pass gathers every line's
ids. SentencePiece's BPE costs ~0.5 us a token here, the cached path ~0.08 us (248k lines of
the default corpus, the cache warm: 0.19-0.24 vs 1.42-1.47 CPU s). The cache is bounded
(``MAX_UNITS`` units, ``MAX_BYTES`` bytes of text: emptied when full) and per ``Tokenizer``.
The passes are numba source run as cached native object code (``native.py``, ``native_kernel``
here): compiled once, then loaded by later processes without importing numba. They allocate
nothing (the caller sizes every array) and cannot raise.
"""
from __future__ import annotations

import importlib.util
import threading
from itertools import chain

import numpy as np

HAVE_NUMBA = importlib.util.find_spec("numba") is not None  # to compile the passes once
MAX_UNITS = 1 << 19
MAX_BYTES = 32 << 20
_JIT_LOCK = threading.Lock()
_SPACE_SYMBOL = "\u2581"


def decomposable(pieces, normalizer: dict, trainer: dict) -> bool:
    """Whether a SentencePiece model's encoding is the concatenation of its units' encodings
    (the module docstring): ``pieces`` ``(piece, type)`` of the ModelProto, ``normalizer`` and
    ``trainer`` its NormalizerSpec and TrainerSpec fields (number -> value)."""
    if trainer.get(3, 1) != 2:  # model_type BPE
        return False
    if trainer.get(24, 0):  # treat_whitespace_as_suffix
        return False
    if normalizer.get(1, b"nmt_nfkc") != b"identity" or normalizer.get(2, b""):
        return False  # a normalization rule or its compiled character map
    if normalizer.get(3, 1) or normalizer.get(4, 1) or not normalizer.get(5, 1):
        return False  # add_dummy_prefix, remove_extra_whitespaces, not escape_whitespaces
    for piece, kind in pieces:
        if kind == 4:  # USER_DEFINED: matched before BPE, anywhere
            return False
        if kind in (1, 5) and (_SPACE_SYMBOL in piece.lstrip(_SPACE_SYMBOL) or " " in piece
                               or "\n" in piece):
            return False
    return True


def _fnv(text, s, e):  # pragma: no cover (jit)
    h = np.uint64(0xCBF29CE484222325)
    for p in range(s, e):
        h = (h ^ np.uint64(text[p])) * np.uint64(0x100000001B3)
    return h


def _shift(cap: int) -> int:
    """The Fibonacci hash's shift for ``cap`` (a power of two) slots: 64 - log2(cap)."""
    return 65 - cap.bit_length()


def _lookup(text, slot_h, slot_u, uhash, arena, aoff, n_units, uids,
            shift):  # pragma: no cover (jit)
    """Split ``text`` (uint8, lines ending "\n") into units; ``uids`` gets each unit's id and
    -1 per line end. Unseen units are appended (bytes to ``arena`` from ``aoff[n_units]``,
    ``aoff[u + 1]`` their end, ``uhash[u]``) and hashed into ``slot_h``/``slot_u`` (-1:
    empty; ``shift`` = ``_shift(len(slot_u))``). Returns (entries written to ``uids``, the new
    number of units, lines); entries -1 when the arrays were too short (nothing is written
    past them)."""
    cap = slot_u.shape[0]
    mask = cap - 1
    shift = np.uint64(shift)
    n = text.shape[0]
    p = 0
    k = 0
    lines = 0
    end = aoff[n_units]
    while p < n:
        if k >= uids.shape[0]:  # the caller's bounds were wrong: stop before writing past them
            return -1, n_units, lines
        if text[p] == 10:
            uids[k] = -1
            k += 1
            lines += 1
            p += 1
            continue
        s = p
        while p < n and text[p] == 32:
            p += 1
        while p < n and text[p] != 32 and text[p] != 10:
            p += 1
        ln = p - s
        h = _fnv(text, s, p)
        slot = np.int64((h * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while True:
            u = slot_u[slot]
            if u < 0:  # unseen: append
                u = n_units
                if u + 1 >= aoff.shape[0] or u >= uhash.shape[0] or end + ln > arena.shape[0]:
                    return -1, n_units, lines
                for j in range(ln):
                    arena[end + j] = text[s + j]
                end += ln
                aoff[u + 1] = end
                uhash[u] = h
                slot_h[slot] = h
                slot_u[slot] = u
                n_units += 1
                break
            if slot_h[slot] == h and aoff[u + 1] - aoff[u] == ln:
                a = aoff[u]
                same = True
                for j in range(ln):
                    if arena[a + j] != text[s + j]:
                        same = False
                        break
                if same:
                    break
            slot = (slot + 1) & mask
        uids[k] = u
        k += 1
    return k, n_units, lines


def _rehash(uhash, n_units, slot_h, slot_u, shift):  # pragma: no cover (jit)
    """Insert units 0..n_units - 1 (their hashes ``uhash``) into empty slots."""
    mask = slot_u.shape[0] - 1
    shift = np.uint64(shift)
    for u in range(n_units):
        h = uhash[u]
        slot = np.int64((h * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while slot_u[slot] >= 0:
            slot = (slot + 1) & mask
        slot_h[slot] = h
        slot_u[slot] = u


def _gather(uids, k, toff, tok, ids, lengths):  # pragma: no cover (jit)
    """Fill ``ids`` int32 (T,) with every unit's ids in order and ``lengths`` int64 (lines,)
    with each line's count (a line per -1 in ``uids[:k]``); T as ``UnitCache.encode`` counts."""
    pos = 0
    start = 0
    line = 0
    for i in range(k):
        u = uids[i]
        if u < 0:
            lengths[line] = pos - start
            start = pos
            line += 1
        else:
            for j in range(toff[u], toff[u + 1]):
                ids[pos] = tok[j]
                pos += 1


# the kernels' arguments in order (``native.Kernel``: dtype:ndim, or an int)
ARGSPECS = {"lookup": ["u1:1", "u8:1", "i8:1", "u8:1", "u1:1", "i8:1", "int", "i8:1", "int",
                       "i8:1"],
            "rehash": ["u8:1", "int", "u8:1", "i8:1", "int"],
            "gather": ["i8:1", "int", "i8:1", "i4:1", "i4:1", "i8:1"]}


def native_kernel(name: str):
    """``(cfunc, argspec)`` for ``native.kernel("wordcache", name)``: ``lookup`` (``_lookup``'s
    arguments, then an int64 (3,) array for its three results), ``rehash`` or ``gather``."""
    from numba import njit

    from .jitargs import arg1, argi, block_cfunc
    with _JIT_LOCK:
        if not hasattr(_fnv, "py_func"):
            globals()["_fnv"] = njit(inline="always", error_model="numpy")(_fnv)
    u1, u8, i4, i8 = np.uint8, np.uint64, np.int32, np.int64
    if name == "lookup":
        lookup = njit(error_model="numpy")(_lookup)

        def entry(blk):  # pragma: no cover (jit)
            res = arg1(blk, 9, i8)
            res[0], res[1], res[2] = lookup(arg1(blk, 0, u1), arg1(blk, 1, u8), arg1(blk, 2, i8),
                                            arg1(blk, 3, u8), arg1(blk, 4, u1), arg1(blk, 5, i8),
                                            argi(blk, 6), arg1(blk, 7, i8), argi(blk, 8))
    elif name == "rehash":
        rehash = njit(error_model="numpy")(_rehash)

        def entry(blk):  # pragma: no cover (jit)
            rehash(arg1(blk, 0, u8), argi(blk, 1), arg1(blk, 2, u8), arg1(blk, 3, i8),
                   argi(blk, 4))
    elif name == "gather":
        gather = njit(error_model="numpy")(_gather)

        def entry(blk):  # pragma: no cover (jit)
            gather(arg1(blk, 0, i8), argi(blk, 1), arg1(blk, 2, i8), arg1(blk, 3, i4),
                   arg1(blk, 4, i4), arg1(blk, 5, i8))
    else:
        raise ValueError(f"no kernel {name!r} in wordcache")
    return block_cfunc(entry), ARGSPECS[name]


def kernels() -> dict | None:
    """The three passes as ``native.Kernel`` s (cached object code; compiled by numba the first
    time), or None without numba."""
    from . import native
    return native.kernels("wordcache", ARGSPECS)


def _grown(a: np.ndarray, need: int, fill=0) -> np.ndarray:
    """``a`` itself when it holds ``need`` items, else a copy at least twice as long."""
    if len(a) >= need:
        return a
    b = np.full(max(need, 2 * len(a)), fill, dtype=a.dtype)
    b[:len(a)] = a
    return b


def _texts(arena: np.ndarray, aoff: np.ndarray, n0: int, n1: int) -> list:
    """Units ``n0..n1-1`` as ``str``: unit u is ``arena[aoff[u]:aoff[u + 1]]`` (UTF-8, stored
    one after another). One decode of them all, a "\\n" after each (no unit holds one: lines
    are split at it), then one split: ~10x cheaper than a decode per unit.

    >>> _texts(np.frombuffer(b"a bc", np.uint8), np.array([0, 1, 4]), 0, 2)
    ['a', ' bc']
    """
    n = n1 - n0
    ends = aoff[n0 + 1:n1 + 1] - aoff[n0]  # each unit's end, from the first's start
    joined = np.empty(int(ends[-1]) + n if n else 0, dtype=np.uint8)
    sep = ends + np.arange(n)  # where each unit's newline goes
    keep = np.ones(len(joined), dtype=bool)
    keep[sep] = False
    joined[sep] = 10
    joined[keep] = arena[aoff[n0]:aoff[n1]]
    return joined.tobytes().decode("utf-8").split("\n")[:n]


class UnitCache:
    """The units seen by one tokenizer and their ids; ``encode(lines)`` -> ``(ids, lengths)``.
    ``encode_batch(lines, num_threads)``: the tokenizer's exact encoder, called for unseen
    units only. One batch at a time (a lock)."""

    def __init__(self, encode_batch, kernels: dict):
        self._encode_batch = encode_batch
        self._k = kernels  # ``kernels()``
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.n_units = 0
        self.slot_h = np.zeros(1 << 12, dtype=np.uint64)
        self.slot_u = np.full(1 << 12, -1, dtype=np.int64)
        self.uhash = np.zeros(1 << 11, dtype=np.uint64)
        self.arena = np.zeros(1 << 16, dtype=np.uint8)
        self.aoff = np.zeros(1 << 11, dtype=np.int64)
        self.tok = np.zeros(1 << 12, dtype=np.int32)
        self.toff = np.zeros(1 << 11, dtype=np.int64)

    def encode(self, lines: list, num_threads=None):
        """``(ids, lengths)`` of ``lines``, or None when this batch is not for the cache (a
        line holding "\n", text that is not UTF-8 encodable, a batch too large for it): the
        caller encodes it the plain way, which also names any bad line."""
        try:
            text = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        except UnicodeEncodeError:  # a lone surrogate: encode_batch names the line
            return None
        buf = np.frombuffer(text, dtype=np.uint8)
        n_ends = int(np.count_nonzero(buf == 10))  # len(lines), unless a line holds "\n"
        if n_ends != len(lines):  # not this cache's batch
            return None
        bound = int(np.count_nonzero(buf == 32)) + n_ends  # units: a line's first, one a space
        if bound > MAX_UNITS // 2 or len(text) > MAX_BYTES // 2:
            return None
        jit = self._k
        with self._lock:
            if self.n_units + bound > MAX_UNITS or self.aoff[self.n_units] + len(text) > MAX_BYTES:
                self._reset()
            n0 = self.n_units
            if 2 * (n0 + bound) > len(self.slot_u):
                cap = 1 << (2 * (n0 + bound)).bit_length()
                self.slot_h = np.zeros(cap, dtype=np.uint64)
                self.slot_u = np.full(cap, -1, dtype=np.int64)
                jit["rehash"](self.uhash, n0, self.slot_h, self.slot_u, _shift(cap))
            self.uhash = _grown(self.uhash, n0 + bound)
            self.aoff = _grown(self.aoff, n0 + bound + 1)
            self.arena = _grown(self.arena, int(self.aoff[n0]) + len(text))
            uids = np.empty(bound + n_ends, dtype=np.int64)  # the units and the line ends
            res = np.zeros(3, dtype=np.int64)
            jit["lookup"](buf, self.slot_h, self.slot_u, self.uhash, self.arena, self.aoff, n0,
                          uids, _shift(len(self.slot_u)), res)
            k, n1, n_lines = (int(x) for x in res)
            if k < 0:
                self._reset()
                raise RuntimeError("wordcache: a batch outgrew the bounds computed for it")
            if n1 > n0:
                try:
                    new = _texts(self.arena, self.aoff, n0, n1)
                    seqs = self._encode_batch(new, num_threads=num_threads)
                except BaseException:
                    self._reset()  # the new units have no ids: forget them all
                    raise
                counts = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
                t0 = int(self.toff[n0])
                self.toff = _grown(self.toff, n1 + 1)
                self.toff[n0 + 1:n1 + 1] = t0 + np.cumsum(counts)
                self.tok = _grown(self.tok, int(self.toff[n1]))
                self.tok[t0:self.toff[n1]] = np.fromiter(chain.from_iterable(seqs),
                                                         dtype=np.int32, count=int(counts.sum()))
                self.n_units = n1
            u = uids[:k][uids[:k] >= 0]
            ids = np.empty(int((self.toff[u + 1] - self.toff[u]).sum()), dtype=np.int32)
            lengths = np.empty(n_lines, dtype=np.int64)
            jit["gather"](uids, k, self.toff, self.tok, ids, lengths)
            return ids, lengths
