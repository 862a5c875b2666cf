"""Disk-backed 1-d ``.npy`` arrays: written piecewise, mapped read-only, copied as files.

- ``NpyAppender``: a 1-d ``.npy`` file built by ``append`` (the header is rewritten with the
  final length on ``close``), so an array larger than memory is written a piece at a time;
- ``open_npy(path)``: a read-only memory map of such a file;
- ``mapped_base(a)`` / ``npy_file_of(a)``: the memory map under an array, and the ``.npy`` file
  it is the whole of (None otherwise);
- ``write_npy(a, path)``: ``np.save``, except that an array that is a whole mapped ``.npy``
  file is hard-linked (or copied by the kernel) instead of read through memory;
- ``release_pages(a)``: drop this process's resident pages of the map under ``a`` (they stay
  in the page cache), so reading a large mapped array once does not keep its whole size in
  the resident set.
"""
from __future__ import annotations

import mmap
import os
import shutil
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


def release_pages(a) -> None:
    """Drop this process's resident pages of the memory map under ``a`` (no-op otherwise);
    the data stays in the page cache and is read back on the next touch."""
    m = mapped_base(a)
    mm = getattr(m, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def npy_file_of(a) -> Path | None:
    """The ``.npy`` file whose whole data ``a`` is (a read-only map of it), else None."""
    m = mapped_base(a)
    name = getattr(m, "filename", None)
    if name is None or a.flags.writeable or not a.flags.c_contiguous or a.ndim != 1:
        return None
    if a.__array_interface__["data"][0] != m.__array_interface__["data"][0] or a.nbytes != m.nbytes:
        return None
    try:  # the file may be gone (its folder removed while the map lives on)
        f = open(name, "rb")
    except OSError:
        return None
    with f:
        if os.fstat(f.fileno()).st_size != m.offset + m.nbytes:
            return None
        try:
            major, _ = np.lib.format.read_magic(f)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if major == 1 else
                                     np.lib.format.read_array_header_2_0)(f)
        except (ValueError, SyntaxError):
            return None
        if f.tell() != m.offset or shape != a.shape or dtype != a.dtype or fortran:
            return None
    return Path(name)


def write_npy(a, path) -> None:
    """Write array ``a`` as the ``.npy`` file ``path``: a whole mapped ``.npy`` file is linked
    (same file system) or copied by the kernel, never read into this process; anything else
    goes through ``np.save``."""
    src = npy_file_of(a)
    if src is None:
        np.save(path, np.asarray(a), allow_pickle=False)
        return
    try:
        os.link(src, path)
    except OSError:
        shutil.copyfile(src, path)
