r"""Compiled JSON Lines rows for ``lmkit score``: per-unit numbers -> UTF-8 bytes.

Input: per unit a head (``{"index": 3`` and, for documents of a jsonl input, ``, "id": ...``,
``, "line": 0``: given as the int64 (U,) line numbers, or as UTF-8 bytes with (U + 1,)
offsets), int64 ``tokens`` (U,) and float64 ``nll``, ``ppl``, ``bpb`` (U,). Output: the bytes
of ``{head}, "tokens": 57, "nll_nats": 201.3, "perplexity": 34.2, "bits_per_byte": 1.91}\n``
per unit, byte for byte what ``docscore``'s f-string writes (``repr`` of each float: the
shortest decimal that reads back as the same float, the closest one when several are).

How: one compiled pass (numba source run as cached native object code, ``native.py``: later
processes load it without importing numba; called through ctypes, so without the GIL: it runs
beside the reader thread) writes digits into a byte buffer. A float ``v = m 2^-k`` (53-bit
``m``) with ``1 <= k <= 57``, i.e. ``2^-5 <= v < 2^52`` (every number a document row normally
holds), is written exactly with int64
arithmetic (``_float``): its integer part, then Steele & White's free-format digit loop over
the fraction scaled by ``2^(k+2)``, stopping at the first digit where the decimal lies inside
the float's rounding interval (its bounds included when ``m`` is even: a decimal on the
bound reads back as ``v`` by round-half-even); when both that digit and the next one up lie
inside, the closer wins, an exact tie going to the even digit (David Gay's ``dtoa`` mode 0,
which CPython's ``repr`` runs). A row holding any other float (0, below 2^-5, 2^52 and up) is
left to Python's ``repr`` (``rows`` splices it in), so every row is exact.
``tests/test_jsonrows.py`` compares the bytes with ``repr`` on ~250k floats (5.6M once, by
hand), ties and rounding-boundary cases included.

Without numba (to compile the pass once) ``rows`` returns None and the caller formats with
f-strings.
"""
from __future__ import annotations

import importlib.util
import threading

import numpy as np

from .. import native

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_JIT_LOCK = threading.Lock()

# the literal pieces of a row, in order; ``_PIECES_OFF[i]:_PIECES_OFF[i + 1]`` is piece i
_PIECES = [b'{"index": ', b', "tokens": ', b', "nll_nats": ', b', "perplexity": ',
           b', "bits_per_byte": ', b'}\n']
_PIECES_BUF = np.frombuffer(b"".join(_PIECES), dtype=np.uint8)
_PIECES_OFF = np.cumsum([0] + [len(p) for p in _PIECES]).astype(np.int64)
ROW_BYTES = 40 + 3 * 24 + 2 * 20  # a row's bytes besides its head, at most (pieces, numbers)


def _piece(buf, pos, pieces, poff, i):  # pragma: no cover (jit)
    """Copy literal piece ``i`` to ``buf[pos:]``; the new end."""
    for j in range(poff[i], poff[i + 1]):
        buf[pos] = pieces[j]
        pos += 1
    return pos


def _uint(buf, pos, x):  # pragma: no cover (jit)
    """Write the decimal digits of the int64 ``x >= 0`` at ``buf[pos:]``; the new end."""
    n = 1
    y = x
    while y >= 10:
        y //= 10
        n += 1
    for j in range(n - 1, -1, -1):
        buf[pos + j] = 48 + x % 10
        x //= 10
    return pos + n


def _float(buf, pos, v):  # pragma: no cover (jit)
    """Write ``repr(v)`` at ``buf[pos:]`` and return the new end, or return -1 (nothing
    written that counts) when ``v`` is outside the exact domain (module docstring)."""
    if not (v > 0.0):
        return -1
    bits = np.float64(v).view(np.int64)
    E = (bits >> 52) & 0x7FF
    f = bits & 0xFFFFFFFFFFFFF
    if E == 0 or E == 0x7FF:  # subnormal, inf, NaN
        return -1
    m = f | (np.int64(1) << 52)
    k = 1075 - E  # v = m 2^-k
    if k < 1 or k > 57:
        return -1
    pos = _uint(buf, pos, m >> k)
    buf[pos] = 46  # "."
    pos += 1
    F = m & ((np.int64(1) << k) - 1)
    if F == 0:  # an integer: Python writes "3.0"
        buf[pos] = 48
        return pos + 1
    # the fraction and the half-gaps to the neighbouring floats, scaled by S = 2^(k+2);
    # the gap below is half as wide when m is the smallest mantissa of its binade
    shift = k + 2
    S = np.int64(1) << shift
    R = F << 2
    Mp = np.int64(2)
    Mm = np.int64(1) if f == 0 and E > 1 else np.int64(2)
    even = (m & 1) == 0
    while True:
        R *= 10
        Mp *= 10
        Mm *= 10
        U = R >> shift
        R &= S - 1
        low = R < Mm or (even and R == Mm)
        high = R + Mp > S or (even and R + Mp == S)
        if low and high:
            if 2 * R > S or (2 * R == S and (U & 1) == 1):
                U += 1
        elif high:
            U += 1
        buf[pos] = 48 + U
        pos += 1
        if low or high:
            return pos


def _rows(numbers, heads, hoff, tok, nll, ppl, bpb, pieces, poff, buf, ends):  # pragma: no cover
    """Write every row to ``buf``; ``ends[u]`` = one past row u's last byte, or -1 where row
    u holds a float outside the exact domain (then its bytes are not written: the caller
    formats it). Heads: ``numbers[u]`` when ``hoff`` is empty, else ``heads[hoff[u]:hoff[u+1]]``."""
    pos = 0
    for u in range(tok.shape[0]):
        start = pos
        if hoff.shape[0] == 0:
            pos = _piece(buf, pos, pieces, poff, 0)
            pos = _uint(buf, pos, numbers[u])
        else:
            for j in range(hoff[u], hoff[u + 1]):
                buf[pos] = heads[j]
                pos += 1
        pos = _piece(buf, pos, pieces, poff, 1)
        pos = _uint(buf, pos, tok[u])
        pos = _piece(buf, pos, pieces, poff, 2)
        pos = _float(buf, pos, nll[u])
        if pos >= 0:
            pos = _piece(buf, pos, pieces, poff, 3)
            pos = _float(buf, pos, ppl[u])
        if pos >= 0:
            pos = _piece(buf, pos, pieces, poff, 4)
            pos = _float(buf, pos, bpb[u])
        if pos >= 0:
            pos = _piece(buf, pos, pieces, poff, 5)
            ends[u] = pos
        else:
            pos = start
            ends[u] = -1


ARGSPEC = ["i8:1", "u1:1", "i8:1", "i8:1", "f8:1", "f8:1", "f8:1", "u1:1", "i8:1", "u1:1", "i8:1"]


def native_kernel(name: str):
    """``(cfunc, argspec)`` for ``native.kernel("io.jsonrows", "rows")`` (``_rows``' arguments
    in order). Its helpers are compiled first and replace their Python versions here, because
    numba resolves them as globals when it compiles their caller."""
    if name != "rows":
        raise ValueError(f"no kernel {name!r} in io.jsonrows")
    from numba import njit

    from ..jitargs import arg1, block_cfunc
    with _JIT_LOCK:
        g = globals()
        for helper in ("_piece", "_uint", "_float"):
            if not hasattr(g[helper], "py_func"):
                g[helper] = njit(error_model="numpy")(g[helper])
    rows_ = njit(error_model="numpy")(_rows)
    i8, u1, f8 = np.int64, np.uint8, np.float64

    def entry(blk):  # pragma: no cover (jit)
        rows_(arg1(blk, 0, i8), arg1(blk, 1, u1), arg1(blk, 2, i8), arg1(blk, 3, i8),
              arg1(blk, 4, f8), arg1(blk, 5, f8), arg1(blk, 6, f8), arg1(blk, 7, u1),
              arg1(blk, 8, i8), arg1(blk, 9, u1), arg1(blk, 10, i8))
    return block_cfunc(entry), ARGSPEC


def py_row(head: str, t: int, x: float, p: float, b: float) -> str:
    """One row by Python's f-string (the reference and the fallback)."""
    return (f'{head}, "tokens": {t}, "nll_nats": {x!r}, "perplexity": {p!r}, '
            f'"bits_per_byte": {b!r}}}\n')


def rows(tok, nll, ppl, bpb, *, numbers=None, heads=None) -> bytes | None:
    """The JSONL bytes of U rows (module docstring), or None without the compiled pass.

    ``numbers``: int64-able (U,) line numbers (heads ``{"index": n``), or ``heads``: U head
    strings. ``tok`` int64 (U,), ``nll``/``ppl``/``bpb`` float64 (U,), all finite."""
    kernel = native.kernel("io.jsonrows", "rows") if HAVE_NUMBA else None
    if kernel is None:
        return None
    U = len(tok)
    if heads is None:
        num = np.asarray(numbers, dtype=np.int64)
        hbuf, hoff = np.zeros(0, np.uint8), np.zeros(0, np.int64)
        head_bytes = U * 30
    else:
        enc = [h.encode("utf-8") for h in heads]
        hbuf = np.frombuffer(b"".join(enc), dtype=np.uint8).copy()  # writable: one signature
        hoff = np.zeros(U + 1, dtype=np.int64)
        np.cumsum([len(h) for h in enc], out=hoff[1:])
        num, head_bytes = np.zeros(0, np.int64), len(hbuf)
    buf = np.empty(head_bytes + U * ROW_BYTES, dtype=np.uint8)
    ends = np.empty(U, dtype=np.int64)
    tok = np.ascontiguousarray(tok, dtype=np.int64)
    nll, ppl, bpb = (np.ascontiguousarray(a, dtype=np.float64) for a in (nll, ppl, bpb))
    kernel(num, hbuf, hoff, tok, nll, ppl, bpb, _PIECES_BUF, _PIECES_OFF, buf, ends)
    bad = np.flatnonzero(ends < 0)
    if len(bad) == 0:
        return buf[:ends[-1] if U else 0].tobytes()
    # rare: rows with a float outside the exact domain, formatted by Python and spliced in
    parts, start = [], 0
    for u in bad.tolist():
        prev = np.max(ends[:u], initial=0)
        parts.append(buf[start:prev].tobytes())
        head = f'{{"index": {int(num[u])}' if heads is None else heads[u]
        parts.append(py_row(head, int(tok[u]), float(nll[u]), float(ppl[u]),
                            float(bpb[u])).encode("utf-8"))
        start = prev
    parts.append(buf[start:np.max(ends, initial=0)].tobytes())
    return b"".join(parts)
