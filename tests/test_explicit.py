import numpy as np
import pytest
import scipy.sparse as sp

from lmkit.counts import count_chunk
from lmkit.errors import InputError
from lmkit.explicit import (choose_lambdas, continuation_unigram, estimate_discount, solve_explicit,
                            solve_group)
from lmkit.sparse import lookup_values
from lmkit.features import Suffix, Window
from lmkit.scoring import context_rows, sparse_log_proba, sparse_next_logp

BOS, EOS = 1, 2


def test_estimate_discount():
    F = sp.csr_matrix(np.array([[1, 1, 1, 2, 5], [1, 1, 1, 2, 0]]))
    assert estimate_discount(F) == pytest.approx(0.6)  # n1 = 6, n2 = 2
    assert estimate_discount(sp.csr_matrix(np.array([[3, 4]]))) == 0.5
    assert estimate_discount(sp.csr_matrix(np.array([[1, 1, 1]]))) == 0.95  # clipped


def test_continuation_unigram():
    F = sp.csr_matrix(np.array([[0, 2, 1], [0, 1, 0], [0, 0, 0]]))
    # distinct left neighbours: [0, 2, 1] + floor 0.5 -> [0.5, 2.5, 1.5] / 4.5
    assert continuation_unigram(F).tolist() == pytest.approx([0.5 / 4.5, 2.5 / 4.5, 1.5 / 4.5])


def test_solve_group_hand_checked():
    F = sp.csr_matrix(np.array([[0, 3, 1], [0, 0, 0], [2, 0, 0]]))
    q = np.array([0.2, 0.5, 0.3])
    S = solve_group(F, q, 0.5)
    # row 0: N1+ = 2; S[0,1] = log(1 + 2.5 / (0.5*2*0.5)), S[0,2] = log(1 + 0.5 / (0.5*2*0.3))
    assert S[0, 1] == pytest.approx(np.log(1 + 2.5 / 0.5))
    assert S[0, 2] == pytest.approx(np.log(1 + 0.5 / 0.3))
    assert S[2, 0] == pytest.approx(np.log(1 + 1.5 / 0.1))
    assert S.nnz == 3


def test_lookup_values():
    S = sp.csr_matrix(np.array([[0, 1.5, 0, 2.5], [0, 0, 0, 0], [7.0, 0, 0, 8.0]]))
    got = lookup_values(S, np.array([0, 0, 0, 1, 2, 2]), np.array([1, 3, 0, 2, 0, 3]))
    assert got.tolist() == [1.5, 2.5, 0.0, 0.0, 7.0, 8.0]


def test_k1_vanishing_discount_is_the_empirical_conditional():
    rng = np.random.default_rng(0)
    V = 12
    seqs = [rng.integers(3, V, size=rng.integers(1, 9)).tolist() for _ in range(80)]
    counts = count_chunk(seqs, V, [Window(1)], BOS, EOS)
    params = solve_explicit(counts, discount=1e-9)
    F = counts.F[0].toarray().astype(float)
    seen = np.flatnonzero(F.sum(axis=1))
    assert len(seen) >= 5
    for i in seen:
        p = np.exp(sparse_next_logp(params, [np.array([i])]))
        assert np.abs(p - F[i] / F[i].sum()).max() < 1e-6, i


def test_solve_explicit_refuses():
    c = count_chunk([[3, 4]], 6, [Suffix(1)], BOS, EOS)
    with pytest.raises(InputError, match="solve_explicit handles window groups; got suffix1"):
        solve_explicit(c)
    c = count_chunk([[3, 4]], 6, [Window(1), Window(2)], BOS, EOS)
    with pytest.raises(InputError, match="discount needs 1 or 2 values, got 3"):
        solve_explicit(c, discount=[0.5, 0.5, 0.5])
    with pytest.raises(InputError, match=r"discount must be in \(0, 1\), got 1.5"):
        solve_explicit(c, discount=1.5)


def synthetic(n, seed, V=10):
    """Token t depends mostly on the token 2 back, so window2 carries information window1 lacks."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.integers(3, V, size=2).tolist()
        for _ in range(rng.integers(2, 12)):
            s.append(3 + (s[-2] * 2 + 1) % (V - 3) if rng.random() < 0.8 else int(rng.integers(3, V)))
        out.append(s)
    return out


def test_choose_lambdas_improves_heldout_nll():
    V, groups = 10, [Window(1), Window(2), Window(3)]
    params = solve_explicit(count_chunk(synthetic(300, 0), V, groups, BOS, EOS))
    rows, targets, _ = context_rows(groups, params.keys, synthetic(100, 1), V, BOS, EOS)
    lam, trace = choose_lambdas(params, rows, targets)
    assert trace[0][0] == [1.0, 0.0, 0.0]
    params = params.with_lambdas(np.array([1.0, 0.0, 0.0]))
    nll_unigram_only = -sparse_log_proba(params, rows, targets).mean()
    assert trace[0][1] == pytest.approx(nll_unigram_only, abs=1e-9)
    params = params.with_lambdas(lam)
    nll_chosen = -sparse_log_proba(params, rows, targets).mean()
    assert trace[-1][1] == pytest.approx(nll_chosen, abs=1e-9)  # the trace reports the truth
    assert nll_chosen < nll_unigram_only - 0.1
    assert lam[1] > 0.1 and (lam >= 0).all()
    # the chosen lambdas are a local minimum: small moves do not lower the held-out NLL
    for g in range(3):
        for step in (-0.05, 0.05):
            trial = lam.copy()
            trial[g] = max(trial[g] + step, 0.0)
            params = params.with_lambdas(trial)
            assert -sparse_log_proba(params, rows, targets).mean() >= nll_chosen - 1e-7


def _dense_nll(params, rows, targets, lam_pos):
    """Reference: dense logits log q + sum_g lam_pos[g, n] S_g[row], float64 log-softmax."""
    logits = np.tile(np.log(params.q), (len(targets), 1))
    for g, (S, r) in enumerate(zip(params.S, rows)):
        D = S.toarray()
        ok = r >= 0
        logits[ok] += lam_pos[g, ok, None] * D[r[ok]]
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(targets)), targets]))


def test_bucket_lambdas_match_split_groups_and_dense_nll():
    from lmkit.params import SparseParams
    V, groups = 10, [Window(1), Window(2), Window(3)]
    counts = count_chunk(synthetic(300, 0), V, groups, BOS, EOS)
    params = solve_explicit(counts)
    rows, targets, _ = context_rows(groups, params.keys, synthetic(100, 1), V, BOS, EOS)
    bk = [(r % 2) for r in rows]  # bucket = parity of the context token
    lam, trace = choose_lambdas(params, rows, targets, buckets=bk, n_buckets=2)
    assert lam.shape == (3, 2) and (lam >= 0).all()
    # reference 1: the same problem as 6 plain groups, each masked to its bucket's positions
    split = SparseParams(groups * 2, params.q, list(params.S) * 2, [None] * 6, np.ones(6))
    split_rows = [np.where(r % 2 == b, r, -1) for b in (0, 1) for r in rows]
    ref, _ = choose_lambdas(split, split_rows, targets, init=[1, 0, 0, 1, 0, 0])
    assert np.allclose(lam, ref.reshape(2, 3).T, atol=1e-4)
    # reference 2: the reported NLL is the dense NLL at those per-position weights
    lam_pos = np.stack([lam[g][b] for g, b in enumerate(bk)])
    assert trace[-1][1] == pytest.approx(_dense_nll(params, rows, targets, lam_pos), abs=1e-9)
    # folding the bucket weights into S scores the same as the per-position weights
    from lmkit.explicit import fold_lambdas
    row_bucket = [np.arange(V) % 2] * 3
    folded = fold_lambdas(params, lam, row_bucket)
    assert np.allclose(folded.lambdas, 1.0) and folded.info["bucket_lambdas"] == lam.tolist()
    assert -sparse_log_proba(folded, rows, targets).mean() == pytest.approx(trace[-1][1], abs=1e-9)


def test_choose_lambdas_subsampled_hessian_same_minimum():
    V, groups = 10, [Window(1), Window(2), Window(3)]
    params = solve_explicit(count_chunk(synthetic(300, 0), V, groups, BOS, EOS))
    rows, targets, _ = context_rows(groups, params.keys, synthetic(100, 1), V, BOS, EOS)
    exact, _ = choose_lambdas(params, rows, targets)
    quasi, trace = choose_lambdas(params, rows, targets, chunk=64, hessian_every=3)
    assert np.allclose(exact, quasi, atol=1e-3)
    assert trace[-1][1] <= trace[0][1]


def test_count_buckets_and_history_counts():
    from lmkit.explicit import count_buckets, history_counts
    assert count_buckets(np.array([1, 2, 3, 4, 15, 16, 100]), (2, 4, 16)).tolist() == \
        [0, 1, 1, 2, 2, 3, 3]
    c = count_chunk([[3, 4, 3, 4, 5]], 6, [Window(1)], BOS, EOS)
    params = solve_explicit(c)
    # token 3 precedes 4 twice, 4 precedes 3 and 5, 5 precedes EOS, BOS precedes 3
    assert history_counts(c, params)[0].tolist() == [0, 1, 0, 2, 2, 1]


def test_subsampled_hessian_falls_back_when_a_bucket_is_unsampled():
    V, groups = 10, [Window(1), Window(2), Window(3)]
    params = solve_explicit(count_chunk(synthetic(300, 0), V, groups, BOS, EOS))
    rows, targets, _ = context_rows(groups, params.keys, synthetic(100, 1), V, BOS, EOS)
    # bucket 1 only on positions outside the first chunk (chunks interleave positions: chunk 0
    # holds 0, n_chunks, ...): with hessian_every=100 only that chunk is sampled, so bucket 1
    # has no Hessian there
    n = np.arange(len(targets))
    bk = [np.where((n >= len(targets) - 50) & (n % -(-len(targets) // 64) != 0), 1, 0)] * 3
    exact, _ = choose_lambdas(params, rows, targets, buckets=bk, n_buckets=2)
    quasi, _ = choose_lambdas(params, rows, targets, buckets=bk, n_buckets=2, chunk=64,
                              hessian_every=100)
    assert np.allclose(exact, quasi, atol=1e-3)
