"""Memory limits: parse sizes, know what the machine has, refuse steps that would not fit.

``parse_size("8G") -> 8589934592``. ``default_limit()`` is 80% of the memory available now.
``check_memory(needed, limit, what, fix)`` raises ``MemoryLimitError`` with the bytes needed, so a
step that would swap is refused up front with a message naming the fix.
"""
from __future__ import annotations

import os
import re

from .errors import MemoryLimitError, OptionError

_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_size(text) -> int:
    """Bytes of a size like ``"512M"``, ``"8G"``, ``"1.5G"`` or a plain integer.

    Example: ``parse_size("1.5K") -> 1536``.
    """
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise OptionError(f"max_memory {text!r} is not a size; write e.g. 512M, 8G or 1.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def proc_kib_field(path: str, key: str) -> int | None:
    """Bytes of the ``key: N kB`` line of a ``/proc`` file (``/proc/meminfo``,
    ``/proc/self/smaps_rollup``), or None where there is no such file or line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int:
    """Memory available now (MemAvailable on Linux; total physical memory elsewhere)."""
    avail = proc_kib_field("/proc/meminfo", "MemAvailable")
    if avail is not None:
        return avail
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_limit() -> int:
    return int(0.8 * available_bytes())


def format_bytes(n: float) -> str:
    """``format_bytes(3 * 2**30) -> '3.0 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def check_memory(needed: int, limit, what: str, fix: str) -> None:
    """Raise ``MemoryLimitError`` if ``needed`` bytes exceed ``limit`` (bytes, size text or None)."""
    limit = default_limit() if limit is None else parse_size(limit)
    if needed > limit:
        raise MemoryLimitError(f"{what} needs {format_bytes(needed)} ({needed} bytes) but the memory "
                               f"limit is {format_bytes(limit)}; {fix}")


_LIBC: list = []  # [the C library, or None where it has no malloc_trim], loaded once


def release_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``; a no-op
    elsewhere). The arrays a task frees stay in this process's resident set otherwise: a worker
    that counted the n-gram chain measured 1,341 MiB resident after the task, 126 MiB after
    this; the next task on that worker would add to the first's."""
    if not _LIBC:
        try:
            import ctypes
            libc = ctypes.CDLL(None)
            _LIBC.append(libc if hasattr(libc, "malloc_trim") else None)
        except (OSError, AttributeError):
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0].malloc_trim(0)
