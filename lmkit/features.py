"""Context feature groups: which one-hot features a position's context switches on.

Input: a padded token buffer and the positions of the targets in it. Output: for each group, one
int64 *row key* per target position (``-1`` = the group has no feature at this position).

A model is a list of groups; each group is one block of one-hot input features of the softmax
layer, with its own weight matrix ``(n_rows, V)``:

- ``Window(k)``: the token ``k`` positions back (``k >= 1``); the row key is the token id, so the
  matrix has ``V`` rows. Before the start of a sequence the context is BOS (left padding).
- ``Suffix(m)``: the exact previous ``m`` tokens as one feature (an n-gram history). Histories
  are *chained ids*: the history ``h = (h_1 .. h_m)`` (oldest first) is the pair (row of its
  suffix ``h' = (h_2 .. h_m)`` in the ``Suffix(m-1)`` table, oldest token ``h_1``), packed as the
  row key ``parent_row * V + h_1`` (``Suffix(1)``: parent row 0, so the key is the token id).
  Exact (no hashing, no collisions) and bounded by ``R_{m-1} * V`` whatever m is, so any order
  works at any vocabulary size. Suffix groups therefore come nested, ``Suffix(1..M)`` in order:
  the rows of ``Suffix(m-1)`` are part of the key of ``Suffix(m)`` (``group_rows``). Since a key
  holds its parent row, ``key // V`` *is* the row of ``h'`` — no lookup needed to back off.
  As in KenLM, a history may reach back to one BOS but not past it: positions whose m-token
  history would need more than one BOS have no feature (-1).

``context_rows`` / ``next_rows``: token sequences -> per group the row of every target position
in a model's tables (``group_rows`` after ``pad_sequences``), what solvers and scorers read.
The kinds of group (with ``Skip`` here, ``clusters.ClusterHistory``, ``linepos.LinePosition``)
are registered in ``kinds.py``.

Padding layout (see ``pad_sequences``): each sequence becomes ``[BOS]*P + ids + [EOS]`` and the
targets are ``ids + [EOS]``, so EOS is always a target and BOS never is.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np

from .config import ModelConfig
from .errors import InputError, OptionError
from .sparse import lookup_rows


@dataclass(frozen=True)
class Window:
    """One-hot of the token ``k`` positions back."""

    k: int

    @property
    def name(self) -> str:
        return f"window{self.k}"

    @property
    def reach(self) -> int:
        return self.k

    def row_keys(self, buf, pos, starts, vocab_size: int) -> np.ndarray:
        """Row key (the token id) per target position; never -1 thanks to BOS padding."""
        return buf[pos - self.k].astype(np.int64)

    def n_rows(self, vocab_size: int) -> int | None:
        return vocab_size


@dataclass(frozen=True)
class Suffix:
    """One-hot of the exact previous ``m`` tokens (an n-gram history of an order-(m+1) model)."""

    m: int

    @property
    def name(self) -> str:
        return f"suffix{self.m}"

    @property
    def reach(self) -> int:
        return self.m

    def row_keys(self, buf, pos, starts, vocab_size: int, parent_rows=None) -> np.ndarray:
        """Chained key ``parent_rows * V + buf[pos-m]`` per position (-1: no feature).

        ``parent_rows``: the ``Suffix(m-1)`` row of each position (-1 = unseen history; not
        needed for m = 1). -1 where the parent is unseen or the history would need 2+ BOS.
        """
        oldest = buf[pos - self.m].astype(np.int64)
        if self.m == 1:
            return oldest
        if parent_rows is None:
            raise InputError(f"suffix{self.m} keys need the suffix{self.m - 1} rows: suffix groups "
                             "must be suffix1..suffixM in order; build them with make_groups(order=N)")
        keys = np.asarray(parent_rows, dtype=np.int64) * vocab_size + oldest
        # allowed: history reaches back at most to the single BOS just before the sequence start
        keys[(parent_rows < 0) | (pos - self.m < starts - 1)] = -1
        return keys

    def n_rows(self, vocab_size: int) -> int | None:
        return None  # rows are the observed histories, mapped to compact ids


def check_suffix_chain(groups) -> int:
    """M such that the suffix groups of ``groups`` are ``Suffix(1..M)`` in this order (0: none)."""
    ms = [g.m for g in groups if isinstance(g, Suffix)]
    if ms != list(range(1, len(ms) + 1)):
        raise InputError(f"suffix groups must be suffix1..suffixM in order (chained history ids), "
                         f"got {[g.name for g in groups]}; build them with make_groups(order=N)")
    return len(ms)


def find_sorted(table: np.ndarray, queries: np.ndarray, compiled: bool = False) -> np.ndarray:
    """``np.searchsorted(table, queries)``, faster for big tables: queries are searched in sorted
    order (each search starts where the previous one ended, and memory is read in order), then
    put back. Measured on a 6M-row table, 500k random queries: 0.19 s -> 0.04 s. ``compiled``
    (the training's searches; the query side keeps numpy, so scoring never loads a kernel for
    it), numba installed, at least ``COMPILED_MIN_QUERIES`` non-negative integer queries and an
    int64 table: ``fastkeys.search_sorted`` (LSD radix sort, one galloping walk; 0.4x the CPU
    of the packed sort on 700k queries). Else non-negative integer queries are sorted by value
    with their positions in the low bits when that fits in 63 bits (0.6x the CPU of
    ``argsort`` on 1M queries; the order of equal queries does not change their answers).
    Every route gives numpy's answers."""
    queries = np.asarray(queries)
    n = len(queries)
    if len(table) < 1 << 16 or n < 1 << 12:
        return np.searchsorted(table, queries)
    out = np.empty(n, dtype=np.int64)
    small = queries.dtype.kind in "iu" and int(queries.min()) >= 0
    fast = _compiled("search_sorted") if compiled and small and n >= COMPILED_MIN_QUERIES \
        else None
    if fast is not None and table.dtype == np.int64 and int(queries.max()) < 1 << 62:
        # a slice of queries at a time: the sort's scratch stays 32 bytes x SEARCH_SLICE
        table, queries = np.ascontiguousarray(table), np.ascontiguousarray(queries, np.int64)
        step = min(n, SEARCH_SLICE)
        buf, cnt = np.empty((4, step), dtype=np.int64), np.empty((1 << RADIX_BITS) + 1, np.int64)
        for lo in range(0, n, step):
            m = min(step, n - lo)
            if m < step:  # the last slice: scratch of its own size (C-contiguous)
                buf = np.empty((4, m), dtype=np.int64)
            fast(queries[lo:lo + m], table, out[lo:lo + m], buf, cnt)
        return out
    b = int(n - 1).bit_length()
    if small and int(queries.max()).bit_length() + b <= 63:
        packed = (queries.astype(np.int64) << b) | np.arange(n, dtype=np.int64)
        packed.sort()
        out[packed & ((1 << b) - 1)] = np.searchsorted(table, packed >> b)
        return out
    order = np.argsort(queries, kind="stable")
    out[order] = np.searchsorted(table, queries[order])
    return out


def sort_values(a: np.ndarray) -> None:
    """``a.sort()`` (int64, in place), by the compiled LSD radix sort (``fastkeys.sort_values``)
    for at least ``COMPILED_MIN_QUERIES`` non-negative values when numba is installed: the
    same array, at ~1/3 of the CPU of numpy's sort of int64 here."""
    fast = _compiled("sort_values") if len(a) >= COMPILED_MIN_QUERIES else None
    if (fast is None or a.dtype != np.int64 or not a.flags.c_contiguous
            or int(a.min()) < 0):
        a.sort()
        return
    fast(a, np.empty(len(a), dtype=np.int64), np.empty((1 << RADIX_BITS) + 1, dtype=np.int64))


def lookup_keys(keys: np.ndarray | None, row_keys: np.ndarray, order=None,
                load: bool = True) -> np.ndarray:
    """``sparse.lookup_rows`` (row of each key in a sorted table, -1 if absent or if the key is
    -1) via ``find_sorted``, searching only the keys that are not -1. ``order``: a permutation
    of the positions under which the keys that are not -1 are already sorted (``history_order``),
    so no sort is needed. With numba and at least ``COMPILED_MIN_QUERIES`` queries the search is
    ``fastkeys`` (radix sort + one merge walk; the same rows), unless ``USE_COMPILED`` is False;
    with ``load`` False only if something has imported it already."""
    row_keys = np.asarray(row_keys, dtype=np.int64)
    if keys is None:
        return row_keys
    fast = None
    if len(row_keys) >= COMPILED_MIN_QUERIES and len(keys):
        fast = _compiled_keys() if load else _FAST if USE_COMPILED else None
        fast = None if fast is _UNSET else fast
    if fast is not None:
        table = np.ascontiguousarray(keys, dtype=np.int64)
        queries, n = np.ascontiguousarray(row_keys), len(row_keys)
        out = np.empty(n, dtype=np.int64)
        if order is None:  # many queries: radix-sorted and merged in compiled code
            fast.find_keys(queries, table, out, np.empty((4, n), dtype=np.int64),
                           np.empty((1 << RADIX_BITS) + 1, dtype=np.int64))
            return out
        if len(order) != n:  # the compiled walk reads row_keys[order[i]] unchecked
            raise ValueError(f"order has {len(order)} positions for {n} keys")
        fast.find_ordered(table, queries, np.ascontiguousarray(order, dtype=np.int64), out,
                          np.empty((2, n), dtype=np.int64))
        return out
    out = np.full(len(row_keys), -1, dtype=np.int64)
    if order is None:
        ok = np.flatnonzero(row_keys >= 0)
        search = find_sorted
    else:
        ok = order[row_keys[order] >= 0]
        search = np.searchsorted
    if len(keys) == 0 or len(ok) == 0:
        return out
    k = row_keys[ok]
    idx = np.minimum(search(keys, k), len(keys) - 1)
    out[ok] = np.where(keys[idx] == k, idx, -1)
    return out


USE_COMPILED = True  # False: always the numpy searches (tests compare the two)
COMPILED_MIN_QUERIES = 1 << 14  # fewer queries use numpy (and never import numba)
SEARCH_SLICE = 1 << 20  # queries per compiled search (find_sorted): its scratch, 32 MiB
RADIX_BITS = 11  # bits per radix pass of the compiled sort: 2,048 buckets, whose fronts stay cached
_UNSET = object()
_FAST = _UNSET


class _CompiledKeys:
    """``fastkeys``' two searches as ``native.Kernel`` s (cached object code)."""

    def __init__(self, find_keys, find_ordered):
        self.find_keys, self.find_ordered = find_keys, find_ordered


def _compiled_keys():
    """The compiled searches (``fastkeys``) when numba is installed (and ``USE_COMPILED``),
    else None."""
    global _FAST
    if not USE_COMPILED:
        return None
    if _FAST is _UNSET:
        from . import native
        fk, fo = native.kernel("fastkeys", "find_keys"), native.kernel("fastkeys", "find_ordered")
        _FAST = _CompiledKeys(fk, fo) if fk is not None and fo is not None else None
    return _FAST


def _compiled(name: str):
    """The ``fastkeys`` kernel ``name`` (loaded on first use: the query side never asks for
    the training's), or None without numba or with ``USE_COMPILED`` False."""
    if not USE_COMPILED:
        return None
    from . import native
    return native.kernel("fastkeys", name)


def history_order(buf, pos, reach: int, vocab_size: int):
    """A permutation of the positions sorting their histories ``(buf[pos-1], ..., buf[pos-reach])``
    lexicographically, newest token first; None for fewer than 4096 positions (each key search
    then sorts its own queries).

    Chained ``Suffix(m)`` rows are numbered in exactly this order (row of a history = rank of
    ``(newest, ..., oldest)``: key = parent row * V + oldest token, by induction on m), so under
    this one permutation every order's keys come out sorted and ``lookup_keys`` needs no sort.
    The history is packed into as few int64 keys as hold it (``k`` tokens each, ``V**k`` <
    2**63: one key for V = 4096 up to 5 tokens), sorted newest key first (``np.lexsort``).
    """
    if reach < 1 or len(pos) < 1 << 12:
        return None
    k = 1
    while k < reach and vocab_size ** (k + 1) < 2 ** 63:
        k += 1
    packed = []
    for a in range(1, reach + 1, k):
        key = np.zeros(len(pos), dtype=np.int64)
        for j in range(a, min(a + k, reach + 1)):
            key = key * vocab_size + buf[pos - j]
        packed.append(key)
    if len(packed) == 1:
        return np.argsort(packed[0])
    return np.lexsort(packed[::-1])  # lexsort's primary key is the last


def group_rows(groups, keys, buf, pos, starts, vocab_size: int, order=None) -> list:
    """Row of every target position per group (-1: no feature), int64 (N,) each.

    ``keys``: per group the row table (None = rows are token ids). A suffix group's keys are
    built from the rows of the suffix group one shorter, so the groups are walked in order.
    ``order``: ``history_order`` of the positions, or None (each key search then sorts its own
    queries; ``context_rows`` passes it).
    """
    check_suffix_chain(groups)
    rows, suffix_rows = [], None
    for g, k in zip(groups, keys):
        if isinstance(g, Suffix):
            # the suffix groups' searches (sorted by the history order) are cheap in numpy too:
            # they never import numba themselves, so a pure n-gram model's short jobs stay on
            # the numpy route (docs/speed.md "Start-up"); once a keyed group has, they use it
            r = lookup_keys(k, g.row_keys(buf, pos, starts, vocab_size, suffix_rows), order,
                            load=False)
            suffix_rows = r
        else:
            r = lookup_keys(k, g.row_keys(buf, pos, starts, vocab_size))
        rows.append(r)
    return rows


def context_rows(groups, keys, seqs, vocab_size: int, bos_id: int, eos_id: int,
                 with_order: bool = False):
    """Rows per group for every target of ``seqs`` (EOS included).

    Returns ``(rows, targets, seq_index)``: list of int64 (N,) arrays, int64 (N,), int64 (N,);
    with ``with_order`` also the positions sorted by history (``features.history_order``, or
    None when it was not computed), under which every suffix group's rows are ascending.
    """
    pad = max(g.reach for g in groups)
    buf, pos, starts = pad_sequences(seqs, pad, bos_id, eos_id)
    M = check_suffix_chain(groups)
    order = history_order(buf, pos, M, vocab_size) if M > 1 else None
    rows = group_rows(groups, keys, buf, pos, starts, vocab_size, order)
    n_targets = np.fromiter((len(s) + 1 for s in seqs), dtype=np.int64, count=len(seqs))
    seq_index = np.repeat(np.arange(len(seqs)), n_targets)
    if with_order:
        return rows, buf[pos].astype(np.int64), seq_index, order
    return rows, buf[pos].astype(np.int64), seq_index


def next_rows(groups, keys, prefix, vocab_size: int, bos_id: int) -> list:
    """Rows per group for the position right after ``prefix`` (token ids of the sequence so far)."""
    pad = max(g.reach for g in groups)
    buf = np.concatenate([np.full(pad, bos_id, np.int32), np.asarray(prefix, np.int32)])
    pos = np.array([len(buf)], dtype=np.int64)
    buf = np.concatenate([buf, np.zeros(1, np.int32)])  # placeholder target slot
    starts = np.array([pad], dtype=np.int64)
    return group_rows(groups, keys, buf, pos, starts, vocab_size)


def decode_histories(keys: list, m: int, vocab_size: int) -> np.ndarray:
    """(R_m, m) token ids of every row of ``Suffix(m)``, oldest first.

    ``keys``: the chained key tables of ``Suffix(1..M)`` (M >= m). Example: V = 10,
    keys = [[3, 4], [1 * 10 + 7]] -> m = 2 gives [[7, 4]] (row 1 of suffix1 is token 4).
    """
    out = np.asarray(keys[0], dtype=np.int64)[:, None]
    for level in range(1, m):
        k = np.asarray(keys[level], dtype=np.int64)
        out = np.concatenate([(k % vocab_size)[:, None], out[k // vocab_size]], axis=1)
    return out


def decode_suffix_key(key: int, m: int, vocab_size: int, keys: list) -> list[int]:
    """Token ids of one chained ``Suffix(m)`` key, oldest first (``keys``: tables of Suffix(1..)).

    Example: V = 10, keys = [[3, 4]], key 17 (m = 2: parent row 1 = token 4, oldest 7) -> [7, 4].
    """
    out = []
    for level in range(m - 1, 0, -1):
        out.append(int(key % vocab_size))
        key = int(keys[level - 1][key // vocab_size])
    return out + [int(key)]


def encode_histories(keys: list, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Row of each history in the ``Suffix(m)`` table, -1 if unseen; ``tokens`` (n, m) oldest first.

    Inverse of ``decode_histories``: the newest token first, then one chained lookup per older
    token. Example: V = 10, keys = [[3, 4], [17]]: [[7, 4]] -> [0], [[7, 3]] -> [-1].
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    m = tokens.shape[1]
    r = lookup_rows(keys[0], tokens[:, m - 1])
    for level in range(1, m):
        k = np.where(r >= 0, r * vocab_size + tokens[:, m - 1 - level], -1)
        r = lookup_rows(keys[level], k)
    return r


def make_groups(context: int = ModelConfig.DEFAULT_CONTEXT, order: int | None = None) -> list:
    """Groups for ``context`` K (window 1..K) and ``order`` N (suffix 1..N-1).

    Example: ``make_groups(2, 3) -> [Suffix(1), Suffix(2), Window(1), Window(2)]``.
    """
    if context is None or context < 0:
        raise OptionError(f"context must be >= 0, got {context}; pass e.g. context 3")
    if order is not None and order < 2:
        raise OptionError(f"order must be >= 2, got {order}; pass e.g. order 3")
    groups = [Suffix(m) for m in range(1, order)] if order else []
    groups += [Window(k) for k in range(1, context + 1)]
    if not groups:
        raise OptionError("context must be >= 1 (or give order N); pass e.g. context 3")
    return groups


def pad_sequences(seqs, pad: int, bos_id: int, eos_id: int):
    """Concatenate sequences as ``[BOS]*pad + ids + [EOS]``.

    Returns ``(buf, pos, starts)``: int32 buffer, int64 positions of every target (the ids and
    the EOS), and for each target the buffer index of its sequence's first token.
    Example: seqs=[[5, 6]], pad=2, bos=1, eos=2 -> buf=[1,1,5,6,2], pos=[2,3,4], starts=[2,2,2].
    """
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    n_targets = lengths + 1
    seq_len = pad + n_targets
    total = int(seq_len.sum())
    buf = np.full(total, bos_id, dtype=np.int32)
    seq_begin = np.concatenate([[0], np.cumsum(seq_len)[:-1]]).astype(np.int64)
    first = seq_begin + pad
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(lengths.sum()))
    # position of each real token: first[seq] + offset within seq
    seq_of_tok = np.repeat(np.arange(len(seqs)), lengths)
    tok_off = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    buf[first[seq_of_tok] + tok_off] = flat
    buf[first + lengths] = eos_id
    seq_of_target = np.repeat(np.arange(len(seqs)), n_targets)
    tgt_off = np.arange(int(n_targets.sum())) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets)
    pos = first[seq_of_target] + tgt_off
    starts = first[seq_of_target]
    return buf, pos, starts


@dataclass(frozen=True)
class Skip:
    """SNM skip-gram: ``r`` remote tokens, then ``s`` skipped tokens, then the ``a`` adjacent ones.

    The feature is the joint one-hot of the tokens at offsets ``1..a`` (adjacent to the target)
    and ``a+s+1..a+s+r`` (remote); the ``s`` tokens in between are ignored (Shazeer, Pelemans,
    Chelba 2016, "Sparse Non-negative Matrix Language Modeling", skip-grams ``r [s] a``). So
    ``Skip(1, 1, 0)`` is the token 2 back alone (= ``Window(2)`` with keyed rows), ``Skip(1, 1, 1)``
    pairs the previous token with the one 3 back, and ``Skip(r, 0, a)`` is ``Suffix(r + a)``.
    Why it helps: a history seen too rarely as an exact n-gram still has its remote and adjacent
    parts seen together often enough to count, e.g. "the X of" across every X.

    Row key (exact, no hashing): the ``a + r`` tokens packed in mixed radix, adjacent first,
    ``sum_i tok[t - off_i] * V**i`` over the offsets ``off = (1..a, a+s+1..a+s+r)``; refused
    unless ``V**(a + r) < 2**63``. As for ``Suffix``, the context may reach back to one BOS but
    not past it (-1 = no feature there). Rows are the observed keys (``n_rows`` None).
    Example: V=10, Skip(1, 1, 1), buf=[1, 7, 8, 9] at pos 3 -> offsets (1, 3) -> 8 + 1*10 = 18.
    """

    r: int
    s: int
    a: int

    def __post_init__(self):
        if self.r < 1 or self.s < 0 or self.a < 0:
            raise InputError(f"skip-gram needs r >= 1, s >= 0, a >= 0, got r={self.r} s={self.s} "
                             f"a={self.a}; e.g. Skip(1, 1, 1)")

    @property
    def name(self) -> str:
        return f"skip{self.r}_{self.s}_{self.a}"

    @property
    def offsets(self) -> tuple:
        return tuple(range(1, self.a + 1)) + tuple(
            range(self.a + self.s + 1, self.a + self.s + self.r + 1))

    @property
    def reach(self) -> int:
        return self.a + self.s + self.r

    def key_limit(self, vocab_size: int) -> int:
        """Keys lie in ``[0, V**(a + r))``."""
        return vocab_size ** len(self.offsets)

    def row_keys(self, buf, pos, starts, vocab_size: int) -> np.ndarray:
        """Mixed-radix key of the adjacent + remote tokens per position; -1 where past one BOS."""
        return pack_offsets(buf, pos, starts, vocab_size, self.offsets, self.name)

    def n_rows(self, vocab_size: int) -> int | None:
        return None


def pack_offsets(buf, pos, starts, vocab_size: int, offsets, name: str) -> np.ndarray:
    """``sum_i buf[pos - offsets[i]] * V**i`` (int64), -1 where the context needs 2+ BOS."""
    if vocab_size ** len(offsets) >= 2 ** 63:
        raise InputError(f"{name} keys need vocab_size**{len(offsets)} < 2**63 "
                         f"(vocab_size={vocab_size}); use fewer context tokens or a smaller "
                         "vocabulary")
    keys = np.zeros(len(pos), dtype=np.int64)
    radix = np.int64(1)
    for off in offsets:
        keys += buf[pos - off].astype(np.int64) * radix
        radix *= vocab_size
    keys[pos - max(offsets) < starts - 1] = -1
    return keys
