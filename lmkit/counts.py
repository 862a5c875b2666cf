"""Sparse co-occurrence counts: token-id sequences -> one CSR count matrix per feature group.

Input: an iterable of chunks, each chunk a list of token-id sequences (no BOS/EOS; those are
added here, see ``features.pad_sequences``). Output: ``Counts`` with, for each feature group g,

- ``F[g]``: ``scipy.sparse.csr_matrix`` of shape ``(R_g, V)``, int64, rows = context feature
  (for ``Window(k)``: the token k back, ``R_g = V``; for ``Suffix(m)``: the observed m-token
  histories, ``keys[g][r]`` is the packed history of row r, sorted ascending), columns = target.
  ``F[window k][i, j] = #{t : tok[t-k] = i, tok[t] = j}``;
- ``target[j]``: how often token j is a target (int64, shape (V,)); EOS counts once per sequence.

Counts are sums over positions, so the counts of two shards add up to the counts of their
concatenation (``Counts.__add__``): chunked, multi-process and distributed counting all reduce
to summing partial ``Counts``. Memory is bounded by one chunk plus the sparse totals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import scipy.sparse as sp

from .features import pad_sequences
from .sparse import lookup_rows


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
        F, keys = [], []
        for a, ka, b, kb in zip(self.F, self.keys, other.F, other.keys):
            if ka is None:
                F.append((a + b).tocsr())
                keys.append(None)
            else:
                union = np.union1d(ka, kb)
                F.append((_remap_rows(a, ka, union) + _remap_rows(b, kb, union)).tocsr())
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


def _remap_rows(m: sp.csr_matrix, old_keys: np.ndarray, union: np.ndarray) -> sp.csr_matrix:
    coo = m.tocoo()
    new_rows = np.searchsorted(union, old_keys)[coo.row]
    return sp.csr_matrix((coo.data, (new_rows, coo.col)), shape=(len(union), m.shape[1]))


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
    if not seqs:
        return empty_counts(vocab_size, groups)
    pad = max(g.reach for g in groups)
    buf, pos, starts = pad_sequences(seqs, pad, bos_id, eos_id)
    targets = buf[pos].astype(np.int64)
    F, keys = [], []
    for g in groups:
        rk = g.row_keys(buf, pos, starts, vocab_size)
        if g.n_rows(vocab_size) is None:  # keyed rows: the observed histories
            ok = rk >= 0
            uniq, rows = np.unique(rk[ok], return_inverse=True)
            cols, n_rows = targets[ok], len(uniq)
            keys.append(uniq.astype(np.int64))
        else:
            rows, cols, n_rows = rk, targets, vocab_size
            keys.append(None)
        data = np.ones(len(rows), dtype=np.int64)
        m = sp.coo_matrix((data, (rows, cols)), shape=(n_rows, vocab_size)).tocsr()
        m.sum_duplicates()
        F.append(m)
    target = np.bincount(targets, minlength=vocab_size).astype(np.int64)
    return Counts(vocab_size, list(groups), F, keys, target, len(seqs), len(targets))


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
