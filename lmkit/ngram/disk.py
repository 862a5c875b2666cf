"""Disk-backed stages of the bounded n-gram build: the id stream and its bucket partition.

Used by ``ngram/build.py`` so that nothing of the size of the corpus or of the model is ever
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
- ``partition_positions(buf, pos, starts, order, edges, paths, V)``: the same windows, from
  the target positions of a padded buffer of any padding (the default model's token buffer,
  ``rich_build``), appended to existing bucket files: the windows of several texts in one
  file count as their concatenation; ``previous_token_histogram`` fixes its edges.

The model's own arrays are written with ``io.npyfile.NpyAppender``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..counts import flat_buffer
from ..io.npyfile import release_pages

CHUNK_TOKENS = 1 << 22  # most ids per read in the partition pass (16 MiB of int32)
BYTES_PER_ID = 120  # measured peak of the partition pass per id read (~0.5 GB at 4M ids)


def chunk_for(max_memory: int | None) -> int:
    """Ids per partition read so that a read takes at most a quarter of ``max_memory``."""
    if not max_memory:
        return CHUNK_TOKENS
    return int(min(CHUNK_TOKENS, max(1 << 16, max_memory // 4 // BYTES_PER_ID)))


def encode_to_disk(chunks, bos_id: int, eos_id: int, path, vocab_size: int):
    """Append every chunk's ``BOS ids EOS`` blocks to the int32 file ``path``.

    Returns ``(n_ids, n_sequences, n_targets, prev_hist)``: ids written, sequences, targets
    (tokens + one EOS per sequence) and the (V,) int64 count of each target's previous token.
    Example: [[[5, 6]], [[7]]], bos 1, eos 2 -> file [1, 5, 6, 2, 1, 7, 2], 7, 2, 5, and
    prev_hist counts 1 twice and 5, 6, 7 once.
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
                      vocab_size: int, chunk: int | None = None) -> list:
    """Write each target's window to the file of its bucket; returns the bucket paths.

    ``read(lo, hi)``: ids ``[lo, hi)`` of the stream (``file_reader`` or an array's slice);
    ``edges`` (B+1,): bucket b holds targets whose previous token is in ``[edges[b],
    edges[b+1])``; ``chunk``: ids per read (default ``CHUNK_TOKENS``). Row of a target at p:
    ``ids[p-M .. p]`` and ``d = min(p - bos_at, M)``, bos_at = the BOS starting its sequence
    (history tokens before it are masked by ``d``).
    """
    M = order - 1
    chunk = chunk or CHUNK_TOKENS
    dt = window_dtype(vocab_size, order)
    paths = [Path(folder) / f"windows{b:05d}.bin" for b in range(len(edges) - 1)]
    outs = [open(p, "wb") for p in paths]
    try:
        for c0 in range(0, n_ids, chunk):
            c1 = min(c0 + chunk, n_ids)
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
            _write_rows(rows, x[p - 1], edges, outs)
    finally:
        for f in outs:
            f.close()
    return paths


def _write_rows(rows: np.ndarray, prev: np.ndarray, edges: np.ndarray, outs: list) -> None:
    """Append each window row to the open file of its bucket (that of its previous token
    ``prev``), keeping the rows' order within a bucket."""
    b = np.searchsorted(edges, prev, side="right") - 1
    by = np.argsort(b, kind="stable")
    cuts = np.searchsorted(b[by], np.arange(len(outs) + 1))
    for k in np.flatnonzero(np.diff(cuts)):
        rows[by[cuts[k]:cuts[k + 1]]].tofile(outs[k])


def previous_token_histogram(buf, pos, vocab_size: int, chunk: int | None = None) -> np.ndarray:
    """(V,) int64 count of the previous token ``buf[p - 1]`` of every target position p of a
    padded buffer (``features.pad_sequences`` layout, e.g. ``counts.flat_buffer``), read
    ``chunk`` positions at a time (the arrays may be memory-mapped)."""
    chunk = chunk or CHUNK_TOKENS
    hist = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(pos), chunk):
        p = np.asarray(pos[i:i + chunk], dtype=np.int64)
        hist += np.bincount(buf[p - 1], minlength=vocab_size)
        _release(buf, pos, None, i, i + chunk, 1)
    return hist


def _release(buf, pos, starts, lo: int, hi: int, back: int) -> None:
    """Drop the pages of a mapped buffer read for positions ``lo:hi`` (``back`` tokens before
    the first; a no-op in memory): a pass over a mapped buffer holds a read of it at a time."""
    hi = min(hi, len(pos))
    if hi <= lo:
        return
    b0 = max(0, int(pos[lo]) - back)
    release_pages(pos[lo:hi], buf[b0:int(pos[hi - 1]) + 1],
                  *(() if starts is None else (starts[lo:hi],)))


def partition_positions(buf, pos, starts, order: int, edges: np.ndarray, paths: list,
                        vocab_size: int, chunk: int | None = None) -> None:
    """``partition_windows`` of the target positions of a padded buffer (``pos``, ``starts``
    as ``features.pad_sequences`` gives them, any padding; the arrays may be memory-mapped),
    appended to the bucket files ``paths`` (created if absent), ``chunk`` positions per read.

    Row of a target at p: ``buf[p-M .. p]`` and ``d = min(p - starts + 1, M)`` history tokens
    in its sequence (its BOS included), as the suffix groups' keys read them (``features``);
    the rows of several texts appended to the same files count as their concatenation.
    Example: buf [1, 5, 6, 2], pos [1, 2, 3], starts [1, 1, 1], order 2, one bucket -> rows
    [1, 5, 1], [5, 6, 1], [6, 2, 1].
    """
    M = order - 1
    chunk = chunk or CHUNK_TOKENS
    dt = window_dtype(vocab_size, order)
    outs = [open(p, "ab") for p in paths]
    try:
        for i in range(0, len(pos), chunk):
            p = np.asarray(pos[i:i + chunk], dtype=np.int64)
            s = np.asarray(starts[i:i + chunk], dtype=np.int64)
            rows = np.empty((len(p), M + 2), dtype=dt)
            for j in range(M + 1):  # tokens before the buffer are out of reach (masked by d)
                rows[:, j] = buf[np.maximum(p - M + j, 0)]
            rows[:, M + 1] = np.minimum(p - s + 1, M)
            _write_rows(rows, rows[:, M - 1] if M else buf[p - 1], edges, outs)
            _release(buf, pos, starts, i, i + chunk, M + 1)
    finally:
        for f in outs:
            f.close()


def load_windows(path, order: int, vocab_size: int):
    """A bucket file (or a list of them, read one after the other) -> ``(buf, pos, starts)``
    in the ``features.pad_sequences`` layout: the windows laid end to end, each target at the
    end of its window, its sequence start placed so that exactly ``d`` history tokens are in
    reach."""
    M = order - 1
    dt = window_dtype(vocab_size, order)
    paths = path if isinstance(path, (list, tuple)) else [path]
    rows = np.concatenate([np.fromfile(p, dtype=dt) for p in paths]).reshape(-1, M + 2)
    buf = np.ascontiguousarray(rows[:, :M + 1]).ravel()
    pos = np.arange(len(rows), dtype=np.int64) * (M + 1) + M
    starts = pos - rows[:, M + 1].astype(np.int64) + 1
    return buf, pos, starts
