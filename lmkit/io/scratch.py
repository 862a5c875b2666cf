"""Temporary folders lmkit builds in, and the sweep of those a killed build left behind.

- ``make_temp_dir(prefix, dir=None) -> Path``: ``tempfile.mkdtemp`` (mode 0700, in ``dir``,
  default TMPDIR) holding an owner marker ``.lmkit-owner``: JSON with the host name, the pid,
  the pid's start time (field 22 of ``/proc/PID/stat``, clock ticks since boot; null where
  there is no ``/proc``), the boot id and the pid namespace, written by temp file + fsync +
  rename, so a folder never holds half a marker. ``prefix`` must start with one of
  ``PREFIXES``.
- ``sweep_stale(dir=None, log=None) -> list[Path]``: remove, in ``dir`` only (not below it),
  the folders a stopped lmkit process left: SIGINT, SIGTERM and errors remove their own
  folders, but SIGKILL, the OOM killer or a power loss cannot.

A folder is removed only if all of these hold: its name starts with one of ``PREFIXES``; it is
a folder, not a symlink (never followed); it belongs to this user; its marker is a regular
file that parses as a marker; the marker names this host (and this pid namespace, where both
are known); and its process no longer runs: no such pid, a zombie, a pid now held by another
process (another start time), or an earlier boot. Anything else (no marker, a marker that
cannot be parsed, another host, a live owner) is not ours and stays. Files are never touched.
Example (``lmkit train`` runs the sweep first)::

    d = make_temp_dir("lmkit-rich-", dir="/scratch")   # this process is killed by SIGKILL
    sweep_stale("/scratch")   # a later process: d is removed, with one line on stderr
    # "lmkit: removed a temporary folder left by a stopped lmkit process (pid 4242): PATH"
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from .files import stderr

MARKER = ".lmkit-owner"
FORMAT = "lmkit-temp-owner"
# every top-level temporary folder lmkit makes; a name that starts with one of these is a
# candidate for the sweep (the marker decides)
PREFIXES = ("lmkit-rich-", "lmkit-chain-", "lmkit-group-", "lmkit-compact-", "lmkit-ngram-",
            "lmkit-ids-", "lmkit-model-", "lmkit-spill-", "lmkit-crossfit-")
_MAX_MARKER = 4096


def _proc_stat(pid: int):
    """``(state, start)`` of ``pid`` from ``/proc/PID/stat`` (fields 3 and 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # the command name (field 2) may hold spaces and ")": the fields follow its last ")"
        rest = data[data.rindex(b")") + 2:].split()
        return rest[0].decode("ascii", "replace"), int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, ValueError):
        return None


def _pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[N]``): a container sharing TMPDIR and the host
    name with us counts pids in another one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def owner_record(pid: int | None = None) -> dict:
    """The marker's content for process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    info = _proc_stat(pid)
    return {"format": FORMAT, "version": 1, "host": socket.gethostname(), "pid": pid,
            "start": None if info is None else info[1], "boot": _boot_id(),
            "pid_ns": _pid_namespace()}


def make_temp_dir(prefix: str, dir=None) -> Path:
    """A new temporary folder ``dir/PREFIX*`` (``tempfile.mkdtemp``) with this process's owner
    marker in it. The caller removes it (``shutil.rmtree``) on every exit path it can see;
    ``sweep_stale`` removes it once this process has stopped without doing so."""
    if not prefix.startswith(PREFIXES):
        raise ValueError(f"temporary folder prefix {prefix!r}: not one of lmkit's "
                         f"({', '.join(PREFIXES)}); add it to scratch.PREFIXES")
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    try:
        data = json.dumps(owner_record()).encode("utf-8")
        tmp = folder / (MARKER + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)  # after a power loss the marker is whole or absent, never empty
        finally:
            os.close(fd)
        os.replace(tmp, folder / MARKER)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def read_marker(folder_fd: int) -> dict | None:
    """The owner marker in the open folder ``folder_fd``, or None if it is missing, not a
    regular file (a symlink included), too large, or not a marker (then it is not ours)."""
    try:
        fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_MARKER:
            return None
        m = json.loads(os.read(fd, _MAX_MARKER + 1).decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    finally:
        os.close(fd)
    ok = (isinstance(m, dict) and m.get("format") == FORMAT and m.get("version") == 1
          and isinstance(m.get("host"), str) and _is_int(m.get("pid")) and m["pid"] >= 1
          and (m.get("start") is None or _is_int(m["start"]) and m["start"] >= 0)
          and all(m.get(k) is None or isinstance(m[k], str) for k in ("boot", "pid_ns")))
    return m if ok else None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def owner_stopped(marker: dict, boot: str | None = None, pid_ns: str | None = None) -> bool:
    """True if the process ``marker`` names (on this host) no longer runs; ``boot`` and
    ``pid_ns``: this boot's id and this process's pid namespace. In doubt (a process we cannot
    inspect, a pid of another namespace) False: it runs."""
    if marker.get("boot") and boot and marker["boot"] != boot:
        return True  # pids and start times count from an earlier boot
    if marker.get("pid_ns") and pid_ns and marker["pid_ns"] != pid_ns:
        return False  # its pid means another process here: we cannot tell
    pid, start = marker["pid"], marker.get("start")
    info = _proc_stat(pid)
    if info is not None:
        state, now = info
        if state in ("Z", "X"):  # exited, not reaped yet: it will never remove its folder
            return True
        return start is not None and now != start  # another process holds the pid now
    try:  # no /proc (or hidden): ask the kernel whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, someone else's
        return False
    return False


def sweep_stale(dir=None, log=None) -> list[Path]:
    """Remove the folders in ``dir`` (default TMPDIR; that folder only) that stopped lmkit
    processes left (see the module docstring for the rule); one ``log`` line per folder
    (default: stderr). Returns the folders removed. Never raises for a folder it cannot read
    or remove: that one stays."""
    folder = Path(tempfile.gettempdir() if dir is None else dir)
    try:
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if e.name.startswith(PREFIXES))
    except OSError:  # missing, not a folder, unreadable: nothing of ours to sweep there
        return []
    host, boot, ns = socket.gethostname(), _boot_id(), _pid_namespace()
    uid = getattr(os, "geteuid", lambda: None)()
    removed = []
    for name in names:
        path = folder / name
        try:  # O_NOFOLLOW: a symlink named like ours fails here and is neither followed nor removed
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            mine = uid is None or os.fstat(fd).st_uid == uid
            marker = read_marker(fd) if mine else None
        finally:
            os.close(fd)
        if marker is None or marker["host"] != host or not owner_stopped(marker, boot, ns):
            continue
        try:
            _remove(path)
        except OSError:
            continue  # best effort; its marker is removed last, so a later sweep tries again
        (log or stderr)(f"lmkit: removed a temporary folder left by a stopped lmkit process "
                        f"(pid {marker['pid']}): {path}")
        removed.append(path)
    return removed


def _remove(path: Path) -> None:
    """Remove the folder ``path``: its entries (symlinks unlinked, not followed), then the
    marker, then the folder."""
    with os.scandir(path) as it:
        entries = [e for e in it if e.name != MARKER]
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path)
        else:
            os.unlink(e.path)
    os.unlink(path / MARKER)
    os.rmdir(path)
