import numpy as np
import pytest

from lmkit.counts import count_chunk
from lmkit.explicit import solve_explicit
from lmkit.features import Window
from lmkit.params import DenseParams
from lmkit.scoring import context_rows, dense_log_proba, next_logp, next_rows, sparse_log_proba
from lmkit.sparse import log_softmax

V, BOS, EOS = 14, 1, 2
GROUPS = [Window(1), Window(2), Window(3)]


def seqs_of(n, seed, hi=V - 2):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, hi, size=rng.integers(0, 10)).tolist() for _ in range(n)]


def dense_reference_logp(counts, params, seqs):
    """Independent dense model from the smoothing formula of explicit.py's docstring.

    P_k(j|i) = max(F-d, 0)/f + d N1+(i) q[j] / f (q for unseen rows), W_k = lambda_k log P_k,
    b = (1 - sum lambda) log q; logits = b + sum_k W_k[c_k]; dense log-softmax.
    """
    q, lam = params.q, params.lambdas
    W = []
    for F, d, l in zip(counts.F, params.info["discounts"], lam):
        F = F.toarray().astype(float)
        f = F.sum(axis=1, keepdims=True)
        n1 = (F > 0).sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            P = np.where(f > 0, np.maximum(F - d, 0) / f + d * n1 * q / f, q)
        assert np.allclose(P.sum(axis=1), 1.0)
        W.append(l * np.log(P))
    b = (1 - lam.sum()) * np.log(q)
    pad = 3
    out = []
    for s in seqs:
        buf = [BOS] * pad + list(s) + [EOS]
        for t in range(pad, len(buf)):
            logits = b + sum(W[k][buf[t - 1 - k]] for k in range(3))
            out.append(log_softmax(logits[None])[0, buf[t]])
    return np.array(out)


@pytest.fixture(scope="module")
def fitted():
    counts = count_chunk(seqs_of(200, 0), V, GROUPS, BOS, EOS)
    params = solve_explicit(counts)
    params = params.with_lambdas(np.array([0.8, 0.35, 0.15]))  # sum != 1, so the bias b matters
    return counts, params


def test_sparse_equals_dense_reference(fitted):
    counts, params = fitted
    test = seqs_of(40, 1, hi=V)  # tokens V-2, V-1 were never seen: unseen context rows
    rows, targets, seq_index = context_rows(GROUPS, params.keys, test, V, BOS, EOS)
    got = sparse_log_proba(params, rows, targets, chunk=17)  # several chunks
    want = dense_reference_logp(counts, params, test)
    assert len(got) == sum(len(s) + 1 for s in test) == len(seq_index)
    assert np.abs(got - want).max() < 1e-9


def test_next_rows_match_context_rows(fitted):
    _, params = fitted
    seq = [5, 7, 3, 9]
    rows, targets, _ = context_rows(GROUPS, params.keys, [seq], V, BOS, EOS)
    for t in range(len(seq) + 1):
        nr = next_rows(GROUPS, params.keys, seq[:t], V, BOS)
        assert [int(r[0]) for r in nr] == [int(r[t]) for r in rows]


@pytest.mark.parametrize("prefix", [[], [5], [5, 7, 3], [V - 1, V - 2, V - 1]])
def test_next_logp_sums_to_one(fitted, prefix):
    _, params = fitted
    lp = next_logp(params, next_rows(GROUPS, params.keys, prefix, V, BOS))
    assert lp.shape == (V,) and np.isfinite(lp).all()
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-12)


def test_next_logp_agrees_with_log_proba(fitted):
    _, params = fitted
    seq = [4, 8, 6]
    rows, targets, _ = context_rows(GROUPS, params.keys, [seq], V, BOS, EOS)
    lp = sparse_log_proba(params, rows, targets)
    for t in range(len(seq) + 1):
        full = next_logp(params, next_rows(GROUPS, params.keys, seq[:t], V, BOS))
        assert full[targets[t]] == pytest.approx(lp[t], abs=1e-12)


def test_dense_params_hand_checked():
    W = [np.array([[0.0, 0.0, 0.0], [np.log(2), 0.0, 0.0], [0.0, 0.0, np.log(3)]], np.float32)]
    dp = DenseParams([Window(1)], W, np.zeros(3, np.float32), [None])
    rows = [np.array([1, 2, -1])]
    lp = dense_log_proba(dp, rows, np.array([0, 2, 1]))
    assert lp == pytest.approx(np.log([2 / 4, 3 / 5, 1 / 3]), abs=1e-6)
    assert np.exp(next_logp(dp, [np.array([1])])).sum() == pytest.approx(1.0)


def test_log_softmax_is_stable():
    lp = log_softmax(np.array([[1000.0, 1000.0, -1000.0]]))
    assert np.isfinite(lp[0, :2]).all() and lp[0, 0] == pytest.approx(np.log(0.5))
