"""Reading a file a user hands us: the one bounded reader of untrusted input files.

``open_regular(path, what, fix, ...)`` opens ``path`` (symlinks followed) and checks, before a
byte is read, that it is a regular file (never waits on a FIFO, never reads a device such as
``/dev/zero``) of at most ``limit`` bytes, or of exactly ``size`` bytes when a manifest declares
it; ``read_regular`` returns its bytes (one allocation of the checked size: a file that grows
while it is read is not followed); ``sha256_file`` hashes a file in chunks (never whole in
memory). Every failure is one error naming the file, what it is and ``fix``: a missing file
``MissingPathError`` (or ``error(missing)`` when the caller says what a missing file means),
anything else ``error`` (``InputError`` by default; model folders pass ``ModelFormatError``).

Used by model folders (``store.py``: manifests, ``tokenizer.model``, ``params.npz``, neural
weights), ``Tokenizer.load`` and the ARPA reader. Standard library only.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ..errors import InputError, MissingPathError

_CHUNK = 16 << 20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def open_regular(path, what: str, fix: str, *, limit: int | None = None,
                 size: int | None = None, error=InputError, missing: str | None = None):
    """``(binary file, bytes)`` of the regular file ``path`` (see the module docstring).

    ``limit``: the most bytes accepted; ``size``: the exact size (e.g. declared by a manifest).
    The caller closes the file (``with open_regular(...)[0] as f``).
    """
    path = Path(path)
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if missing is not None:
            raise error(missing) from None
        raise MissingPathError(f"{path}: no such {what}; {fix}") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e}); {fix}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {_kind(st.st_mode)}, not a regular file; {fix}")
        if size is not None and st.st_size != size:
            raise error(f"{path}: corrupt or truncated ({st.st_size} bytes, expected {size}); "
                        f"{fix}")
        if limit is not None and st.st_size > limit:
            raise error(f"{path}: {st.st_size} bytes, more than the {limit} allowed for the "
                        f"{what}; {fix}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, what: str, fix: str, **checks) -> bytes:
    """The bytes of the regular file ``path``, checked as ``open_regular(**checks)`` says."""
    f, n = open_regular(path, what, fix, **checks)
    error = checks.get("error", InputError)
    with f:
        try:
            data = f.read(n + 1)  # read() allocates what it is asked for: the checked size
        except OSError as e:
            raise error(f"{path}: cannot read the {what} ({e.strerror or e}); {fix}") from None
    if len(data) != n:
        raise error(f"{path}: changed size while being read ({n} bytes, then {len(data)}); {fix}")
    return data


def sha256_file(path, what: str = "file", fix: str = "check the path", **checks) -> str:
    """sha256 (hex) of the regular file ``path``, read in chunks of 16 MiB."""
    f, _ = open_regular(path, what, fix, **checks)
    h = hashlib.sha256()
    with f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["open_regular", "read_regular", "sha256_file"]
