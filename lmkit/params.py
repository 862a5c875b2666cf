"""Parameter types shared by every solver, scorer and the model folder.

- ``SparseParams``: ``logits = log q + sum_g lambda_g S_g[row_g]`` — the closed-form solution
  (window groups: ``explicit.py``; suffix groups: ``ngram/mkn.py``). q (V,) float64 summing to 1;
  S per group a canonical CSR (R_g, V) float64; keys per group None (rows are token ids) or the
  sorted int64 history keys of the rows; lambdas (G,) float64 >= 0.
- ``DenseParams``: ``logits = b + sum_g W_g[row_g]`` — the form the gradient solver trains.
  W per group (R_g, V) float32, b (V,) float32, keys as above.

Both are frozen and their arrays read-only: anything derived from them (e.g. the back-off
tables of a pure MKN model) can be cached without going stale. To change the weights, make a
new object: ``params.with_lambdas(lam, lambda_rule="given")``.
"""
from __future__ import annotations

import dataclasses
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
