"""Files and folders lmkit writes: checked first, written atomically, never half there.

- ``check_output_writable(path, inputs=..., models=...)``: before any work, refuse an output
  that could not be written or would destroy data (a folder where a file goes, a block device
  or socket, a dangling symlink, a parent that is a file, an unwritable or read-only location,
  the same file as one of the ``inputs`` (``st_dev``/``st_ino``, so symlinks and hard links
  count), a file or folder inside one of the model folders ``models`` being read).
- ``atomic_write(path, data)``: the one way lmkit writes a file: a hidden temp file
  ``.NAME.tmp-PID-*`` in the same folder as the link target, fsync, ``os.replace``; on any
  failure (a signal included) the temp file is removed and ``path`` is untouched; a temp file
  left by a killed writer (its PID no longer runs) is removed by the next write of ``path``.
  Mode 0o666 less the umask. Special outputs (a FIFO, a character device such as
  ``/dev/null``, ``/dev/stdout`` or any path through ``/dev`` or ``/proc``) are opened and
  written to (appending), never replaced or renamed over.
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

from .errors import InputError, LmkitError, OutputError


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


def _through_dev(path: Path) -> bool:
    """True if ``path`` or a symlink it leads through lies in ``/dev`` or ``/proc`` (e.g.
    ``/dev/stdout`` -> ``/proc/self/fd/1`` -> the file the shell redirected to): such a path
    names an open file of some process, written to in place and never renamed over."""
    p = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on a symlink chain
        if p == "/dev" or p.startswith(("/dev/", "/proc/")):
            return True
        try:
            target = os.readlink(p)
        except OSError:  # not a symlink (or gone): the chain ends here
            return False
        p = os.path.normpath(os.path.join(os.path.dirname(p), target))
    return False


def _resolve_output(path, folder: bool, is_ours) -> tuple[Path, bool]:
    """``(path to write, written in place?)`` for ``check_output_writable``."""
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
        if not _through_dev(path):
            path = Path(os.path.realpath(path))
    if st is None and not folder and _through_dev(path):
        raise OutputError(f"{path}: no such device; /dev and /proc hold no output files, "
                          "pass a file path")
    if st is not None:
        if folder:
            if not stat.S_ISDIR(st.st_mode) or is_ours is None or not is_ours(path):
                raise InputError(f"{path}: exists and is not a model folder; pass a new path, "
                                 "or an existing lmkit model folder to replace it")
        elif stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: is a folder; pass a file path")
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or (
                stat.S_ISREG(st.st_mode) and _through_dev(path)):
            return path, True  # written to in place: a pipe, a terminal, /dev/null, stdout
        elif not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{path}: is not a regular file, FIFO or character device (a "
                              "socket or block device); pass a file path, or omit the output "
                              "to write to stdout")
    parent = _existing_ancestor(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-{os.getpid()}-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{path}: cannot write in {parent} ({e.strerror}); "
                          "pick a writable location") from None
    return path, False


def check_output_writable(path, *, folder: bool = False, is_ours=None, inputs=(),
                          models=()) -> Path:
    """Refuse, before any work, an output that could not be written or would destroy data.

    ``folder=True``: a model folder; it may exist only as a folder ``is_ours(path)`` accepts
    (``store.is_model_folder``). Otherwise a file; it may exist as a regular file (a symlink
    to one is followed) or as a FIFO or character device (written to in place, see
    ``atomic_write``). In both cases the nearest existing parent must be a writable folder
    (checked by creating and removing a temporary file there: permissions, read-only file
    systems and full inodes all show). ``inputs`` (files or folders of text read by the same
    command) and ``models`` (model folders read) are checked with ``check_not_input``.
    Returns the path to write (symlinks of regular file outputs resolved).
    """
    out, _ = _resolve_output(path, folder, is_ours)
    check_not_input(path, inputs=inputs, models=models, folder=folder)
    return out


# ---- an output is never an input -------------------------------------------------------------
MAX_WALK = 10_000  # entries looked at per input folder (a model folder holds a handful)


def _file_id(st) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _walk_ids(folder, ids: dict, label: str) -> None:
    """Add the id of every file and folder under ``folder`` (symlinks followed to what they
    name, not descended) to ``ids`` as ``id -> label of the path``."""
    stack, seen = [os.fspath(folder)], 0
    while stack and seen < MAX_WALK:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # an unreadable folder: the reader will say so
        for e in entries:
            seen += 1
            try:
                st = os.stat(e.path)
            except OSError:
                continue
            ids.setdefault(_file_id(st), label.format(e.path))
            if stat.S_ISDIR(st.st_mode) and not e.is_symlink():
                stack.append(e.path)


def _ancestor_ids(path) -> list[tuple[int, int]]:
    """Ids of the folders holding ``path`` (resolved), nearest first, up to the root."""
    p = Path(os.path.realpath(path)).parent
    ids = []
    while True:
        try:
            ids.append(_file_id(os.stat(p)))
        except OSError:
            pass  # not there yet (a new output's parent): its ancestors still count
        if p.parent == p:
            return ids
        p = p.parent


def check_not_input(path, *, inputs=(), models=(), folder: bool = False) -> None:
    """Refuse (``InputError``) an output ``path`` that is the same file as one of ``inputs``
    (regular files, or folders whose files are read; ``None`` entries, terminals and pipes
    are skipped), or that is, lies
    inside or (for ``folder`` outputs) holds one of the model folders ``models``.

    Files are compared by ``(st_dev, st_ino)``, so a symlink or hard link to an input is the
    input. Paths that do not exist yet are skipped (their readers report them).
    """
    in_ids: dict = {}
    for p in inputs:
        if p is None:
            continue
        try:
            st = os.stat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            _walk_ids(p, in_ids, "the input {}")
        elif stat.S_ISREG(st.st_mode):  # a terminal or pipe is read and written at once
            in_ids.setdefault(_file_id(st), f"the input {p}")
    model_ids: dict = {}
    for m in models:
        try:
            st = os.stat(m)
        except OSError:
            continue
        model_ids[_file_id(st)] = str(m)
        if stat.S_ISDIR(st.st_mode):
            _walk_ids(m, in_ids, f"a file of the model {m} being read ({{}})")
    if not in_ids and not model_ids:
        return
    fix = "pick another output path"
    try:
        out_id = _file_id(os.stat(path))
    except OSError:
        out_id = None
    if out_id in in_ids:
        what = in_ids[out_id]
        raise InputError(f"output {path} is {what if what.startswith('a file') else 'the same file as ' + what}"
                         "; writing it would destroy the input; " + fix)
    if out_id in model_ids:
        raise InputError(f"output {path} is the model folder {model_ids[out_id]} being read; "
                         + fix)
    for a in _ancestor_ids(path):
        if a in model_ids:
            raise InputError(f"output {path} is inside the model folder {model_ids[a]} being "
                             f"read; a model folder holds only its own files, {fix}")
    if folder and out_id is not None:
        for p in [x for x in inputs if x is not None] + list(models):
            if out_id in _ancestor_ids(p):
                raise InputError(f"output {path} holds the input {p}; replacing it would "
                                 f"destroy the input; {fix}")


def same_as_stdout(path) -> bool:
    """True if ``path`` is the file this process's stdout writes to (``/dev/stdout``, or the
    file the shell redirected stdout to)."""
    try:
        return _file_id(os.stat(path)) == _file_id(os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # no stdout, or a replaced sys.stdout
        return False


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


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def output_error(path, e: OSError, in_place: bool = False) -> OutputError:
    """The one-line error of a failed write of ``path`` (full disk, quota, I/O error)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that file system or pick another output path"
    else:
        fix = "pick another output path"
    done = "what was written is incomplete" if in_place else "nothing was written"
    return OutputError(f"{path}: cannot write ({e.strerror or e}); {done}, {fix}")


def _write_in_place(path: Path, data, encoding: str) -> None:
    """Write ``data`` into an existing FIFO, character device or ``/dev``/``/proc`` path:
    opened for appending (``> out`` truncated it already, ``>> log`` keeps what it holds),
    never created, truncated or renamed over."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise OutputError(f"{path}: cannot open for writing ({e.strerror}); pass a file "
                          "path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode(encoding) if isinstance(data, str) else data)
    except BrokenPipeError:
        raise
    except OSError as e:
        if isinstance(e, LmkitError) or e.errno not in _WRITE_ERRNOS:
            raise
        raise output_error(path, e, in_place=True) from None


def atomic_write(path, data, *, encoding: str = "utf-8", inputs=(), models=()) -> Path:
    """Write ``data`` (bytes, str, or a callable taking a binary file) to ``path`` atomically.

    Temp file ``.NAME.tmp-PID-*`` in the folder of the file (symlinks are written through:
    the temp file goes next to their target), fsync, ``os.replace``; on any failure (a signal
    included) the temp file is removed and ``path`` is untouched. A FIFO, a character device
    or a path through ``/dev``/``/proc`` is written to in place instead (see
    ``_write_in_place``). ``inputs``/``models``: see ``check_not_input``. A full disk or
    another write failure becomes an ``OutputError`` naming the path. Used for every file
    lmkit writes.
    """
    given = path
    path, in_place = _resolve_output(path, False, None)
    check_not_input(given, inputs=inputs, models=models)
    if in_place:
        _write_in_place(path, data, encoding)
        return path
    parent = path.parent if str(path.parent) else Path(".")
    recover_interrupted(path)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path, "tmp"), dir=parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror}); pick a writable "
                          "location") from None
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
        if isinstance(e, OSError) and not isinstance(e, LmkitError) and (
                e.errno in _WRITE_ERRNOS or e.errno is None):
            raise output_error(path, e) from None
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
