"""Disk-backed stages of the bounded n-gram build: id stream, bucket partition, .npy appenders.

Used by ``ngram_build.py`` so that nothing of the size of the corpus or of the model is ever
held in memory at once; each function streams fixed-size chunks.

- ``encode_to_disk(chunks, bos, eos, path, V)``: chunks of id sequences -> int32 file
  ``BOS ids EOS`` per sequence (the ``counts.flat_buffer(pad=1)`` layout), and the histogram
  (V,) int64 of the previous token of every target (what ``bucket_edges`` splits on).
- ``partition_windows(read, n, order, bos, edges, folder)``: the id stream -> one file per
  bucket of history-token range, holding per target position its window of ``order`` tokens
  (``M = order - 1`` history tokens and the target) and ``d`` = how many of those history
  tokens lie inside its sequence (capped at M). Rows are ``(M + 2,)`` uint16 when V fits,
  else int32. ``load_windows`` turns a bucket file back into the buffer/pos/starts triple that
  ``counts.count_buffer`` reads, so a bucket is counted exactly as the whole buffer would be.
- ``NpyAppender``: a 1-d ``.npy`` file written piecewise (header rewritten with the final
  length on ``close``); ``open_npy`` maps one back read-only.
- ``release_pages(a)``: drop the resident pages of a memory-mapped array from this process
  (they stay in the page cache), so reading a large mapped array once does not leave its whole
  size in the resident set.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from .counts import flat_buffer

CHUNK_TOKENS = 1 << 23  # ids per read in the partition pass (32 MiB of int32)
_HEADER = 128  # bytes reserved for a .npy header: magic, length, dict padded with spaces


def encode_to_disk(chunks, bos_id: int, eos_id: int, path, vocab_size: int):
    """Append every chunk's ``BOS ids EOS`` blocks to the int32 file ``path``.

    Returns ``(n_ids, n_sequences, n_targets, prev_hist)``: ids written, sequences, targets
    (tokens + one EOS per sequence) and the (V,) int64 count of each target's previous token.
    Example: [[[5, 6]], [[7]]], bos 1, eos 2 -> file [1, 5, 6, 2, 1, 7, 2], 7, 2, 5, and
    prev_hist counts 1 twice and 5, 6 once.
    """
    hist = np.zeros(vocab_size, dtype=np.int64)
    n_ids = n_seq = n_tok = 0
    with open(path, "wb") as f:
        for seqs in chunks:
            buf, pos, _, n = flat_buffer([seqs], bos_id, eos_id, 1)
            if n == 0:
                continue
            buf.tofile(f)
            hist += np.bincount(buf[pos - 1], minlength=vocab_size)
            n_ids, n_seq, n_tok = n_ids + len(buf), n_seq + n, n_tok + len(pos)
    return n_ids, n_seq, n_tok, hist


def file_reader(path):
    """``read(lo, hi)`` -> int32 ids ``[lo, hi)`` of the int32 file ``path`` (a plain read)."""
    def read(lo, hi):
        with open(path, "rb") as f:
            f.seek(4 * lo)
            return np.fromfile(f, dtype=np.int32, count=hi - lo)
    return read


def window_dtype(vocab_size: int, order: int):
    return np.uint16 if max(vocab_size, order) <= np.iinfo(np.uint16).max else np.int32


def partition_windows(read, n_ids: int, order: int, bos_id: int, edges: np.ndarray, folder,
                      vocab_size: int) -> list:
    """Write each target's window to the file of its bucket; returns the bucket paths.

    ``read(lo, hi)``: ids ``[lo, hi)`` of the stream (``file_reader`` or an array's slice);
    ``edges`` (B+1,): bucket b holds targets whose previous token is in ``[edges[b],
    edges[b+1])``. Row of a target at p: ``ids[p-M .. p]`` and ``d = min(p - bos_at, M)``,
    bos_at = the BOS starting its sequence (history tokens before it are masked by ``d``).
    """
    M = order - 1
    dt = window_dtype(vocab_size, order)
    paths = [Path(folder) / f"windows{b:05d}.bin" for b in range(len(edges) - 1)]
    outs = [open(p, "wb") for p in paths]
    try:
        for c0 in range(0, n_ids, CHUNK_TOKENS):
            c1 = min(c0 + CHUNK_TOKENS, n_ids)
            lo = max(c0 - M, 0)
            x = read(lo, c1)
            if lo > c0 - M:  # the stream's start: pad with BOS (masked by d anyway)
                x = np.concatenate([np.full(lo - (c0 - M), bos_id, dtype=x.dtype), x])
            at = np.arange(len(x))
            last_bos = np.maximum.accumulate(np.where(x == bos_id, at, -(M + 1)))
            p = np.flatnonzero(x[M:] != bos_id) + M  # targets of this chunk, local to x
            d = np.minimum(p - last_bos[p - 1], M)
            rows = np.empty((len(p), M + 2), dtype=dt)
            rows[:, :M + 1] = np.lib.stride_tricks.sliding_window_view(x, M + 1)[p - M]
            rows[:, M + 1] = d
            b = np.searchsorted(edges, x[p - 1], side="right") - 1
            by = np.argsort(b, kind="stable")
            cuts = np.searchsorted(b[by], np.arange(len(paths) + 1))
            for k in np.flatnonzero(np.diff(cuts)):
                rows[by[cuts[k]:cuts[k + 1]]].tofile(outs[k])
    finally:
        for f in outs:
            f.close()
    return paths


def load_windows(path, order: int, vocab_size: int):
    """A bucket file -> ``(buf, pos, starts)`` in the ``features.pad_sequences`` layout: the
    windows laid end to end, each target at the end of its window, its sequence start placed
    so that exactly ``d`` history tokens are in reach."""
    M = order - 1
    rows = np.fromfile(path, dtype=window_dtype(vocab_size, order)).reshape(-1, M + 2)
    buf = np.ascontiguousarray(rows[:, :M + 1]).ravel()
    pos = np.arange(len(rows), dtype=np.int64) * (M + 1) + M
    starts = pos - rows[:, M + 1].astype(np.int64) + 1
    return buf, pos, starts


class NpyAppender:
    """A 1-d ``.npy`` file of ``dtype`` built by ``append``; ``close`` writes the final header.

    Only the appended piece is ever in memory. Example::

        w = NpyAppender(path, np.float64); w.append(np.ones(3)); w.append(np.zeros(2))
        w.close()  # np.load(path) -> [1, 1, 1, 0, 0]
    """

    def __init__(self, path, dtype):
        self.path, self.dtype, self.n = Path(path), np.dtype(dtype), 0
        self.f = open(self.path, "wb")
        self.f.write(b"\0" * _HEADER)

    def append(self, a) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype).ravel()
        a.tofile(self.f)
        self.n += len(a)

    def close(self) -> Path:
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.n,)})
        body = header.encode("latin1")
        pad = _HEADER - 10 - len(body) - 1
        assert pad >= 0, "npy header longer than reserved"
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + (_HEADER - 10).to_bytes(2, "little") + body
                     + b" " * pad + b"\n")
        self.f.close()
        return self.path


def open_npy(path) -> np.ndarray:
    """A read-only memory map of the ``.npy`` file ``path`` (an empty array for length 0)."""
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    return a


def mapped_base(a):
    """The ``np.memmap`` an array views (None if it owns its memory)."""
    while a is not None and not isinstance(a, np.memmap):
        a = getattr(a, "base", None)
    return a


def release_pages(a) -> None:
    """Drop this process's resident pages of the memory map under ``a`` (no-op otherwise);
    the data stays in the page cache and is read back on the next touch."""
    m = mapped_base(a)
    mm = getattr(m, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)
