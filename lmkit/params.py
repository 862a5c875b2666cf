"""Parameter types shared by every solver, scorer and the model folder.

- ``SparseParams``: ``logits = log q + sum_g lambda_g S_g[row_g]`` — the closed-form solution
  (window groups: ``explicit.py``; suffix groups: ``ngram/mkn.py``). q (V,) float64 summing to 1;
  S per group a canonical CSR (R_g, V) float64 (a loaded folder's ``LazyCSRs`` widens each from
  its stored dtypes on first access: ``stored_arrays`` reads them without widening); keys per group None (rows are token ids) or the
  sorted int64 history keys of the rows; lambdas (G,) float64 >= 0.
- ``DenseParams``: ``logits = b + sum_g W_g[row_g]`` — the form the gradient solver trains.
  W per group (R_g, V) float32, b (V,) float32, keys as above.

Both are frozen and their arrays read-only: anything derived from them (e.g. the back-off
tables of a pure MKN model) can be cached without going stale. To change the weights, make a
new object: ``params.with_lambdas(lam, lambda_rule="given")``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def _freeze(a):
    """A read-only view of an array (or of each array of a CSR); None stays None."""
    if a is None:
        return None
    if hasattr(a, "indptr"):
        for x in (a.data, a.indices, a.indptr):
            x.flags.writeable = False
        return a
    a = np.asarray(a)
    a = a.view()
    a.flags.writeable = False
    return a


class StoredCSR:
    """One group's weights as a model folder stores them, already validated (``io.store``):
    ``data`` float32|float64 (nnz,), ``indices`` uint16|int32|int64 (nnz,), ``indptr``
    int32|int64 (R + 1,), ``shape`` (R, V). ``csr()`` is the canonical float64 CSR every solver
    and scorer reads (columns widened to the row pointers' dtype); the compiled scorer reads
    the stored arrays as they are (``LazyCSRs.stored``), so scoring a folder never widens them."""

    def __init__(self, data, indices, indptr, shape):
        self.data, self.indices, self.indptr, self.shape = data, indices, indptr, tuple(shape)

    def csr(self):
        """The float64 ``scipy.sparse.csr_matrix`` (R, V), canonical (rows sorted, unique)."""
        import scipy.sparse as sp  # only here: the verbs that never widen a group skip SciPy
        ind = self.indices if self.indices.dtype == self.indptr.dtype else \
            self.indices.astype(self.indptr.dtype)
        S = sp.csr_matrix((self.data.astype(np.float64, copy=False), ind, self.indptr),
                          shape=self.shape)
        S.has_sorted_indices = True
        S.has_canonical_format = True
        return S


class LazyCSRs(Sequence):
    """The groups' weights ``S`` of a loaded folder: a sequence of CSRs, each widened from its
    ``StoredCSR`` on first access (then kept, read-only). ``stored(g)`` gives ``(data, indices,
    indptr)`` without widening: what ``scoring.score_tables`` needs, so ``lmkit eval`` loads
    and scores a compact folder without a float64 copy of its values or an int32 copy of its
    columns. Items that are already CSRs are returned as they are."""

    def __init__(self, items):
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, g):
        if isinstance(g, slice):
            return [self[i] for i in range(*g.indices(len(self)))]
        x = self._items[g]
        if isinstance(x, StoredCSR):
            x = _freeze(x.csr())
            self._items[g] = x
        return x

    def stored(self, g) -> tuple:
        """``(data, indices, indptr)`` of group g in the dtypes they have (not widened)."""
        x = self._items[g]
        return x.data, x.indices, x.indptr

    def __eq__(self, other):
        return self is other

    __hash__ = object.__hash__


def stored_arrays(S, g) -> tuple:
    """``(data, indices, indptr)`` of group g of ``S`` (a list of CSRs or a ``LazyCSRs``),
    without widening stored dtypes."""
    if isinstance(S, LazyCSRs):
        return S.stored(g)
    return S[g].data, S[g].indices, S[g].indptr


@dataclass(frozen=True)
class SparseParams:
    """Sparse-form parameters (see the module docstring for shapes)."""

    groups: list
    q: np.ndarray
    S: list
    keys: list
    lambdas: np.ndarray
    info: dict = field(default_factory=dict)  # discounts, lambda rule, search trace

    def __post_init__(self):
        object.__setattr__(self, "groups", list(self.groups))
        object.__setattr__(self, "q", _freeze(np.asarray(self.q, dtype=np.float64)))
        if not isinstance(self.S, LazyCSRs):  # a loaded folder's S widens on access
            object.__setattr__(self, "S", [_freeze(S) for S in self.S])
        object.__setattr__(self, "keys", [_freeze(k) for k in self.keys])
        object.__setattr__(self, "lambdas", _freeze(np.asarray(self.lambdas, dtype=np.float64)))
        object.__setattr__(self, "info", dict(self.info))

    @property
    def vocab_size(self) -> int:
        return len(self.q)

    def __getstate__(self):
        """Pickles carry the parameters, not the scorer tables derived from them
        (``scoring.sparse_scorer`` keeps those on the object; a copy rebuilds its own)."""
        return {k: v for k, v in self.__dict__.items() if k != "_scorer"}

    def with_lambdas(self, lambdas, **info) -> "SparseParams":
        """A copy with new group weights (arrays shared) and ``info`` updated."""
        return dataclasses.replace(self, lambdas=np.asarray(lambdas, dtype=np.float64).copy(),
                                   info={**self.info, **info})


@dataclass(frozen=True)
class DenseParams:
    """Dense-form parameters (see the module docstring for shapes)."""

    groups: list
    W: list
    b: np.ndarray
    keys: list
    info: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.b)
