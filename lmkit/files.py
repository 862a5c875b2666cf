"""Files and folders lmkit writes: checked first, written atomically, never half there.

- ``check_output_writable(path)``: before any work, refuse an output that could not be
  written or would destroy data (a folder where a file goes, a device, a FIFO, a dangling
  symlink, a parent that is a file, an unwritable or read-only location).
- ``atomic_write(path, data)``: the one way lmkit writes a file: a hidden temp file
  ``.NAME.tmp-PID-*`` in the same folder, fsync, ``os.replace``; on any failure (a signal
  included) the temp file is removed and ``path`` is untouched. Mode 0o666 less the umask.
- ``replace_folder(tmp, path)``: put a complete folder in place of an older one; one
  ``renameat2(RENAME_EXCHANGE)`` on Linux, elsewhere two renames that ``recover_interrupted``
  finishes if the process died between them.

Standard library only, so every stage can import it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from .errors import InputError, OutputError


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists; raises if one of them is not a folder."""
    parent = path.parent if str(path.parent) else Path(".")
    while True:
        try:
            st = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):  # go up to what exists
            parent = parent.parent
            continue
        except OSError as e:
            raise OutputError(f"{path}: cannot use its folder {parent} ({e.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: {parent} is a file, not a folder; pick another output path")
        return parent


def check_output_writable(path, *, folder: bool = False, is_ours=None) -> Path:
    """Refuse, before any work, an output that could not be written or would destroy data.

    ``folder=True``: a model folder; it may exist only as a folder ``is_ours(path)`` accepts
    (``store.is_model_folder``). Otherwise a file; it may exist only as a regular file (a
    symlink to one is followed). In both cases
    the nearest existing parent must be a writable folder (checked by creating and removing a
    temporary file there: permissions, read-only file systems and full inodes all show).
    Returns the path to write (symlinks of file outputs resolved).
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise OutputError(f"output path {str(path)!r} names no file or folder; pass a name")
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # a parent that is a file: reported below
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot use as output ({e.strerror})") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise OutputError(f"{path}: dangling symbolic link; remove it or pass another "
                              "path") from None
        except OSError as e:
            raise OutputError(f"{path}: cannot follow the symbolic link ({e.strerror}); "
                              "pass another path") from None
        if folder:
            raise OutputError(f"{path}: is a symbolic link; pass the real folder path")
        path = Path(os.path.realpath(path))
    if st is not None:
        if folder:
            if not stat.S_ISDIR(st.st_mode) or is_ours is None or not is_ours(path):
                raise InputError(f"{path}: exists and is not a model folder; pass a new path, "
                                 "or an existing lmkit model folder to replace it")
        elif stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: is a folder; pass a file path")
        elif not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{path}: is not a regular file (a device, FIFO or socket); "
                              "pass a file path, or omit the output to write to stdout")
    parent = _existing_ancestor(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-{os.getpid()}-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{path}: cannot write in {parent} ({e.strerror}); "
                          "pick a writable location") from None
    return path


# ---- atomic writes ---------------------------------------------------------------------------
def tmp_prefix(path: Path, what: str) -> str:
    return f".{path.name}.{what}-{os.getpid()}-"


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<what>tmp|old|probe)-(?P<pid>\d+)-[^/]*")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def recover_interrupted(path, log=None, is_ours=None) -> None:
    """Finish what a killed write of ``path`` left: restore ``.NAME.old-*`` if ``path`` is gone,
    else remove leftovers of dead writers (``.NAME.tmp-PID-*``, ``.NAME.old-PID-*``).

    Only entries named after ``path`` whose writer process no longer runs are touched, and a
    moved-aside folder is restored only if ``is_ours`` accepts it.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in sorted(entries, key=lambda e: e.name):
        m = _LEFTOVER.fullmatch(entry.name)
        if not m or m["name"] != path.name or _pid_alive(int(m["pid"])):
            continue
        leftover = Path(entry.path)
        try:
            if (m["what"] == "old" and not os.path.lexists(path)
                    and is_ours is not None and is_ours(leftover / "m")):
                os.replace(leftover / "m", path)
                (log or stderr)(f"lmkit: restored {path} from an interrupted replace")
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except OSError:
            pass  # best effort: a leftover we cannot remove is harmless


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def atomic_write(path, data, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, str, or a callable taking a binary file) to ``path`` atomically.

    Temp file ``.NAME.tmp-PID-*`` in the same folder, fsync, ``os.replace``; on any failure
    (a signal included) the temp file is removed and ``path`` is untouched. File-system
    errors become ``OutputError`` naming the path. Used for every file lmkit writes.
    """
    path = check_output_writable(path)
    parent = path.parent if str(path.parent) else Path(".")
    recover_interrupted(path)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path, "tmp"), dir=parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; open() would honour the umask
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode(encoding) if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"{path}: cannot write ({e.strerror or e}); nothing was written, "
                              "free space or pick another location") from None
        raise
    return path


def _exchange_fn():
    """``renameat2`` from libc where it exists (Linux, glibc >= 2.28), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _exchange_fn()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (``RENAME_EXCHANGE``); False if the system cannot."""
    if _RENAMEAT2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path``, which holds an older model."""
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old model
        return
    old = Path(tempfile.mkdtemp(prefix=tmp_prefix(path, "old"), dir=tmp.parent))
    os.replace(path, old / "m")  # a kill from here on is undone by recover_interrupted
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old / "m", path)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
