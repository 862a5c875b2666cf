r"""Packed history keys of a pure n-gram model: the form ARPA import and entropy pruning share.

A packed key is a history as one int64, oldest token at weight ``V**0`` (``pack``: (c, m) id
rows -> (c,) keys; needs ``V**M < 2**63``). lmkit's own rows use chained keys (``features.py``);
these helpers go between the two:

- ``suffix_params(q, levels, V, info)``: per history length ``(hist, cols, S)`` with packed
  ``hist`` -> ``SparseParams`` (groups ``Suffix(1..M)``, lambdas 1) and each row's packed key;
- ``packed_view(params)``: a model's rows re-keyed and sorted by packed key, with per-entry
  log-probabilities and per-row log back-offs (``tables.backoff_tables``);
- ``pair_index`` / ``find_pairs`` / ``packed_rows``: lookups of (history, token) pairs and rows;
- ``check_arpa_exportable(params)``: M if ``params`` is an exact MKN model (what ARPA export and
  pruning accept), else an ``InputError``.

Used by ``arpa.py`` and ``prune.py``; imports neither, so pruning on the training route does not
load the ARPA reader and writer.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import InputError, OptionError
from ..features import Suffix, decode_histories
from ..params import SparseParams
from ..sparse import lookup_rows, lookup_values
from .tables import _suffix_order, backoff_tables


def pack(ids: np.ndarray, V: int) -> np.ndarray:
    """Suffix row keys of (c, m) id rows, oldest token at weight V**0 (as ``features.Suffix``)."""
    key = np.zeros(len(ids), dtype=np.int64)
    for i in range(ids.shape[1] - 1, -1, -1):
        key = key * V + ids[:, i]
    return key


def pair_index(hist: np.ndarray, cols: np.ndarray, V: int):
    """A lookup table for (history key, token) pairs: ``(row_keys, CSR of entry index + 1)``."""
    row_keys, row = np.unique(hist, return_inverse=True)
    idx = sp.csr_matrix((np.arange(1, len(hist) + 1, dtype=np.float64), (row, cols)),
                        shape=(len(row_keys), V))
    idx.sum_duplicates()
    idx.sort_indices()
    return row_keys, idx


def find_pairs(index, hist, cols) -> np.ndarray:
    """Entry index of each (hist[n], cols[n]) in a ``pair_index`` table, -1 where absent."""
    row_keys, idx = index
    r = lookup_rows(row_keys, hist)
    out = np.full(len(hist), -1, dtype=np.int64)
    ok = r >= 0
    out[ok] = lookup_values(idx, r[ok], np.asarray(cols)[ok]).astype(np.int64) - 1
    return out


def packed_rows(packed_by_row: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Row of each packed history key (-1 if absent), given the packed key of every row."""
    if not len(packed_by_row):  # an empty level (e.g. every n-gram pruned): nothing is found
        return np.full(len(packed), -1, dtype=np.int64)
    order = np.argsort(packed_by_row, kind="stable")
    r = lookup_rows(packed_by_row[order], packed)
    return np.where(r >= 0, order[np.maximum(r, 0)], -1)


def suffix_params(q, levels, V: int, info: dict):
    """``(SparseParams, packed_by_row)`` of a back-off model given per history length m
    ``levels[m-1] = (hist, cols, S)`` (hist: packed int64 keys, oldest token at weight V**0;
    cols token ids; S natural-log values; pairs unique).

    The model's rows use lmkit's chained history ids (``features.py``: the key of a length-m
    history is ``row of its newest m-1 tokens * V + oldest token``), so every history's suffix
    must be a row one level down: missing ones are added as empty rows. ``packed_by_row[m-1]``
    is the packed key of each row of ``Suffix(m)``, for lookups by packed key (``packed_rows``).
    """
    M = len(levels)
    hists = [np.unique(h) for h, _, _ in levels]
    for m in range(M - 1, 0, -1):  # suffix closure of the histories themselves
        hists[m - 1] = np.union1d(hists[m - 1], hists[m] // V)
    keys, packed_by_row = [], []
    for m, H in enumerate(hists):
        if m == 0:
            chained = H
        else:
            parent = packed_rows(packed_by_row[m - 1], H // V)
            assert (parent >= 0).all(), "suffix closure failed"
            chained = parent * V + H % V
        order = np.argsort(chained, kind="stable")
        keys.append(chained[order].astype(np.int64))
        packed_by_row.append(H[order])
    S_list = []
    for (hist, cols, S), pk in zip(levels, packed_by_row):
        row = packed_rows(pk, hist)
        order = np.lexsort((cols, row))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(pk)))])
        # built from sorted arrays, not COO: explicit zeros (closure entries) must stay stored
        S_list.append(sp.csr_matrix((np.asarray(S, np.float64)[order],
                                     cols[order].astype(np.int32), indptr), shape=(len(pk), V)))
    params = SparseParams([Suffix(m) for m in range(1, M + 1)], q, S_list, keys, np.ones(M), info)
    return params, packed_by_row


def packed_view(params: SparseParams):
    """``(packed params, logps, loggammas)``: the same pure n-gram model with rows keyed and
    sorted by packed keys (oldest token at weight V**0), its per-entry log-probabilities and
    per-row log back-offs (``tables.backoff_tables``) in that row order. For algorithms written on
    packed keys (entropy pruning); needs ``V**M < 2**63``."""
    V, M = params.vocab_size, len(params.S)
    if M and V ** M >= 2 ** 63:
        raise InputError(f"order {M + 1} at V={V}: packed history keys overflow int64; this "
                         "step supports V**(order-1) < 2**63 (use a lower order)")
    logps, loggammas = backoff_tables(params)
    keys, S_list, lps, lgs = [], [], [], []
    for m in range(M):
        pk = pack(decode_histories(params.keys, m + 1, V), V)
        order = np.argsort(pk)
        S = params.S[m].tocsr()
        L = sp.csr_matrix((logps[m], S.indices, S.indptr), shape=S.shape)[order]
        keys.append(pk[order])
        S_list.append(S[order])
        lps.append(L.data)
        lgs.append(loggammas[m][order])
    info = {k: v for k, v in params.info.items() if k != "loggamma"}
    return SparseParams(params.groups, params.q, S_list, keys, params.lambdas, info), lps, lgs


def check_arpa_exportable(params) -> int:
    """M (the longest history) if ``params`` is an exact MKN model, else an ``InputError``."""
    if not isinstance(params, SparseParams) or not all(isinstance(g, Suffix) for g in params.groups):
        names = [g.name for g in params.groups]
        raise OptionError(f"ARPA export needs a pure suffix (n-gram) model, this one has groups {names}; "
                         "train with order N and without context")
    if not np.allclose(params.lambdas, 1.0):
        raise OptionError(f"ARPA export needs all lambdas = 1 (exact MKN), got {list(params.lambdas)}; "
                         "train again without lambdas")
    return _suffix_order(params.groups)


__all__ = ["pack", "pair_index", "find_pairs", "packed_rows", "suffix_params", "packed_view",
           "check_arpa_exportable"]
