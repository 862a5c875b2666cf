r"""Token clusters from bigram counts, and the cluster-history feature group.

``cluster_tokens(F1, n_clusters, seed)``: ``F1`` CSR (V, V) int64 bigram counts (rows = previous
token, columns = next token; the ``Window(1)`` counts) -> int64 (V,) cluster id per token in
``[0, n_clusters)``. Each token is described by its right-neighbour distribution (its row) and
its left-neighbour distribution (its column), square-rooted (Hellinger geometry, so frequent
and rare tokens compare by shape) and reduced to ``dim`` dimensions by a truncated SVD; k-means
(seeded) groups the reduced vectors. Tokens with the same neighbours share a cluster, the
classic premise of class-based n-grams (Brown et al. 1992), computed from the counts the model
already has instead of by greedy exchange.

``ClusterHistory(m, w, table)``: the context is the exact tokens at offsets ``1..w`` and the
*clusters* of the tokens at offsets ``w+1..m``; the target stays a token. Row key (exact):
``sum_{i<w} tok_i V**i + V**w * sum_j cluster_j C**j``; refused unless ``V**w C**(m-w) < 2**63``.
Rows are the observed keys. The name (``cluster{m}_{w}_{C}``) does not carry the table: model
folders store it as the array ``clusters{C}`` and rebuild the group from its name and that
table (the kinds registry, ``kinds.py``). It is solved like a skip-gram (``skipgram.solve_skip`` with
``a = w``): relative to the exact-token part, so it adds what the clusters of the older tokens
say beyond the last ``w`` tokens. Why it helps: a 4-gram history seen once as words is seen
many times as "the same word, then tokens of these kinds".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    import scipy.sparse as sp  # annotations only: SciPy is imported where a CSR is built


def bigram_embedding(F1: sp.csr_matrix, dim: int = 32, seed: int = 0) -> np.ndarray:
    """(V, dim) float64: each token's square-rooted right- and left-neighbour distributions,
    reduced by a truncated SVD (start vector from ``seed``); see the module docstring."""
    import scipy.sparse as sp  # here, not at the top: loading a model needs no SciPy
    from scipy.sparse.linalg import svds
    F1 = sp.csr_matrix(F1, dtype=np.float64)
    right = sp.diags(1.0 / np.maximum(np.asarray(F1.sum(axis=1)).ravel(), 1.0)) @ F1
    Ft = F1.T.tocsr()
    left = sp.diags(1.0 / np.maximum(np.asarray(Ft.sum(axis=1)).ravel(), 1.0)) @ Ft
    X = sp.hstack([right, left]).tocsr()
    X.data = np.sqrt(X.data)
    k = max(1, min(dim, min(X.shape) - 1))
    u, s, _ = svds(X, k=k, v0=np.random.default_rng(seed).standard_normal(min(X.shape)))
    # a text with fewer than k independent neighbour patterns (a few lines) leaves singular
    # values at rounding level whose vectors ARPACK picks arbitrarily, run to run; kept, their
    # noise decided k-means and the clusters changed between identical runs: zero them
    s = np.where(s > s.max(initial=0.0) * max(X.shape) * np.finfo(np.float64).eps, s, 0.0)
    return u * s


def cluster_tokens(F1: sp.csr_matrix, n_clusters: int, seed: int = 0, dim: int = 32,
                   n_iter: int = 20, embedding: np.ndarray | None = None) -> np.ndarray:
    """Cluster id (V,) int64 per token from bigram counts (see the module docstring).

    ``embedding``: ``bigram_embedding(F1, dim)`` if already computed (several tables from one
    SVD; an SVD from another start vector differs only in signs, which k-means ignores).
    """
    import scipy.sparse as sp  # here, not at the top: loading a model needs no SciPy
    V = F1.shape[0]
    if not 1 <= n_clusters <= V:
        raise InputError(f"n_clusters must be in [1, {V}], got {n_clusters}")
    rng = np.random.default_rng(seed)
    rng.standard_normal(min(V, 2 * F1.shape[1]))  # the SVD's start vector: same stream either way
    Y = bigram_embedding(F1, dim, seed) if embedding is None else embedding
    # a token never seen on either side has no neighbours to compare: its embedding is exactly
    # zero (not the SVD's rounding noise), so it joins the cluster whose centre is nearest the
    # origin, the first such on ties, whatever the platform's BLAS
    F1c = sp.csr_matrix(F1)
    unseen = (np.diff(F1c.indptr) == 0) & (np.bincount(F1c.indices, minlength=V) == 0)
    if unseen.any():
        Y = np.array(Y, dtype=np.float64)
        Y[unseen] = 0.0
    # k-means with k-means++ seeding, all randomness from ``seed``
    centers = np.empty((n_clusters, Y.shape[1]))
    centers[0] = Y[rng.integers(V)]
    d2 = ((Y - centers[0]) ** 2).sum(1)
    for c in range(1, n_clusters):
        total = d2.sum()
        centers[c] = Y[rng.choice(V, p=d2 / total)] if total > 0 else Y[rng.integers(V)]
        d2 = np.minimum(d2, ((Y - centers[c]) ** 2).sum(1))
    for _ in range(n_iter):
        dist = (Y ** 2).sum(1)[:, None] - 2 * Y @ centers.T + (centers ** 2).sum(1)[None]
        # distances equal in exact arithmetic (twin tokens, twin centres; a repeated singular
        # value's vectors come back rotated run to run) differ by rounding: rounded, the tie
        # goes to the first centre every run
        label = np.round(dist, 9).argmin(1)
        size = np.bincount(label, minlength=n_clusters)
        sums = np.zeros_like(centers)
        np.add.at(sums, label, Y)
        nonempty = size > 0  # an empty cluster keeps its centre
        centers[nonempty] = sums[nonempty] / size[nonempty, None]
    return label.astype(np.int64)


@dataclass(frozen=True)
class ClusterHistory:
    """Exact tokens at offsets 1..w, clusters at offsets w+1..m (see the module docstring)."""

    m: int
    w: int
    table: tuple  # cluster id per token id, length V

    @property
    def n_clusters(self) -> int:
        return max(self.table) + 1

    @property
    def name(self) -> str:
        return f"cluster{self.m}_{self.w}_{self.n_clusters}"

    @property
    def reach(self) -> int:
        return self.m

    def key_limit(self, vocab_size: int) -> int:
        """Keys lie in ``[0, V**w * C**(m - w))``."""
        return vocab_size ** self.w * self.n_clusters ** (self.m - self.w)

    def row_keys(self, buf, pos, starts, vocab_size: int) -> np.ndarray:
        C = self.n_clusters
        if vocab_size ** self.w * C ** (self.m - self.w) >= 2 ** 63:
            raise InputError(f"{self.name} keys need V**{self.w} * C**{self.m - self.w} < 2**63 "
                             f"(V={vocab_size}, C={C}); use fewer tokens or clusters")
        table = np.asarray(self.table, dtype=np.int64)
        keys = np.zeros(len(pos), dtype=np.int64)
        radix = np.int64(1)
        for off in range(1, self.m + 1):
            tok = buf[pos - off].astype(np.int64)
            if off <= self.w:
                keys += tok * radix
                radix *= vocab_size
            else:
                keys += table[tok] * radix
                radix *= C
        keys[pos - self.m < starts - 1] = -1
        return keys

    def n_rows(self, vocab_size: int) -> int | None:
        return None
