"""Sparse co-occurrence counts: token-id sequences -> one CSR count matrix per feature group.

Input: an iterable of chunks, each chunk a list of token-id sequences (no BOS/EOS; those are
added here, see ``features.pad_sequences``). Output: ``Counts`` with, for each feature group g,

- ``F[g]``: ``scipy.sparse.csr_matrix`` of shape ``(R_g, V)``, int64, rows = context feature
  (for ``Window(k)``: the token k back, ``R_g = V``; for ``Suffix(m)``: the observed m-token
  histories, ``keys[g][r]`` is the chained key ``parent_row * V + oldest_token`` of row r (see
  ``features.py``), sorted ascending), columns = target.
  ``F[window k][i, j] = #{t : tok[t-k] = i, tok[t] = j}``;
- ``target[j]``: how often token j is a target (int64, shape (V,)); EOS counts once per sequence.

Counts are sums over positions, so the counts of two shards add up to the counts of their
concatenation (``Counts.__add__``): chunked, multi-process and distributed counting all reduce
to summing partial ``Counts``. Memory is bounded by one chunk plus the sparse totals. Chained
suffix keys name rows of the shard's own shorter tables, so a sum re-keys the suffix groups
level by level (``Suffix(1)`` first); the result is the same canonical numbering as counting the
concatenation in one go.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.sparse as sp

from .features import Suffix, Window, check_suffix_chain, pad_sequences, sort_values
from .io.npyfile import NpyAppender, open_npy, release_pages
from .sparse import csr_from_arrays, csr_to_arrays, lookup_rows


@dataclass
class Counts:
    """Co-occurrence counts of one corpus (or shard) for a fixed list of feature groups."""

    vocab_size: int
    groups: list
    F: list  # csr_matrix (R_g, V) int64 per group
    keys: list  # per group: None (rows are token ids) or int64 (R_g,) sorted history keys
    target: np.ndarray  # (V,) int64
    n_sequences: int = 0
    n_tokens: int = 0  # targets, EOS included
    extra: dict = field(default_factory=dict)

    def __add__(self, other: "Counts") -> "Counts":
        assert self.vocab_size == other.vocab_size and self.groups == other.groups
        V = self.vocab_size
        F, keys = [], []
        map_a = map_b = np.zeros(1, dtype=np.int64)  # old -> new rows of the previous suffix level
        for group, a, ka, b, kb in zip(self.groups, self.F, self.keys, other.F, other.keys):
            if ka is None:
                F.append((a + b).tocsr())
                keys.append(None)
                continue
            if not isinstance(group, Suffix):  # skip-gram / cluster keys are plain values
                f, union = add_keyed(a, ka, b, kb)
                F.append(f)
                keys.append(union)
                continue
            # re-key both sides into the merged numbering of the parent level (monotone maps,
            # so the re-keyed tables stay sorted), then take the union
            (pa, ta), (pb, tb) = _divmod(ka, V), _divmod(kb, V)
            ka, kb = map_a[pa] * V + ta, map_b[pb] * V + tb
            union = _union_sorted(ka, kb)
            map_a, map_b = np.searchsorted(union, ka), np.searchsorted(union, kb)
            F.append((_remap_rows(a, map_a, len(union)) + _remap_rows(b, map_b, len(union))).tocsr())
            keys.append(union)
        return Counts(self.vocab_size, self.groups, F, keys, self.target + other.target,
                      self.n_sequences + other.n_sequences, self.n_tokens + other.n_tokens)

    def rows(self, g: int, row_keys: np.ndarray) -> np.ndarray:
        """Map row keys of group g to row indices of ``F[g]``; -1 for absent or unseen keys."""
        return lookup_rows(self.keys[g], row_keys)

    def equals(self, other: "Counts") -> bool:
        """Exact equality of every count (used by tests and the distributed checks)."""
        if self.groups != other.groups or self.vocab_size != other.vocab_size:
            return False
        if not np.array_equal(self.target, other.target):
            return False
        for a, ka, b, kb in zip(self.F, self.keys, other.F, other.keys):
            if (ka is None) != (kb is None) or (ka is not None and not np.array_equal(ka, kb)):
                return False
            if a.shape != b.shape or (a != b).nnz:
                return False
        return (self.n_sequences, self.n_tokens) == (other.n_sequences, other.n_tokens)


def save_counts(c: Counts, path) -> None:
    """Write ``c`` as one ``.npz`` of plain arrays (no pickles): partial sums spilled by
    ``parallel.SpillingSum``, the suffix chain's counts of a bucket kept between two solves
    (``ngram.build.solve_bucket_files``)."""
    arrays = {"meta": np.array([c.vocab_size, c.n_sequences, c.n_tokens], dtype=np.int64),
              "target": c.target}
    for g, (F, k) in enumerate(zip(c.F, c.keys)):
        arrays.update(csr_to_arrays(f"F{g}", F))
        if k is not None:
            arrays[f"keys{g}"] = k
    np.savez(path, **arrays)


def load_counts(path, groups: list) -> Counts:
    """Inverse of ``save_counts``."""
    with np.load(path, allow_pickle=False) as z:
        V, n_seq, n_tok = (int(x) for x in z["meta"])
        F, keys = [], []
        for g in range(len(groups)):
            F.append(csr_from_arrays(f"F{g}", z))
            keys.append(z[f"keys{g}"] if f"keys{g}" in z.files else None)
        return Counts(V, list(groups), F, keys, z["target"], n_seq, n_tok)


def _union_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted union of two sorted unique int64 arrays (a stable sort of two runs is a merge)."""
    c = np.concatenate([a, b])
    c.sort(kind="stable")
    keep = np.ones(len(c), dtype=bool)
    np.not_equal(c[1:], c[:-1], out=keep[1:])
    return c[keep]


def add_keyed(a: sp.csr_matrix, ka: np.ndarray, b: sp.csr_matrix, kb: np.ndarray):
    """``(F, keys)``: the sum of two count matrices whose rows are keyed by sorted unique int64
    keys (``ka``, ``kb``), on the union of their keys. Example: rows [3] + rows [1, 3] -> rows
    [1, 3], row 3 summed."""
    union = _union_sorted(ka, kb)
    F = (_remap_rows(a, np.searchsorted(union, ka), len(union))
         + _remap_rows(b, np.searchsorted(union, kb), len(union))).tocsr()
    return F, union


def _remap_rows(m: sp.csr_matrix, new_rows: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """``m`` with row i moved to ``new_rows[i]`` (increasing), as a CSR with ``n_rows`` rows."""
    lengths = np.zeros(n_rows, dtype=np.int64)
    lengths[new_rows] = np.diff(m.indptr)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return sp.csr_matrix((m.data, m.indices, indptr), shape=(n_rows, m.shape[1]))


def empty_counts(vocab_size: int, groups: list) -> Counts:
    """Counts of an empty shard (the identity of ``+``)."""
    F, keys = [], []
    for g in groups:
        keyed = g.n_rows(vocab_size) is None  # rows = observed keys (suffix, skip-gram groups)
        F.append(sp.csr_matrix((0 if keyed else vocab_size, vocab_size), dtype=np.int64))
        keys.append(np.zeros(0, dtype=np.int64) if keyed else None)
    return Counts(vocab_size, list(groups), F, keys, np.zeros(vocab_size, dtype=np.int64))


def count_chunk(seqs: list, vocab_size: int, groups: list, bos_id: int, eos_id: int) -> Counts:
    """Counts of one chunk of sequences (lists or arrays of token ids in ``[0, V)``)."""
    check_suffix_chain(groups)
    if not len(seqs):
        return empty_counts(vocab_size, groups)
    pad = max(g.reach for g in groups)
    buf, pos, starts = pad_sequences(seqs, pad, bos_id, eos_id)
    return count_buffer(buf, pos, starts, vocab_size, groups, len(seqs))


def count_buffer(buf, pos, starts, vocab_size: int, groups: list, n_sequences: int) -> Counts:
    """Counts of a padded buffer (``features.pad_sequences`` layout: buffer, target positions,
    start of each target's sequence); one sort per suffix group, one COO->CSR per window group."""
    targets = buf[pos].astype(np.int64)
    F, keys = [], []
    suffix_rows = near = None
    last = max([g.m for g in groups if isinstance(g, Suffix)], default=0)
    for g in groups:
        if isinstance(g, Suffix) and g.m == last:  # no longer order needs its rows
            m, k = pair_counts(g.row_keys(buf, pos, starts, vocab_size, suffix_rows), targets,
                               vocab_size)
            keys.append(k)
        elif isinstance(g, Suffix):
            rk = g.row_keys(buf, pos, starts, vocab_size, suffix_rows)
            # the previous order's sort groups this order's keys (parent row * V + token)
            m, k, suffix_rows, near = suffix_counts(rk, targets, vocab_size, near,
                                                    with_order=True)
            keys.append(k)
        elif not isinstance(g, Window):  # other keyed families (skip-grams, cluster histories, line positions)
            m, k = pair_counts(g.row_keys(buf, pos, starts, vocab_size), targets, vocab_size)
            keys.append(k)
        else:
            m = _window_counts(g.row_keys(buf, pos, starts, vocab_size), targets, vocab_size)
            keys.append(None)
        F.append(m)
    target = np.bincount(targets, minlength=vocab_size).astype(np.int64)
    return Counts(vocab_size, list(groups), F, keys, target, n_sequences, len(targets))


def _block(seqs, bos_id: int, eos_id: int, pad: int):
    """One chunk's part of ``flat_buffer``: its int32 buffer and its sequence lengths (int64)."""
    n = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(n.sum()))
    b = np.full(len(flat) + (pad + 1) * len(n), bos_id, dtype=np.int32)
    ends = np.cumsum(n + pad + 1)  # block of a sequence: pad BOS, its ids, EOS
    tok = np.ones(len(b), dtype=bool)
    tok[ends - 1] = False
    tok[np.repeat(ends - n - pad - 1, pad) + np.tile(np.arange(pad), len(n))] = False
    b[ends - 1] = eos_id
    b[tok] = flat
    return b, n


def _targets(n: np.ndarray, pad: int, offset: int = 0):
    """``(pos, starts)`` int64 of the sequences of lengths ``n`` whose blocks start at buffer
    index ``offset``: each target's buffer index and its sequence's first target's."""
    first = offset + np.cumsum(n + pad + 1) - (n + 1)  # buffer index of each first target
    starts = np.repeat(first, n + 1)
    # target k of these sequences sits at first[seq] + (k - number of targets before seq)
    pos = np.arange(len(starts), dtype=np.int64) + np.repeat(first - (np.cumsum(n + 1) - (n + 1)),
                                                             n + 1)
    return pos, starts


def flat_buffer(chunks: Iterable[list], bos_id: int, eos_id: int, pad: int):
    """Chunks of id sequences -> one buffer ``([BOS]*pad + ids + [EOS])...`` (streamed, compact).

    Returns ``(buf, pos, starts, n_sequences)`` exactly as ``features.pad_sequences`` does for
    the concatenation of the chunks: int32 buffer, int64 target positions and sequence starts.
    Example: [[[5, 6]], [[7]]], bos 1, eos 2, pad 1 -> buf [1, 5, 6, 2, 1, 7, 2].
    """
    bufs, lens = [], []
    for seqs in chunks:
        if not len(seqs):
            continue
        b, n = _block(seqs, bos_id, eos_id, pad)
        bufs.append(b)
        lens.append(n)
    buf = np.concatenate(bufs) if bufs else np.zeros(0, dtype=np.int32)
    n = np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)
    pos, starts = _targets(n, pad)
    return buf, pos, starts, len(n)


INDEX32 = np.iinfo(np.int32).max  # buffer indices below this are stored in int32


def flat_buffer_files(chunks: Iterable[list], bos_id: int, eos_id: int, pad: int, folder,
                      prefix: str = "text"):
    """``flat_buffer`` written to ``folder`` a chunk at a time and memory-mapped read-only
    (``io.npyfile``: ``{prefix}.buf.npy``, ``.pos.npy``, ``.starts.npy``), so only one chunk's
    arrays are ever in memory. Returns ``(buf, pos, starts, n_sequences)``, the same values as
    ``flat_buffer``, with ``pos`` and ``starts`` in int32 when every buffer index fits (as
    ``rich_build`` keeps them in memory), else int64."""
    folder = Path(folder)
    paths = {k: folder / f"{prefix}.{k}.npy" for k in ("buf", "pos", "starts")}
    w = {"buf": NpyAppender(paths["buf"], np.int32), "pos": NpyAppender(paths["pos"], np.int32),
         "starts": NpyAppender(paths["starts"], np.int32)}
    offset = n_seq = 0
    try:
        for seqs in chunks:
            if not len(seqs):
                continue
            b, n = _block(seqs, bos_id, eos_id, pad)
            pos, starts = _targets(n, pad, offset)
            offset, n_seq = offset + len(b), n_seq + len(n)
            if offset >= INDEX32 and w["pos"].dtype != np.int64:  # rare: > 2**31 slots
                for k in ("pos", "starts"):
                    w[k] = _widen(w[k])
            w["buf"].append(b)
            w["pos"].append(pos)
            w["starts"].append(starts)
    finally:
        for k, a in w.items():
            if a.path != paths[k]:  # widened: its file takes the final name
                a.close().replace(paths[k])
            else:
                a.close()
    return (*(open_npy(paths[k]) for k in ("buf", "pos", "starts")), n_seq)


def _widen(w: NpyAppender) -> NpyAppender:
    """An int32 ``NpyAppender``'s values so far copied, a part at a time, into a new int64
    one (``.wide.npy`` beside it, open for more); the int32 file is removed."""
    path = w.close()
    old = open_npy(path)
    wide = NpyAppender(path.with_suffix(".wide.npy"), np.int64)
    for i in range(0, len(old), PART_POSITIONS):
        wide.append(old[i:i + PART_POSITIONS])
    del old
    path.unlink()
    return wide


def count_ngrams(chunks: Iterable[list], vocab_size: int, groups: list, bos_id: int,
                 eos_id: int) -> Counts:
    """Counts of a stream of chunks in one pass: one flat buffer, one sort per suffix group.

    Same result as ``count_cooccurrences`` (tested), without the per-chunk partial counts and
    their merges: the fast path for n-gram models (memory: ~40 bytes per token at the peak).
    """
    check_suffix_chain(groups)
    # suffix groups need one BOS per sequence (a history never reaches past it; the ``starts``
    # mask hides what lies before), window groups one per position they look back
    pad = max([g.reach for g in groups if isinstance(g, Window)] + [1])
    buf, pos, starts, n_seq = flat_buffer(chunks, bos_id, eos_id, pad)
    if n_seq == 0:
        return empty_counts(vocab_size, groups)
    return count_buffer(buf, pos, starts, vocab_size, groups, n_seq)


def suffix_counts(row_keys: np.ndarray, targets: np.ndarray, vocab_size: int, near=None,
                  with_order: bool = False):
    """Two sorts: (history key, target) per position -> counts CSR, sorted keys, row per position.

    ``row_keys``: int64 (N,) chained keys (-1 = no feature). Returns ``(F, keys, rows)``: F CSR
    (R, V) int64 canonical, keys int64 (R,) sorted, rows int64 (N,) (-1 where the key is -1);
    with ``with_order`` also ``order`` int64: the positions whose key is not -1, sorted by key
    (stable). The history keys are ranked first (their row per position feeds the next order's
    keys), then the pairs ``row * V + target``, taken in key order, are sorted and counted. Both
    are value sorts: positions ride in the low bits of the sorted key when they fit (2x faster
    than ``argsort``). ``near``: optional permutation of the N positions under which the keys
    are already grouped, e.g. the previous suffix order's ``order`` (a chained key is its parent
    row * V + a token): the keys are then sorted from that order, where only each group's own
    keys are out of order (about half the time of a sort from text order; same result).
    Example: keys [5, 5, 3], targets [1, 1, 2], V = 4 -> keys [3, 5], F = [[0, 0, 1, 0],
    [0, 2, 0, 0]], rows [1, 1, 0].
    """
    V = vocab_size
    ok = row_keys >= 0
    every = bool(ok.all())
    k = row_keys if every else row_keys[ok]
    n = len(k)
    if near is not None and not every:  # as indices into k (the positions whose key is kept)
        near = np.asarray(near)[ok[near]]
        near = (np.cumsum(ok) - 1)[near]
    perm, sk = sort_with_positions(k, near if near is None or len(near) == n else None)
    first = np.ones(n, dtype=bool)
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    keys = sk[first]
    ranked = np.cumsum(first) - 1  # the rows in key order
    r = np.empty(n, dtype=np.int64)
    r[perm] = ranked
    # the pairs in key order: only each row's own targets are out of order, runs that a
    # stable sort (timsort) merges in ~2/3 of the time a sort of the shuffled pairs takes
    pair = (targets if every else targets[ok])[perm]
    pair += ranked * V
    pair.sort(kind="stable")
    uniq, cnt = _runs(pair)
    indptr = np.zeros(len(keys) + 1, dtype=np.int64)
    row, col = _divmod(uniq, V)
    np.cumsum(np.bincount(row, minlength=len(keys)), out=indptr[1:])
    F = sp.csr_matrix((cnt.astype(np.int64), col.astype(np.int32), indptr),
                      shape=(len(keys), V))
    if every:
        rows = r
    else:
        rows = np.full(len(row_keys), -1, dtype=np.int64)
        rows[ok] = r
        perm = np.flatnonzero(ok)[perm]
    return (F, keys, rows, perm) if with_order else (F, keys, rows)


def pair_counts(row_keys: np.ndarray, targets: np.ndarray, vocab_size: int):
    """``(F, keys)`` of ``suffix_counts`` when the rows per position are not needed: one value
    sort of ``key * V + target`` (2-4x less CPU than ranking the keys first), or
    ``suffix_counts`` when that does not fit in 63 bits. Same arrays, bit for bit.
    Example: keys [5, -1, 5, 3], targets [1, 0, 1, 2], V = 4 -> keys [3, 5],
    F = [[0, 0, 1, 0], [0, 2, 0, 0]]."""
    V = vocab_size
    ok = row_keys >= 0
    k = row_keys if ok.all() else row_keys[ok]
    if len(k) and int(k.max()) >= ((1 << 63) - V) // V:
        return suffix_counts(row_keys, targets, V)[:2]
    pair = k * V
    pair += targets if len(k) == len(row_keys) else targets[ok]
    sort_values(pair)
    uniq, cnt = _runs(pair)
    rk, col = _divmod(uniq, V)
    first = np.ones(len(rk), dtype=bool)
    np.not_equal(rk[1:], rk[:-1], out=first[1:])
    indptr = np.append(np.flatnonzero(first), len(rk)).astype(np.int64)
    F = sp.csr_matrix((cnt.astype(np.int64), col.astype(np.int32), indptr),
                      shape=(len(indptr) - 1, V))
    F.has_sorted_indices = True
    return F, rk[first]


def _runs(a: np.ndarray):
    """``(values, lengths)`` of the runs of equal values of sorted ``a``."""
    new = np.ones(len(a), dtype=bool)
    np.not_equal(a[1:], a[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return a[starts], np.diff(np.append(starts, len(a)))


def _window_counts(rk: np.ndarray, targets: np.ndarray, V: int) -> sp.csr_matrix:
    """(V, V) int64 CSR counts of (token k back ``rk``, target) pairs: a window group's."""
    m = sp.coo_matrix((np.ones(len(rk), dtype=np.int64), (rk, targets)), shape=(V, V)).tocsr()
    m.sum_duplicates()
    return m


def _divmod(u: np.ndarray, V: int):
    """``(u // V, u % V)`` of non-negative int64 ``u``: a shift and a mask when V is a power
    of two (a third of the CPU of integer division)."""
    if V & (V - 1) == 0:
        s = int(V).bit_length() - 1
        return u >> s, u & (V - 1)
    return u // V, u % V


def sort_with_positions(k: np.ndarray, near=None):
    """``(order, k[order])`` for a stable sort of non-negative int64 ``k``: one value sort of
    ``k << b | position`` when that fits in 63 bits, else ``argsort``. ``near``: a
    permutation under which ``k`` is nearly sorted: the packed values are sorted from that
    order by a stable sort (timsort, which merges the runs it finds)."""
    n = len(k)
    b = max(int(n - 1).bit_length(), 1)
    if n == 0 or int(k.max()).bit_length() + b <= 63:
        if near is None:
            packed = (k << b) | np.arange(n, dtype=np.int64)
            sort_values(packed)
        else:
            near = np.asarray(near, dtype=np.int64)
            packed = (k[near] << b) | near
            packed.sort(kind="stable")
        return packed & ((1 << b) - 1), packed >> b
    order = np.argsort(k, kind="stable")
    return order, k[order]


def sum_counts(parts: Iterable[Counts]) -> Counts:
    """Sum partial counts, merging equal-sized partial sums first (a streaming tree reduction).

    At most log2(n) partial sums are alive at once, and every count is added O(log n) times.
    """
    stack: list[tuple[int, Counts]] = []  # (number of parts merged, partial sum)
    for c in parts:
        size = 1
        while stack and stack[-1][0] == size:
            c = stack.pop()[1] + c
            size *= 2
        stack.append((size, c))
    assert stack, "sum_counts needs at least one part"
    total = stack.pop()[1]
    while stack:
        total = stack.pop()[1] + total
    return total


def count_cooccurrences(chunks: Iterable[list], vocab_size: int, groups: list,
                        bos_id: int, eos_id: int) -> Counts:
    """Counts of a stream of chunks; each chunk is a list of token-id sequences."""
    return sum_counts(count_chunk(c, vocab_size, groups, bos_id, eos_id) for c in chunks)


# ---- counting in parts of rows (bounded working memory, same counts) -------------------------
PART_POSITIONS = 1 << 22  # positions sorted at once by ``count_in_parts`` (~60 bytes each)
PART_BYTES = 60  # working bytes per position of a part being counted (keys, sorts, pairs)


KEY_CHUNK = 1 << 20  # positions whose row keys are computed at once by ``count_in_parts``


def _chunks(n: int):
    """``(lo, hi)`` of consecutive ranges of at most ``KEY_CHUNK`` of ``n`` indices."""
    return [(lo, min(lo + KEY_CHUNK, n)) for lo in range(0, n, KEY_CHUNK)]


def _cuts(sample: np.ndarray, n_parts: int) -> np.ndarray:
    """Up to ``n_parts - 1`` increasing cut values splitting part keys into ranges of about
    equal size, from ``sample``: the non-negative keys of a strided sample of positions
    (quantiles; deterministic)."""
    if n_parts <= 1 or len(sample) == 0:
        return np.zeros(0, dtype=np.int64)
    sample = np.sort(sample)
    cuts = sample[(np.arange(1, n_parts) * len(sample)) // n_parts]
    return np.unique(cuts.astype(np.int64))


def _concat_rows(parts: list, n_cols: int, keyed: bool):
    """CSR of the row blocks of ``parts`` (list of (F, keys)), in order; keys concatenated."""
    data = np.concatenate([F.data for F, _ in parts])
    indices = np.concatenate([F.indices for F, _ in parts])
    lengths = np.concatenate([np.diff(F.indptr) for F, _ in parts])
    indptr = np.zeros(len(lengths) + 1, dtype=parts[0][0].indptr.dtype)
    np.cumsum(lengths, out=indptr[1:])
    F = sp.csr_matrix((data, indices, indptr), shape=(len(lengths), n_cols))
    F.has_sorted_indices = True
    return F, (np.concatenate([k for _, k in parts]) if keyed else None)


class RowParts:
    """The target positions of a buffer split into parts that own whole rows, each counted on
    its own (``count(p)``): the engine of ``count_in_parts``, and of the group-by-group build,
    which solves a group a part at a time (``rich_build``).

    ``groups``: the suffix chain ``Suffix(1..M)``, or one other group. A part is, for the
    chain, the positions whose previous token lies in a token range; for one other group, the
    positions whose row key lies in a key range (rows are sorted keys, or token ids for a
    window). ``cuts``: the increasing cut values between the parts' ranges (one group only;
    default: quantiles of a strided sample of this buffer's keys, at least ``min_parts`` parts
    of about ``part_positions`` positions); given, e.g. the training text's, another text's
    part p covers the same rows as the training text's part p, so the two add up part by part.

    Memory: the keys are computed ``KEY_CHUNK`` positions at a time, never for every position
    at once; each position keeps only its part number (one byte while there are < 255 parts),
    and with ``keep_keys`` its key too (8 bytes; the keys are then computed once, not twice).
    """

    def __init__(self, buf, pos, starts, vocab_size: int, groups: list,
                 part_positions: int | None = None, min_parts: int = 1, cuts=None,
                 keep_keys: bool = False):
        V, N = vocab_size, len(pos)
        self.buf, self.pos, self.starts, self.V, self.groups = buf, pos, starts, V, list(groups)
        self.chain = all(isinstance(g, Suffix) for g in groups)
        if not self.chain and len(groups) != 1:
            raise ValueError("count_in_parts counts the suffix chain or one group at a time")
        if self.chain:
            check_suffix_chain(groups)
            if cuts is not None:
                raise ValueError("the suffix chain's parts come from its own text (no cuts)")
        g0 = groups[0]
        # rows are token ids (the chain: by its previous token; a window: the token k back)
        self._k_tok = 1 if self.chain else g0.k if isinstance(g0, Window) else None
        self._pad_back = 1 + max(getattr(g, "reach", 1) for g in groups)
        if cuts is None:
            part_positions = PART_POSITIONS if part_positions is None else part_positions
            n_parts = max(-(-N // max(1, part_positions)), min_parts)
            cuts = self._sample_cuts(n_parts) if n_parts > 1 and N else np.zeros(0, np.int64)
        # positions counted at once: a part bigger than that (one frequent row) is counted in runs
        self.at_once = max(1, PART_POSITIONS if part_positions is None else part_positions)
        self.cuts = np.asarray(cuts, dtype=np.int64)
        self.n_parts = len(self.cuts) + 1
        self.which = None  # one part: every position
        # keep_keys: one group's part keys (int64, 8 bytes a position) kept from cutting the
        # parts to counting them, instead of computed twice
        self._keys = (np.empty(N, dtype=np.int64) if keep_keys and not self.chain
                      and self._k_tok is None and self.n_parts > 1 and N else None)
        if self.n_parts > 1 and N:
            self.which = self._part_numbers()
        self.bounds = (np.concatenate([[0], self.cuts, [V]]) if isinstance(g0, Window)
                       else None)

    def _part_keys(self, idx):
        """The part key (row key; -1: no feature) of positions ``idx``: a slice or increasing
        indices into ``pos`` within one chunk of ``_chunks(N)``, so that a kind that reads the
        buffer around its positions (line positions) reads about a chunk of it."""
        p, st = self.pos[idx], self.starts[idx]
        if self._k_tok is not None:
            return self.buf[p - self._k_tok].astype(np.int64)
        return self.groups[0].row_keys(self.buf, p, st, self.V)

    def _release_chunk(self, lo, hi):
        """Drop the pages of a mapped buffer read for positions ``lo:hi`` (from the line start
        of the first; ``io.npyfile.release_pages``, a no-op in memory): a pass over a mapped
        buffer holds a chunk of it, not all of it."""
        pos, starts = self.pos, self.starts
        b0 = max(0, min(int(starts[lo]), int(pos[lo])) - self._pad_back)
        release_pages(pos[lo:hi], starts[lo:hi], self.buf[b0:int(pos[hi - 1]) + 1])

    def _sample_cuts(self, n_parts):
        """Cuts from a strided sample of the keys (about 64 a part)."""
        N = len(self.pos)
        stride = max(1, N // (64 * n_parts))
        sample = []
        for lo, hi in _chunks(N):
            k = self._part_keys(np.arange(lo + (-lo) % stride, hi, stride))
            sample.append(k[k >= 0])
            self._release_chunk(lo, hi)
        return _cuts(np.concatenate(sample), n_parts)

    def _part_numbers(self):
        which = np.empty(len(self.pos), dtype=np.uint8 if len(self.cuts) < 255 else np.uint16)
        none = np.iinfo(which.dtype).max  # no feature: counted in no part (as count_buffer)
        for lo, hi in _chunks(len(self.pos)):
            k = self._part_keys(slice(lo, hi))
            if self._keys is not None:
                self._keys[lo:hi] = k
            w = np.searchsorted(self.cuts, k, side="right")
            w[k < 0] = none
            which[lo:hi] = w
            self._release_chunk(lo, hi)
        return which

    def count(self, p: int) -> list:
        """The counts of part p: per group ``(F, keys)`` (the chain's keys not yet shifted by
        the rows of the parts before; a window's ``F``: its rows ``bounds[p]:bounds[p+1]``).
        Its positions, row keys and targets are gathered a chunk at a time."""
        V, N, buf, pos, starts = self.V, len(self.pos), self.buf, self.pos, self.starts
        g0 = self.groups[0]
        if self.which is None and N <= self.at_once:  # one part, counted at once
            if N:
                c = count_buffer(buf, pos, starts, V, self.groups, 0)
                self._release_chunk(0, N)
            else:
                c = empty_counts(V, self.groups)
            if self.bounds is not None:
                return [(c.F[0][int(self.bounds[p]):int(self.bounds[p + 1])], None)]
            return list(zip(c.F, c.keys))
        got, held, sums = [], 0, []  # a run of gathered positions; partial counts of the part
        for lo, hi in _chunks(N):
            idx = (lo + np.flatnonzero(self.which[lo:hi] == p) if self.which is not None
                   else np.arange(lo, hi))
            for i in range(0, len(idx), self.at_once):
                piece = idx[i:i + self.at_once]
                if self.chain:  # counted by count_buffer, from the part's positions
                    got.append((np.asarray(pos[piece]), np.asarray(starts[piece])))
                else:
                    k = self._keys[piece] if self._keys is not None else self._part_keys(piece)
                    got.append((k, buf[pos[piece]].astype(np.int64)))
                held += len(piece)
                if held >= self.at_once:
                    sums.append(self._count_run(got))
                    got, held = [], 0
            self._release_chunk(lo, hi)
        if got or not sums:
            sums.append(self._count_run(got))
        if self.chain:
            c = sum_counts(sums)
            return list(zip(c.F, c.keys))
        F, k = sums[0]
        for G, kg in sums[1:]:
            F, k = (F + G, None) if k is None else add_keyed(F, k, G, kg)
        if isinstance(g0, Window):  # rows are token ids: keep this part's token range
            F.sum_duplicates()
            return [(F[int(self.bounds[p]):int(self.bounds[p + 1])], None)]
        return [(F, k)]

    def _count_run(self, got: list):
        """Counts of a run of at most ``at_once`` gathered positions of one part (its pieces
        ``got``: (positions, starts) for the chain, else (row keys, targets)): a ``Counts``
        for the chain, else ``(F, keys)`` (a window: the whole (V, V) matrix, keys None).
        A part of more positions (one frequent row, e.g. BOS histories) is counted in runs
        whose counts add up, so working memory stays that of ``at_once`` positions."""
        V = self.V
        a = np.concatenate([x for x, _ in got]) if got else np.zeros(0, np.int64)
        b = np.concatenate([y for _, y in got]) if got else np.zeros(0, np.int64)
        if self.chain:
            return count_buffer(self.buf, a, b, V, self.groups, 0)
        if isinstance(self.groups[0], Window):  # as count_buffer counts a window
            return _window_counts(a, b, V), None
        return pair_counts(a, b, V)

    def target(self) -> np.ndarray:
        """(V,) int64: how often each token is a target (every position, with or without a
        feature, as ``count_buffer``)."""
        target = np.zeros(self.V, dtype=np.int64)
        for lo, hi in _chunks(len(self.pos)):
            target += np.bincount(self.buf[self.pos[lo:hi]], minlength=self.V)
            self._release_chunk(lo, hi)
        return target


def count_in_parts(buf, pos, starts, vocab_size: int, groups: list, n_sequences: int,
                   part_positions: int | None = None, min_parts: int = 1,
                   mapper=None) -> Counts:
    """``count_buffer(buf, pos, starts, vocab_size, groups, n_sequences)``, exactly (same arrays,
    same dtypes), with the positions sorted ``part_positions`` (default ``PART_POSITIONS``) at
    a time (``RowParts``).

    ``groups``: the suffix chain ``Suffix(1..M)``, or one other group. Each part owns whole
    rows, so its counts are a block of rows of the total: for the chain, every order's history
    ends in the part's token range, and rows are numbered newest token first, so each part's
    rows are a contiguous block at every order; its chained keys shift by the rows of the parts
    before it, ``key + offset * V``; for one other group, its rows are a key range.

    ``min_parts``: at least this many parts (when there are positions to split); ``mapper(fn,
    parts)``: how the parts are counted (default: one after the other, ``map``), e.g. by worker
    processes; it must yield ``fn(p)`` in the order of ``parts``.
    """
    V, N = vocab_size, len(pos)
    parts = RowParts(buf, pos, starts, V, groups, part_positions, min_parts)
    if parts.n_parts <= 1 or N == 0:
        return count_buffer(buf, pos, starts, V, groups, n_sequences)
    chain = parts.chain
    blocks = [[] for _ in groups]
    offsets = [0] * len(groups)  # rows of the parts before, per chain level
    for part in (mapper or map)(parts.count, range(parts.n_parts)):
        if chain:
            for lvl, (F, k) in enumerate(part):
                blocks[lvl].append((F, k if lvl == 0 else k + offsets[lvl - 1] * V))
            offsets = [o + F.shape[0] for o, (F, _) in zip(offsets, part)]
        else:
            blocks[0].append(part[0])
        del part
    F, keys = [], []
    for g, bl in zip(groups, blocks):
        f, k = _concat_rows(bl, V, not isinstance(g, Window))
        F.append(f)
        keys.append(k)
    return Counts(V, list(groups), F, keys, parts.target(), n_sequences, N)
