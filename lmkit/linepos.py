r"""The line-position feature group: where in its line a token falls, in bytes.

``LinePosition(a, step, cap, table, clusters)``: the context is the byte offset of the target
within its sequence (one line), bucketed as ``min(offset // step, cap)``, jointly with the ``a``
previous tokens and, given a token -> cluster table ``clusters`` (``clusters.py``), the cluster
of the token before those. ``table`` (V,) is the number of bytes each token adds
to the line (``Tokenizer.piece_bytes``: UTF-8 bytes of the piece, SentencePiece's word-start
mark counted as the space it stands for, byte pieces 1, BOS/EOS/control 0), so the offset of
the target at position t is ``sum(table[tok] for tok in the line before t)``.

Row key (exact): ``sum_{i<a} tok_{t-1-i} V**i + V**a * (bucket * C + cluster(tok_{t-1-a}))``
(without clusters: ``C = 1`` and no cluster term); refused unless ``V**a C (cap + 1) < 2**63``.
Rows are the observed keys. Like ``ClusterHistory``, the name (``linepos{a}_{step}_{cap}``, or
``linepos{a}_{step}_{cap}_{C}`` with clusters) does not carry the tables: model folders store
them once as the arrays ``piece_bytes`` and ``clusters{C}`` and rebuild the group from its name
and those tables (the kinds registry, ``kinds.py``).

Closed form: as a skip-gram with ``a`` adjacent tokens (``skipgram.solve_skip``): the counts
``F[(tokens, bucket), w]`` are discounted toward the distribution of the same ``a`` tokens
summed over every bucket (for ``a = 0``: toward ``q``), and the group contributes the log-ratio

    S[c, w] = log(1 + max(F[c, w] - d, 0) / (d N1+(c) P_adj(w | tokens(c)))) >= 0,

what the position says beyond the tokens alone. Why it helps: lines have a typical length (verse
has a metre, prose is wrapped near a column), so how far the line has run says how likely the
line is to end (EOS), and which words start, continue or close a line; no n-gram history of a
few tokens knows that. Unlike the other groups it looks back to the start of the line
(``whole_line``): a scorer must not cut contexts to ``reach`` tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .features import pack_offsets

MAX_PIECE_BYTES = 1024  # bound on a table value read from a model folder (SentencePiece: <= 64)


@dataclass(frozen=True)
class LinePosition:
    """Byte offset of the target in its line (bucketed) x the ``a`` previous tokens (x the
    cluster of the token before them, with ``clusters``)."""

    a: int
    step: int
    cap: int
    table: tuple  # bytes per token id, length V
    clusters: tuple | None = None  # cluster id per token id, length V
    whole_line = True  # the feature depends on the whole line so far, not on `reach` tokens

    def __post_init__(self):
        if self.a < 0 or self.step < 1 or self.cap < 0:
            raise InputError(f"line position needs a >= 0, step >= 1, cap >= 0, got a={self.a} "
                             f"step={self.step} cap={self.cap}; e.g. LinePosition(1, 8, 10, table)")

    @property
    def n_clusters(self) -> int:
        return 1 if self.clusters is None else max(self.clusters) + 1

    @property
    def name(self) -> str:
        c = "" if self.clusters is None else f"_{self.n_clusters}"
        return f"linepos{self.a}_{self.step}_{self.cap}{c}"

    @property
    def reach(self) -> int:
        return max(self.a + (self.clusters is not None), 1)

    def key_limit(self, vocab_size: int) -> int:
        """Keys lie in ``[0, V**a * C * (cap + 1))``."""
        return vocab_size ** self.a * self.n_clusters * (self.cap + 1)

    def row_keys(self, buf, pos, starts, vocab_size: int) -> np.ndarray:
        """Key per target position; -1 where the ``a`` tokens would reach past one BOS.

        Example: table [0, 0, 0, 3, 5] (V = 5), a = 1, step 4, cap 9, one line [3, 4, 3] in
        buf [1, 3, 4, 3, 2] (BOS 1, EOS 2): offsets 0, 3, 8, 11 -> buckets 0, 0, 2, 2 and
        keys 1 + 5*0, 3 + 0, 4 + 5*2, 3 + 5*2 = [1, 3, 14, 13].
        """
        if self.key_limit(vocab_size) >= 2 ** 63:
            raise InputError(f"{self.name} keys need V**{self.a} * C * {self.cap + 1} < 2**63 "
                             f"(V={vocab_size}); use a = 0 or 1")
        table = np.asarray(self.table, dtype=np.int64)
        pos, starts = np.asarray(pos), np.asarray(starts)
        # bytes of buf[lo:i] for lo <= i <= hi, the part of the buffer these positions' lines
        # span (not the whole buffer: counting computes keys a chunk of positions at a time)
        lo = int(starts.min()) if len(pos) else 0
        hi = int(pos.max()) if len(pos) else 0
        before = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(table[buf[lo:hi]], out=before[1:])
        bucket = np.minimum((before[pos - lo] - before[starts - lo]) // self.step, self.cap)
        if self.clusters is not None:
            clusters = np.asarray(self.clusters, dtype=np.int64)
            bucket = bucket * self.n_clusters + clusters[buf[pos - self.a - 1]]
        keys = bucket * vocab_size ** self.a
        if self.a:  # the exact tokens in the low digits, as a skip-gram packs them
            keys += pack_offsets(buf, pos, starts, vocab_size, tuple(range(1, self.a + 1)),
                                 self.name)
        keys[pos - self.reach < starts - 1] = -1
        return keys

    def n_rows(self, vocab_size: int) -> int | None:
        return None


def check_bytes_table(table, vocab_size: int) -> np.ndarray:
    """``table`` as int64 (V,) with values in ``[0, MAX_PIECE_BYTES]``; ValueError otherwise."""
    t = np.asarray(table)
    if t.dtype.kind not in "iu" or t.ndim != 1 or len(t) != vocab_size:
        raise ValueError(f"piece bytes must be an integer (V,) array with V = {vocab_size}, got "
                         f"{t.dtype} {t.shape}")
    if len(t) and (t.min() < 0 or t.max() > MAX_PIECE_BYTES):
        raise ValueError(f"piece bytes must lie in [0, {MAX_PIECE_BYTES}], got "
                         f"[{t.min()}, {t.max()}]")
    return t.astype(np.int64)
