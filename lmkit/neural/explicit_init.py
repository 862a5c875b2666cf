"""Explicit initialisation of the transformer: what counting already knows, in closed form.

Input: the training token-id sequences (lmkit's convention: context ``[BOS] + ids``, targets
``ids + [EOS]``), the vocabulary size, and the network width ``C``. Output (``init_arrays``):

- ``bias``: float32 (V,), the unigram log-probabilities of the targets (add-one smoothed,
  natural log, centred): the output layer's bias, so step 0 already predicts the unigram model;
- ``emb``: float32 (V, k), ``k = rank`` columns for the token embedding, which the output layer
  shares (tied head). They come from the truncated eigendecomposition of the symmetrised
  bigram PMI matrix ``S = (M + M^T) / 2``, ``M[x, y] = log P(y | x) - log P(y)`` (``P(y | x)``
  Dirichlet-smoothed toward the unigram with ``prior`` pseudo-counts): ``emb = W_k sqrt(λ_k) c``
  over the ``k`` largest eigenvalues. A tied head scores ``LN(e_x) · e_y``, symmetric in x and y,
  so the symmetric part of the bigram PMI is what it can hold; ``c`` makes
  ``LN(e_x) · e_y ≈ S[x, y]`` at initialisation (a LayerNorm output has norm ``sqrt(C)``).

Seeded and deterministic: the eigenvectors come from a randomized range finder drawn with
``numpy.random.default_rng(seed)`` (signs fixed: the largest entry positive); the network's
other weights, and the embedding columns past ``rank``, keep their seeded random init.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp


def bigram_counts(seqs: list, vocab_size: int, bos_id: int, eos_id: int) -> sp.csr_matrix:
    """(V, V) int64 CSR: row = previous token (BOS for the first), column = next (EOS last).

    Example: seqs=[[5, 6]] counts (BOS,5), (5,6), (6,EOS) once each.
    """
    prev = np.concatenate([np.concatenate([[bos_id], s]) for s in seqs]) if seqs else np.zeros(0)
    nxt = np.concatenate([np.concatenate([s, [eos_id]]) for s in seqs]) if seqs else np.zeros(0)
    ones = np.ones(len(prev), dtype=np.int64)
    m = sp.coo_matrix((ones, (prev.astype(np.int64), nxt.astype(np.int64))),
                      shape=(vocab_size, vocab_size))
    return m.tocsr()


def top_eigen(s: np.ndarray, k: int, seed: int = 0, oversample: int = 32,
              power: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues (descending) and eigenvectors (n, k) of the symmetric
    ``s`` (n, n), by a seeded randomized range finder (Halko et al. 2011) with ``power``
    subspace iterations: ~1 CPU s for n = 4096, k = 128, where a full ``eigh`` takes ~25."""
    n = s.shape[0]
    m = min(n, k + oversample)
    q = np.random.default_rng(seed).standard_normal((n, m)).astype(s.dtype)
    q, _ = np.linalg.qr(s @ q)
    for _ in range(power):
        q, _ = np.linalg.qr(s @ q)
    lam, v = scipy.linalg.eigh((q.T @ s @ q).astype(np.float64))
    order = np.argsort(lam)[::-1][:k]
    return lam[order], q.astype(np.float64) @ v[:, order]


def init_arrays(seqs: list, vocab_size: int, bos_id: int, eos_id: int, n_embd: int,
                rank: int | None = None, prior: float = 10.0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(bias (V,), emb (V, rank))`` float32 for the output bias and the tied embedding."""
    rank = n_embd // 2 if rank is None else rank
    if not 1 <= rank <= min(n_embd, vocab_size):
        raise ValueError(f"rank must be in 1..{min(n_embd, vocab_size)}, got {rank}")
    c = bigram_counts(seqs, vocab_size, bos_id, eos_id)
    col = np.asarray(c.sum(axis=0)).ravel().astype(np.float64)
    logp = np.log((col + 1.0) / (col.sum() + vocab_size))
    bias = logp - logp.mean()  # softmax ignores a constant; centring keeps it near 0
    row = np.asarray(c.sum(axis=1)).ravel().astype(np.float64)
    p = np.exp(logp)
    dense = c.toarray().astype(np.float64)
    # log P(y|x) - log P(y), P(y|x) = (c(x,y) + prior P(y)) / (c(x) + prior): 0 for unseen x
    pmi = np.log((dense + prior * p[None, :]) / ((row[:, None] + prior) * p[None, :]))
    del dense
    s = (pmi + pmi.T) / 2
    del pmi
    lam, w = top_eigen(s.astype(np.float32), rank, seed)
    w = w * np.where(w[np.abs(w).argmax(axis=0), np.arange(rank)] < 0, -1.0, 1.0)
    e = w * np.sqrt(np.maximum(lam, 0.0))
    n = np.sqrt((e ** 2).sum(axis=1).mean())  # rms row norm
    # scaled by c: LN(c e_x) ≈ sqrt(C) e_x / n, so LN(c e_x) · c e_y ≈ c sqrt(C) / n · S[x, y],
    # which is S[x, y] for c = n / sqrt(C)
    return bias.astype(np.float32), (e * (n / np.sqrt(n_embd))).astype(np.float32)
