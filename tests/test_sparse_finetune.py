"""Tests for lmkit.experiments.sparse_finetune: support-only gradient of the sparse softmax, and fine-tuning."""
import numpy as np
import pytest

from lmkit.counts import count_chunk
from lmkit.features import make_groups
from lmkit.ngram.mkn import solve_ngram
from lmkit.scoring import context_rows, sparse_log_proba
from lmkit.experiments.sparse_finetune import finetune_sparse, nll_gradient, with_data

BOS, EOS, V = 1, 2, 10


def corpus(n, seed):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, V, size=rng.integers(1, 7))) for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    groups = make_groups(2, 3)  # suffix1, suffix2, window1, window2
    params = solve_ngram(count_chunk(corpus(80, 0), V, groups, BOS, EOS))
    params = params.with_lambdas(np.array([1.0, 1.0, 0.3, 0.2]))
    return params, groups


def test_gradient_matches_finite_differences(model):
    params, groups = model
    rows, targets, _ = context_rows(groups, params.keys, corpus(10, 1), V, BOS, EOS)
    grads = nll_gradient(params, rows, targets)
    nll = lambda p: -sparse_log_proba(p, rows, targets).sum()  # noqa: E731
    rng = np.random.default_rng(0)
    checked = 0
    for g, S in enumerate(params.S):
        for k in rng.choice(S.nnz, size=5, replace=False):
            data = [M.data.copy() for M in params.S]
            data[g][k] += 1e-6
            up = nll(with_data(params, data))
            data[g][k] -= 2e-6
            down = nll(with_data(params, data))
            assert (up - down) / 2e-6 == pytest.approx(grads[g][k], abs=1e-5)
            checked += abs(grads[g][k]) > 1e-3
    assert checked > 3  # some of the checked entries really are touched


def test_finetune_keeps_pattern_and_never_gets_worse_on_the_stopping_text(model):
    params, groups = model
    tune, stop = corpus(60, 2), corpus(60, 3)
    rows, targets, _ = context_rows(groups, params.keys, tune, V, BOS, EOS)
    srows, stargets, _ = context_rows(groups, params.keys, stop, V, BOS, EOS)
    before = -sparse_log_proba(params, rows, targets).mean()
    tuned, trace = finetune_sparse(params, rows, targets, srows, stargets, max_iter=3)
    assert [S.nnz for S in tuned.S] == [S.nnz for S in params.S]
    # the returned parameters are the best on the stopping text, never worse than the start
    stop_nll = -sparse_log_proba(tuned, srows, stargets).mean()
    assert stop_nll == pytest.approx(min(t[1] for t in trace), abs=1e-12)
    assert stop_nll <= trace[0][1]
    assert trace[-1][0] >= 1
    one_step, _ = finetune_sparse(params, rows, targets, rows, targets, max_iter=1, lr=0.02)
    assert -sparse_log_proba(one_step, rows, targets).mean() < before  # descends on its own data
