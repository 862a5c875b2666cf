"""Disk-backed 1-d ``.npy`` arrays: written piecewise, mapped read-only, pages released.

- ``NpyAppender``: a 1-d ``.npy`` file built by ``append`` (the header is rewritten with the
  final length on ``close``), so an array larger than memory is written a piece at a time;
- ``open_npy(path)``: a read-only memory map of such a file;
- ``mapped_base(a)`` / ``file_mapping(a)``: the ``np.memmap`` / ``mmap.mmap`` under an array;
- ``release_pages(*arrays)``: drop this process's resident pages of the file mappings under
  the arrays (they stay in the page cache), so reading a large mapped array once does not keep
  its whole size in the resident set.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

_HEADER = 128  # bytes reserved for a .npy header: magic, length, dict padded with spaces


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


def file_mapping(a):
    """The ``mmap.mmap`` an array views, through ``np.memmap``s, array bases and memoryviews
    (e.g. ``np.frombuffer`` of a mapped file); None for an array that owns its memory."""
    while a is not None:
        if isinstance(a, mmap.mmap):
            return a
        if isinstance(a, np.memmap) and isinstance(getattr(a, "_mmap", None), mmap.mmap):
            return a._mmap
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return None


def release_pages(*arrays) -> None:
    """Drop this process's resident pages under each array (its byte range of a read-only file
    mapping; no-op for arrays in memory). The data stay in the page cache and are read back on
    the next touch, so a pass over a mapped model does not leave its whole size resident."""
    for a in arrays:
        m = file_mapping(a)
        if m is None or not hasattr(m, "madvise") or not getattr(a, "nbytes", 0):
            continue
        try:
            with memoryview(m) as v:
                if not v.readonly:  # a private writable map would lose its changes
                    continue
                base = np.frombuffer(v, dtype=np.uint8).ctypes.data
            start = a.__array_interface__["data"][0] - base
            first = start - start % mmap.PAGESIZE
            m.madvise(mmap.MADV_DONTNEED, first, start + a.nbytes - first)
        except (OSError, ValueError, BufferError):  # a closed map: nothing resident
            pass
