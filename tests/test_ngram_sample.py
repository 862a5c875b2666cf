"""Tests for lmkit.ngram.sample: the exact interpolated-MKN sampler matches log_proba."""
import numpy as np
import pytest

from lmkit.counts import count_chunk
from lmkit.errors import InputError
from lmkit.features import make_groups
from lmkit.ngram.mkn import solve_ngram
from lmkit.ngram.sample import NgramSampler, _row_cumsum, _search_rows
from lmkit.scoring import next_rows, sparse_next_logp

BOS, EOS, V = 1, 2, 12


def corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, V - 2)
    return [list(rng.choice(np.arange(3, V), size=rng.integers(1, 9), p=p / p.sum()))
            for _ in range(n)]


def model(order=3):
    groups = make_groups(0, order)
    return solve_ngram(count_chunk(corpus(), V, groups, BOS, EOS)), groups


def exact_next(params, groups, prefix):
    p = np.exp(sparse_next_logp(params, next_rows(groups, params.keys, prefix, V, BOS)))
    p[BOS] = 0.0  # BOS is padding, never a target: generate renormalises without it
    return p / p.sum()


def chi_square_p(counts, p):
    stats = pytest.importorskip("scipy.stats")
    n = counts.sum()
    return stats.chisquare(counts, p * n).pvalue


@pytest.mark.parametrize("prefix", [[3, 4], [5], [], [11, 10]])  # [11, 10]: unseen, backs off
def test_sampler_frequencies_match_log_proba(prefix):
    params, groups = model(3)
    s = NgramSampler(params, bos_id=BOS, eos_id=EOS)
    hist = np.array([([BOS] * 2 + prefix)[-2:]] * 100_000)
    draws = s.draw(s.rows(hist, np.full(len(hist), len(prefix))), np.random.default_rng(0))
    counts = np.bincount(draws, minlength=V)
    p = exact_next(params, groups, prefix)
    assert counts[BOS] == 0
    assert chi_square_p(counts[p > 0], p[p > 0]) > 1e-3
    # the test has power: the unigram q instead of P(. | prefix) is rejected outright
    q = np.asarray(params.q).copy()
    q[BOS] = 0
    assert chi_square_p(counts[p > 0], (q / q.sum())[p > 0]) < 1e-12


def test_sequences_and_prompt_continuations_are_seeded():
    params, _ = model(4)
    s = NgramSampler(params, bos_id=BOS, eos_id=EOS)
    a = [x for chunk in s.sample_sequences(5000, batch=64, max_len=20, seed=3) for x in chunk]
    b = [x for chunk in s.sample_sequences(5000, batch=64, max_len=20, seed=3) for x in chunk]
    assert a == b and all(len(x) <= 20 and BOS not in x and EOS not in x for x in a)
    outs = s.continue_ids([3, 4], max_tokens=7, num_samples=5, seed=1)
    assert outs == s.continue_ids([3, 4], max_tokens=7, num_samples=5, seed=1)
    assert all(o[:2] == [3, 4] and len(o) <= 9 for o in outs)


def test_row_search_helpers():
    cum = _row_cumsum(np.array([1.0, 3.0, 2.0, 2.0]), np.array([0, 0, 1, 1]), np.array([0, 2, 4]))
    assert cum.tolist() == [0.25, 1.0, 0.5, 1.0]
    got = _search_rows(cum, np.array([0, 0, 2, 2]), np.array([2, 2, 4, 4]),
                       np.array([0.1, 0.25, 0.49, 0.99]))
    assert got.tolist() == [0, 1, 2, 3]


def test_refuses_window_models():
    groups = make_groups(1, 3)
    params = solve_ngram(count_chunk(corpus(50), V, groups, BOS, EOS))
    with pytest.raises(InputError, match="pure n-gram model"):
        NgramSampler(params, bos_id=BOS, eos_id=EOS)


def test_synthetic_sample_batch_uses_the_ngram_sampler(tiny_lines, tiny_tok):
    from lmkit.model import LanguageModel
    from lmkit.experiments.synthetic import sample_batch
    groups = make_groups(0, 3)
    seqs = tiny_tok.encode_batch(tiny_lines)
    params = solve_ngram(count_chunk(seqs, tiny_tok.vocab_size, groups, tiny_tok.bos_id,
                                     tiny_tok.eos_id))
    m = LanguageModel(tiny_tok, params)
    got = [x for chunk in sample_batch(m, 2000, batch=32, max_len=30, seed=0) for x in chunk]
    assert got and all(tiny_tok.bos_id not in x and tiny_tok.eos_id not in x for x in got)
    assert sum(len(x) for x in got) > 200


def test_sampler_any_order_at_large_vocabulary():
    """Order 8 at V = 32,000: the walk from the longest seen history matches log_proba."""
    big_v = 32000
    rng = np.random.default_rng(1)
    ids = rng.choice(np.arange(3, big_v), size=10, replace=False)
    phrase = list(rng.choice(ids, size=12))
    seqs = [list(rng.choice(ids, size=rng.integers(0, 3))) + phrase[a:a + 9]
            for a in rng.integers(0, 4, size=150)]
    groups = make_groups(0, 8)
    params = solve_ngram(count_chunk(seqs, big_v, groups, BOS, EOS))
    s = NgramSampler(params, bos_id=BOS, eos_id=EOS)
    prefix = [int(x) for x in phrase[:7]]
    hist = np.array([prefix] * 50_000)
    rows = s.rows(hist, np.full(len(hist), 7))
    assert rows[-1][0] >= 0  # the 7-token history was seen: the walk starts at order 8
    draws = s.draw(rows, np.random.default_rng(0))
    p = np.exp(sparse_next_logp(params, next_rows(groups, params.keys, prefix, big_v, BOS)))
    p[BOS] = 0.0
    p /= p.sum()
    cells = np.flatnonzero(p * len(draws) >= 5)  # the rest (uniform share) pooled into one cell
    counts = np.bincount(draws, minlength=big_v)
    obs = np.append(counts[cells], len(draws) - counts[cells].sum())
    exp = np.append(p[cells], 1.0 - p[cells].sum())
    assert chi_square_p(obs, exp) > 1e-3
