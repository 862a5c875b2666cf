"""Compiled inner loops of the sparse scorer (``scoring.SparseScorer``): numba source, run as
cached native object code (``native.py``: later processes call them without importing numba).

Input, per active group g (lambda_g != 0), as a table of addresses (``scoring.table_addresses``:
int64 (4 G, 2) of (address, length), so that one compiled loop serves any number of groups):
``E_g`` float64 = ``exp(lambda_g S_g.data)`` (built once per parameters, by numpy), ``ind_g`` =
``S_g.indices`` and ``ptr_g`` = ``S_g.indptr`` as the folder stores them, not copied
(``params.stored_arrays``; pointers int32 or int64, columns uint16 in a compact folder, else of
the pointers' type: one compiled variant per pair, ``native_kernel``), ``dmap_g`` int64 (R_g,) =
the row's dense copy in ``D`` or -1 (empty: the group has none); and ``rows`` int64 (G, N) = the
row of every position per group (-1: no feature), as ``context_rows`` gives it. ``D`` (K, V)
float64 holds dense copies of the longest rows: multiplying one in is a vectorised pass,
cheaper than scattering more than ~V/3 entries. The loops allocate nothing (scratch comes from
the caller) and cannot raise: their object code then needs no numba runtime.
Output: per position ``Z = sum_j q[j] prod_g E_g[row_g, j]`` (the normaliser) and the target's
term ``q[t] prod_g E_g[row_g, t]``, so ``log P(t) = log(term) - log(Z)`` (natural log); or the
whole products (n, V) for full distributions.

Why products: ``exp(s)`` of the summed scores is the product of per-entry factors computed once,
so scoring does no ``exp``: a dense (V,) accumulator starts at q, every touched entry multiplies
its column, and Z is the accumulator's sum (untouched columns keep q[j], as in
``sparse.union_log_z``). Why ``shared``: positions come in history order, so neighbours often have the same rows in the groups that look at the last one or two tokens;
those groups' product (``base``) is rebuilt only when one of their rows changes. Each position
starts from ``base`` times its other groups' dense rows in one fused pass. The row ranges are
read here, from the rows (no (G, N) range arrays built in numpy first). Cost: one multiply per
touched entry of the other groups + 2 V per position. A position whose rows all equal the
previous one's (a quarter of them in history order: the same context) reuses its products and
costs nothing. The rows of the position ``AHEAD`` steps on are prefetched (``_prefetch``): a
row start is a cache miss the CPU would otherwise meet only when it gets there.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jitargs import arg1, arg2, block_cfunc, row


@intrinsic
def _prefetch(typingctx, arr, idx):  # pragma: no cover (jit)
    """Ask the CPU to start loading ``arr[idx]`` into cache (``llvm.prefetch``: a hint, no
    fault on any address, no result). Used to start the loads of the next positions' rows
    while this position's are multiplied in: a row start is a cache (and TLB) miss, and the
    scatter loop is too long for the CPU to reach the next row's first load by itself."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                       wraparound=False, boundscheck=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return sig, codegen


@njit(inline="always")
def _sum(a):  # pragma: no cover (jit)
    """Sum with 8 partial sums (a single running sum is one long chain of dependent adds)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = a.shape[0] - a.shape[0] % 8
    for j in range(0, m, 8):
        s0 += a[j]
        s1 += a[j + 1]
        s2 += a[j + 2]
        s3 += a[j + 3]
        s4 += a[j + 4]
        s5 += a[j + 5]
        s6 += a[j + 6]
        s7 += a[j + 7]
    for j in range(m, a.shape[0]):
        s0 += a[j]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


AHEAD = 2  # rows of the position this many steps ahead are prefetched
DTYPES = {"u2": np.uint16, "i4": np.int32, "i8": np.int64}


@njit(inline="always")
def _scatter(acc, E, ind, s, e):  # pragma: no cover (jit)
    """Multiply the row at ``s:e`` of one group into ``acc``."""
    for k in range(s, e):
        acc[ind[k]] *= E[k]


@njit(inline="always")
def _copy(dst, src):  # pragma: no cover (jit)
    """``dst[:] = src`` without numba's shape check (and the exception it could raise)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@njit(inline="always")
def _dense(acc, d):  # pragma: no cover (jit)
    """``acc *= d`` (one dense row)."""
    for j in range(acc.shape[0]):
        acc[j] *= d[j]


def _kernels(IT, PT):
    """The loops for columns of dtype ``IT`` and row pointers of dtype ``PT``. The per-group
    arrays come as ``tab`` int64 (4 G, 2) of (address, length): rows g, G + g, 2 G + g,
    3 G + g = group g's E (float64), columns (IT), row pointers (PT), dense map (int64)."""

    @njit(inline="always")
    def block_ranges(tab, rows, a, st, en):  # pragma: no cover (jit)
        """``st[g, i]:en[g, i]`` = position a + i's row of group g in its arrays (empty: no
        feature), or ``st[g, i] = -1 - k`` when that row is the dense copy ``D[k]``, for the
        ``st.shape[1]`` positions from a (fewer at the end: returns how many). One group at a
        time: the lookups of a group are independent loads, which the CPU overlaps."""
        G = rows.shape[0]
        m = min(st.shape[1], rows.shape[1] - a)
        for g in range(G):
            ptr, dm = row(tab, 2 * G + g, PT), row(tab, 3 * G + g, np.int64)
            has_dense = dm.shape[0] > 0
            for i in range(m):
                r = rows[g, a + i]
                if r < 0:
                    st[g, i] = 0
                    en[g, i] = 0
                elif has_dense and dm[r] >= 0:
                    st[g, i] = -1 - dm[r]
                    en[g, i] = 0
                else:
                    st[g, i] = ptr[r]
                    en[g, i] = ptr[r + 1]
        return m

    @njit(inline="always")
    def multiply_rows(dst, tab, D, st, en, i, shared, level):  # pragma: no cover (jit)
        """``dst *=`` position i's row (``block_ranges``: dense copy or stored entries) of
        every group g with ``shared[g] == level`` (``shared`` None: of every group)."""
        G = st.shape[0]
        for g in range(G):
            if shared is None or shared[g] == level:
                if st[g, i] < 0:
                    _dense(dst, D[-1 - st[g, i]])
                else:
                    _scatter(dst, row(tab, g, np.float64), row(tab, G + g, IT), st[g, i],
                             en[g, i])

    @njit
    def union_products(q, tab, D, rows, shared, targets, out_term, out_z, fsc,
                       isc):  # pragma: no cover (jit)
        """``out_term[n]``, ``out_z[n]`` for every position n (module docstring), in the order
        given (``rows`` (G, N) and ``targets`` come in history order: reading them in sequence,
        and neighbours sharing rows); ``shared`` (G,) int8: 0 = multiplied in at every
        position, 1 = kept in ``base`` (rebuilt when a level-1 or level-2 row changes), 2 =
        kept in ``outer`` (q times these rows; rebuilt only when one of them changes: the
        groups whose rows change far less often than the rest, e.g. the previous token's).
        Scratch (no allocation here): ``fsc`` float64 (3, V), ``isc`` int64 (2 G + 3, W),
        W >= G: the row ranges of W positions are looked up at a time."""
        V = q.shape[0]
        G = rows.shape[0]
        acc, base, outer = fsc[0], fsc[1], fsc[2]
        _copy(outer, q)  # q times the level-2 groups' rows
        st, en = isc[0:G], isc[G:2 * G]
        prev_st, prev_en, dk = isc[2 * G, :G], isc[2 * G + 1, :G], isc[2 * G + 2, :G]
        for g in range(G):
            prev_st[g] = 0
            prev_en[g] = 0
        for a in range(0, targets.shape[0], isc.shape[1]):
            m = block_ranges(tab, rows, a, st, en)
            for i in range(m):
                n = a + i
                new1 = new2 = new0 = n == 0
                for g in range(G):
                    if st[g, i] != prev_st[g] or en[g, i] != prev_en[g]:
                        if shared[g] == 1:
                            new1 = True
                        elif shared[g] == 2:
                            new2 = True
                        else:
                            new0 = True
                    prev_st[g] = st[g, i]
                    prev_en[g] = en[g, i]
                if not (new0 or new1 or new2):  # every row as at n - 1: the same products
                    out_z[n] = out_z[n - 1]
                    out_term[n] = acc[targets[n]]
                    continue
                if i + AHEAD < m:
                    for g in range(G):
                        s, e = st[g, i + AHEAD], en[g, i + AHEAD]
                        if s >= 0 and e > s:
                            _prefetch(row(tab, G + g, IT), s)
                            E = row(tab, g, np.float64)
                            for k in range(s, min(e, s + 24), 8):  # E's first 3 cache lines
                                _prefetch(E, k)
                if new2:
                    _copy(outer, q)
                    multiply_rows(outer, tab, D, st, en, i, shared, 2)
                if new1 or new2:
                    _copy(base, outer)
                    multiply_rows(base, tab, D, st, en, i, shared, 1)
                # the other groups' dense rows, fused with the copy of base (one pass, not 1 + k)
                nd = 0
                for g in range(G):
                    if shared[g] == 0 and st[g, i] < 0:
                        dk[nd] = -1 - st[g, i]
                        nd += 1
                if nd == 0:
                    _copy(acc, base)
                elif nd == 1:
                    d0 = D[dk[0]]
                    for j in range(V):
                        acc[j] = base[j] * d0[j]
                else:
                    d0, d1 = D[dk[0]], D[dk[1]]
                    for j in range(V):
                        acc[j] = base[j] * d0[j] * d1[j]
                    for k in range(2, nd):
                        _dense(acc, D[dk[k]])
                for g in range(G):
                    if shared[g] == 0 and st[g, i] >= 0:
                        _scatter(acc, row(tab, g, np.float64), row(tab, G + g, IT),
                                 st[g, i], en[g, i])
                out_z[n] = _sum(acc)
                out_term[n] = acc[targets[n]]

    @njit
    def product_rows(q, tab, D, rows, out, out_z, isc):  # pragma: no cover (jit)
        """``out[n, j] = q[j] prod_g E_g[row_g, j]`` for every position n and token j, and
        ``out_z[n]`` its sum over j (the normaliser): full next-token distributions.
        Scratch: ``isc`` int64 (2 G, W): the row ranges of W positions are looked up at a
        time."""
        G = rows.shape[0]
        st, en = isc[0:G], isc[G:2 * G]
        for a in range(0, out.shape[0], isc.shape[1]):
            m = block_ranges(tab, rows, a, st, en)
            for i in range(m):
                acc = out[a + i]
                _copy(acc, q)
                multiply_rows(acc, tab, D, st, en, i, None, 0)
                out_z[a + i] = _sum(acc)

    return union_products, product_rows


ARGSPECS = {
    "union_products": ["f8:1", "i8:2", "f8:2", "i8:2", "i1:1", "i8:1", "f8:1", "f8:1", "f8:2",
                       "i8:2"],
    "product_rows": ["f8:1", "i8:2", "f8:2", "i8:2", "f8:2", "f8:1", "i8:2"],
}


def native_kernel(name: str):
    """``(cfunc, argspec)`` for ``native.kernel``: ``name`` = ``union_products_<IT>_<PT>`` or
    ``product_rows_<IT>_<PT>`` (IT, PT: keys of ``DTYPES``; argument order as the loops')."""
    kind, it, pt = name.rsplit("_", 2)
    union_products, product_rows = _kernels(DTYPES[it], DTYPES[pt])
    if kind == "union_products":
        def entry(blk):  # pragma: no cover (jit)
            union_products(arg1(blk, 0, np.float64), arg2(blk, 1, np.int64),
                           arg2(blk, 2, np.float64), arg2(blk, 3, np.int64),
                           arg1(blk, 4, np.int8), arg1(blk, 5, np.int64),
                           arg1(blk, 6, np.float64), arg1(blk, 7, np.float64),
                           arg2(blk, 8, np.float64), arg2(blk, 9, np.int64))
    elif kind == "product_rows":
        def entry(blk):  # pragma: no cover (jit)
            product_rows(arg1(blk, 0, np.float64), arg2(blk, 1, np.int64),
                         arg2(blk, 2, np.float64), arg2(blk, 3, np.int64),
                         arg2(blk, 4, np.float64), arg1(blk, 5, np.float64),
                         arg2(blk, 6, np.int64))
    else:
        raise ValueError(f"no kernel {name!r} in fastscore")
    return block_cfunc(entry), ARGSPECS[kind]
