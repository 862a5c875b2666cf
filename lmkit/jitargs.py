"""Numba helpers for the native kernels (``native.py``): arrays from a packed argument block.

Input: ``blk`` int64 (3 A,), the block ``native.Kernel`` packs from A arguments, three slots
each: an array as (address, shape[0], shape[1]) (C-contiguous; shape[1] = 0 for 1-D), an int
as (value, 0, 0). Output: ``arg1(blk, i, np.float64)`` = argument i as a 1-D array of that
dtype (a view: no copy, no allocation), ``arg2`` the 2-D view, ``argi`` the int; ``row(tab, g,
dtype)`` = row g of a table (G, 2) of (address, length): the per-group arrays, whose number
varies by model, so they travel as addresses rather than as a tuple (a tuple's length is part
of its numba type: one compile per group count).

Why: a ``cfunc`` whose only argument is a pointer to this block has one C signature for every
kernel, so its object code can be cached and called through ctypes with no numba import
(numba's import and first call cost ~0.4 CPU s per process: docs/speed.md "Eval, third pass").
Imported only where numba is (the kernels' modules).
"""
from __future__ import annotations

from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

SIGNATURE = types.void(types.CPointer(types.int64))  # every kernel's C signature: (int64 *blk)


def block_cfunc(entry):
    """``entry(blk)`` compiled as a kernel: C signature ``void(int64 *blk)``, numpy's error
    model (no exception can be raised, so the object code needs no numba runtime)."""
    return cfunc(SIGNATURE, error_model="numpy")(entry)


@intrinsic
def _ptr(typingctx, addr, dtype):  # pragma: no cover (jit)
    """The int64 ``addr`` as a pointer to ``dtype`` (a numpy scalar type, e.g. np.float64)."""
    sig = types.CPointer(dtype.instance_type)(addr, dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


@njit(inline="always")
def arg1(blk, i, dtype):  # pragma: no cover (jit)
    return carray(_ptr(blk[3 * i], dtype), (blk[3 * i + 1],))


@njit(inline="always")
def arg2(blk, i, dtype):  # pragma: no cover (jit)
    return carray(_ptr(blk[3 * i], dtype), (blk[3 * i + 1], blk[3 * i + 2]))


@njit(inline="always")
def argi(blk, i):  # pragma: no cover (jit)
    return blk[3 * i]


@njit(inline="always")
def row(tab, g, dtype):  # pragma: no cover (jit)
    return carray(_ptr(tab[g, 0], dtype), (tab[g, 1],))
