"""Synthetic corpora: a sparse window or n-gram model -> many sampled sequences at once, exactly.

Input: a ``LanguageModel`` with ``SparseParams`` and window groups only, or a pure n-gram model
(``--order N``: sampled by ``ngram.sample.NgramSampler``, back-off walk, no V-vector). Output:
token-id sequences (``sample_batch``) or text lines written to shard files (``write_shards``).

Sampling one sequence a token at a time costs a Python step per token; ``sample_batch`` instead
advances ``batch`` sequences together, one vectorised step for all of them. The model's next-token
distribution is ``p[j] = q[j] exp(s[j]) / Z`` with ``s = sum_g lambda_g S_g[row_g]`` sparse and
``s >= 0`` (see ``explicit.py``), i.e. the mixture

    p[j] = (q[j] + q[j] (exp(s[j]) - 1)) / Z,   Z = 1 + sum_{j in U} q[j] (exp(s[j]) - 1)

of the dense unigram ``q`` (mass 1) and a sparse part on the touched columns U (mass Z - 1).
A draw picks the part by one uniform number, then inverts a cumulative sum: ``q``'s (computed
once) or the row's sparse one. BOS never is a target (its mass is removed, as ``generate`` does).
This is exact sampling at temperature 1, and costs the non-zeros touched, not V.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..features import Window
from ..ngram.sample import NgramSampler, is_pure_ngram
from ..params import SparseParams
from ..scoring import sparse_scores


def _check_model(model) -> None:
    if not isinstance(model.params, SparseParams) or not all(isinstance(g, Window) for g in model.groups):
        raise InputError("batch sampling needs a sparse model with window groups only, or a pure "
                         "n-gram model; train one with solver explicit, or with order N alone")


def sample_batch(model, n_tokens: int, *, batch: int = 4096, max_len: int = 256, seed: int = 0):
    """Yield lists of sampled sequences (lists of ids, EOS dropped) until ``n_tokens`` targets.

    Tokens are counted as targets, EOS included (the count ``Counts.n_tokens`` reports); a
    sequence reaching ``max_len`` tokens is cut there. Deterministic for a given ``seed``.
    """
    if is_pure_ngram(model.params):
        tok = model.tokenizer
        sampler = NgramSampler(model.params, bos_id=tok.bos_id, eos_id=tok.eos_id)
        yield from sampler.sample_sequences(n_tokens, batch=batch, max_len=max_len, seed=seed)
        return
    _check_model(model)
    params, tok = model.params, model.tokenizer
    V, bos, eos = params.vocab_size, tok.bos_id, tok.eos_id
    ks = [g.k for g in model.groups]
    K = max(ks)
    rng = np.random.default_rng(seed)
    q = params.q.copy()
    q[bos] = 0.0
    base = float(q.sum())
    cdf_q = np.cumsum(q)
    hist = np.full((batch, K), bos, dtype=np.int64)  # hist[:, -k] = token k back
    cur = np.zeros((batch, max_len), dtype=np.int32)
    lens = np.zeros(batch, dtype=np.int64)
    done_tokens = 0
    ar = np.arange(batch)
    # one group (K = 1): the sparse parts of all V rows are fixed, so their cumulative sums are
    # computed once and each step is a gather + binary search (millions of tokens/s)
    single = _row_tables(params.lambdas[0] * params.S[0], q) if len(ks) == 1 else None
    while done_tokens < n_tokens:
        if single is not None:
            indptr, indices, cum, before, W = single
            ctx = hist[:, -1]
            lo, hi, before, W = indptr[ctx], indptr[ctx + 1], before[ctx], W[ctx]
        else:
            s = sparse_scores(params, [hist[:, K - k] for k in ks], batch)
            indices, cum, before, W = _tables(s, q)
            lo, hi = s.indptr[:-1], s.indptr[1:]
        u = rng.random(batch) * (base + W)
        nxt = np.empty(batch, dtype=np.int64)
        from_q = u < base
        nxt[from_q] = np.minimum(np.searchsorted(cdf_q, u[from_q], side="right"), V - 1)
        r = np.flatnonzero(~from_q)
        if len(r):
            idx = np.searchsorted(cum, before[r] + (u[r] - base), side="right")
            idx = np.clip(idx, lo[r], hi[r] - 1)
            nxt[r] = indices[idx]
        nxt[nxt == bos] = eos  # only reachable by float round-off at a cdf edge
        is_eos = nxt == eos
        keep = ~is_eos
        cur[ar[keep], lens[keep]] = nxt[keep]
        lens[keep] += 1
        done_tokens += batch
        finished = np.flatnonzero(is_eos | (lens >= max_len))
        if len(finished):
            yield [cur[i, :lens[i]].tolist() for i in finished]
            lens[finished] = 0
        hist[:, :-1] = hist[:, 1:]
        hist[:, -1] = nxt
        hist[finished] = bos


def _tables(s, q):
    """Sparse-part weights of a CSR of scores: (indices, global cumsum, cumsum before each row,
    row totals W). ``w = q[j] (exp(s) - 1)`` is 0 on the BOS column since ``q[bos] = 0``."""
    w = q[s.indices] * np.expm1(s.data)
    cum = np.cumsum(w)
    start, end = s.indptr[:-1], s.indptr[1:]
    before = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
    W = np.where(end > start, cum[np.maximum(end - 1, 0)], 0.0) - before
    return s.indices, cum, before, np.maximum(W, 0.0)


def _row_tables(S, q):
    S = S.tocsr()
    indices, cum, before, W = _tables(S, q)
    return S.indptr.astype(np.int64), indices, cum, before, W


def write_shards(model, out_dir, n_tokens: int, *, shard_lines: int = 1_000_000,
                 batch: int = 4096, max_len: int = 256, seed: int = 0, progress=None) -> dict:
    """Sample ``n_tokens`` tokens of text into ``out_dir/shard-00000.txt``...; returns stats.

    Each shard holds ``shard_lines`` lines (one sampled sequence per line; empty samples are
    skipped, as the corpus reader would skip them).
    """
    from pathlib import Path
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = model.tokenizer
    shard, n_lines, n_in_shard, n_bytes, f = 0, 0, 0, 0, None
    try:
        for seqs in sample_batch(model, n_tokens, batch=batch, max_len=max_len, seed=seed):
            texts = tok._sp.decode(seqs)  # batch decode; ids come from the model, all valid
            if progress:
                progress(sum(len(x) + 1 for x in seqs))
            for t in texts:
                t = t.replace("\n", " ").rstrip()
                if not t:
                    continue
                if f is None or n_in_shard >= shard_lines:
                    if f is not None:
                        f.close()
                        shard += 1
                    f = open(out_dir / f"shard-{shard:05d}.txt", "w", encoding="utf-8")
                    n_in_shard = 0
                data = t + "\n"
                f.write(data)
                n_in_shard += 1
                n_lines += 1
                n_bytes += len(data.encode("utf-8"))
    finally:
        if f is not None:
            f.close()
    return {"shards": shard + 1 if n_lines else 0, "lines": n_lines, "bytes": n_bytes}
