"""Adaptive scoring: exact cache statistics, normalisation, causality, fitting, options, CLI."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lmkit import cache
from lmkit.adapt import adaptive_log_proba, evaluate_adaptive, fit_weights, static_log_proba
from lmkit.config import AdaptConfig
from lmkit.errors import InputError, OptionError
from lmkit.evaluate import evaluate, evaluate_lines


def _brute_stats(stream, line, K, reach, V):
    """c, n, u by definition: scan every earlier position."""
    def hist(t, k):
        return tuple(stream[t - j] if t - j >= 0 and line[t - j] >= line[t] - reach else V
                     for j in range(1, k + 1))
    out = np.zeros((3, K, len(stream)), dtype=np.int64)
    for t in range(len(stream)):
        for k in range(K):
            prev = [s for s in range(t) if hist(s, k) == hist(t, k)]
            out[:, k, t] = (len(prev), sum(stream[s] == stream[t] for s in prev),
                            len({stream[s] for s in prev}))
    return out


def test_stream_of():
    stream, line = cache.stream_of([[5, 6], [], [7]], eos_id=2)
    assert stream.tolist() == [5, 6, 2, 2, 7, 2]
    assert line.tolist() == [0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("reach", [0, 1, 3])
def test_cache_stats_are_the_counts_of_the_text_before(reach):
    rng = np.random.default_rng(reach)
    seqs = [list(rng.integers(0, 4, rng.integers(0, 6))) for _ in range(25)]
    stream, line = cache.stream_of(seqs, 4)
    got = cache.cache_stats(stream, line, 4, reach, 5)
    assert np.array_equal(got, _brute_stats(stream, line, 4, reach, 5))


def test_stats_hand_checked():
    # stream a b a b E, one line: position 3 (target b after "a") has seen "a" once, "a b" once
    stream, line = cache.stream_of([[0, 1, 0, 1]], 2)
    c, n, u = cache.cache_stats(stream, line, 2, 0, 3)
    assert c[0].tolist() == [0, 1, 2, 3, 4]  # every earlier position has the empty history
    assert n[0].tolist() == [0, 0, 1, 1, 0]
    assert u[0].tolist() == [0, 1, 2, 2, 2]
    assert c[1, 3] == 1 and n[1, 3] == 1 and u[1, 3] == 1  # "a" -> b seen once before


def _weights(K, seed=0):
    rng = np.random.default_rng(seed)
    return cache.CacheWeights(*(tuple(rng.uniform(lo, hi, K)) for lo, hi in
                                ((0.2, 1.0), (0.01, 3.0), (0.0, 1.0), (0.0, 3.0))))


def test_adaptive_distribution_sums_to_one():
    """Every candidate next token scored at one position: the probabilities sum to 1."""
    rng = np.random.default_rng(1)
    V, K = 6, 4
    static = rng.dirichlet(np.ones(V))  # a fixed static next-token distribution
    seqs = [list(rng.integers(0, V - 1, 8)) for _ in range(5)] + [[0, 1]]
    w = _weights(K)
    total = 0.0
    for cand in range(V):
        s = seqs[:-1] + [seqs[-1] + [cand]]
        stream, line = cache.stream_of(s, V - 1)
        stream, line = stream[:-1], line[:-1]  # the candidate is the last target
        st = cache.cache_stats(stream, line, K, 2, V)
        lp = cache.cache_log_proba(np.log(static[stream]), st, w)
        total += math.exp(lp[-1])
    assert total == pytest.approx(1.0, abs=1e-12)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    seqs = [list(rng.integers(0, 5, rng.integers(1, 9))) for _ in range(40)]
    stream, line = cache.stream_of(seqs, 5)
    st = cache.cache_stats(stream, line, 3, 1, 6)
    static = np.log(rng.uniform(0.05, 0.3, len(stream)))
    x = np.r_[np.full(3, 0.4), np.zeros(3), np.full(3, 0.6), np.full(3, 0.5)]
    f, g = cache._nll_and_grad(x, static, st, 3)
    h = 1e-7
    num = [(cache._nll_and_grad(x + h * e, static, st, 3)[0] - f) / h for e in np.eye(12)]
    assert np.allclose(num, g, atol=1e-5)


def test_fit_cache_is_deterministic_and_beats_static():
    rng = np.random.default_rng(3)
    phrase = [1, 2, 3, 4]
    seqs = [phrase + list(rng.integers(0, 8, 3)) for _ in range(60)]  # a repeated phrase
    stream, line = cache.stream_of(seqs, 9)
    st = cache.cache_stats(stream, line, 4, 1, 10)
    static = np.full(len(stream), math.log(0.1))
    w1, nll1 = cache.fit_cache(static, st, 4)
    w2, nll2 = cache.fit_cache(static, st, 4)
    assert w1 == w2 and nll1 == nll2
    assert nll1 < math.log(10) - 0.5  # the cache learns the phrase
    assert nll1 == pytest.approx(-cache.cache_log_proba(static, st, w1).mean())


def test_weights_json_round_trip_and_refusals():
    w = _weights(3)
    assert cache.CacheWeights.from_json(json.loads(json.dumps(w.to_json()))) == w
    with pytest.raises(InputError, match="need as many"):
        cache.CacheWeights.from_json({"a": [2.0], "b": [1.0], "d": [0.5], "e": [0.0]})
    with pytest.raises(InputError, match="refit them"):
        cache.CacheWeights.from_json({"a": [0.5]})
    assert cache.default_weights(8).order == 8
    with pytest.raises(InputError, match="fit weights for it"):
        cache.default_weights(3)


def test_options_refused_without_adapt():
    with pytest.raises(OptionError, match="add adapt"):
        AdaptConfig(context_lines=2)
    with pytest.raises(OptionError, match="add cache_fit"):
        AdaptConfig(adapt=True, cache_order=4)
    assert AdaptConfig(adapt=True, cache_order=4, cache_fit=True).effective_cache_order == 4
    assert AdaptConfig(adapt=True).effective_context_lines == AdaptConfig.DEFAULT_CONTEXT_LINES


CFG = dict(adapt=True, cache_order=4, cache_weights=_weights(4).to_json())


def test_causal_a_token_score_ignores_later_text(tiny_model, tiny_lines):
    cfg = AdaptConfig(**CFG, context_lines=2)
    lines = tiny_lines[:40]
    base, seqs = adaptive_log_proba(tiny_model, lines, cfg)
    n_first = sum(len(s) + 1 for s in seqs[:30])
    changed = lines[:30] + [x[::-1] for x in lines[30:]] + ["Ki ro mi ki ro mi."]
    other, _ = adaptive_log_proba(tiny_model, changed, cfg)
    assert np.array_equal(base[:n_first], other[:n_first])
    # and within a line: a changed ending leaves the scores of its beginning alone
    cut = lines[:29] + [lines[29] + " the end"]
    mid, seqs2 = adaptive_log_proba(tiny_model, cut, cfg)
    n_keep = n_first - 1  # every token of line 29 but its EOS
    assert np.array_equal(base[:n_keep], mid[:n_keep])
    assert not np.array_equal(base[:n_first], static_log_proba(tiny_model, lines[:30])[0])


def test_first_line_scores_as_static(tiny_model, tiny_lines):
    """Nothing read yet: the first token of the text is scored by the static model alone."""
    cfg = AdaptConfig(**CFG)
    logp, _ = adaptive_log_proba(tiny_model, tiny_lines[:5], cfg)
    static, _ = static_log_proba(tiny_model, tiny_lines[:5])
    assert logp[0] == static[0]


def test_evaluate_adaptive_and_static_unchanged(tiny_model, tiny_corpus_file, tiny_lines):
    static = evaluate(tiny_model, input=[str(tiny_corpus_file)])
    assert static == pytest.approx(evaluate_lines(tiny_model, tiny_lines))
    assert "adapt" not in static
    r = evaluate(tiny_model, input=[str(tiny_corpus_file)], **CFG)
    assert r["tokens"] == static["tokens"] and r["bytes"] == static["bytes"]
    assert r["bits_per_byte"] != static["bits_per_byte"]
    off = dict(CFG, cache_weights={**CFG["cache_weights"], "a": [0.0] * 4})  # cache switched off
    assert evaluate(tiny_model, input=[str(tiny_corpus_file)], **off)["nll_nats"] == \
        pytest.approx(static["nll_nats"], rel=1e-12)
    assert r["adapt"]["cache_order"] == 4 and not r["adapt"]["fitted_on_heldout"]
    with pytest.raises(InputError, match="input files have none"):
        evaluate(tiny_model, input=[str(tiny_corpus_file)], adapt=True, cache_fit=True)


def test_fitted_weights_score_heldout_as_fitted(tiny_model, tiny_lines):
    cfg = AdaptConfig(adapt=True, cache_order=3, cache_fit=True, context_lines=1)
    w, nll = fit_weights(tiny_model, tiny_lines[:150], cfg)
    r = evaluate_adaptive(tiny_model, tiny_lines[:150], AdaptConfig(
        adapt=True, cache_order=3, context_lines=1, cache_weights=w.to_json()))
    assert r["nll_nats"] / r["tokens"] == pytest.approx(nll, rel=1e-9)
    assert nll < evaluate_lines(tiny_model, tiny_lines[:150])["nll_nats"] / r["tokens"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lmkit.cli", *args], capture_output=True,
                          text=True)


def test_cli_eval_adapt(tiny_model_dir, tiny_corpus_file):
    r = _cli("eval", str(tiny_model_dir), "--input", str(tiny_corpus_file), "--adapt", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["adapt"]["cache_order"] == 8 and out["adapt"]["context_lines"] == 1
    s = _cli("eval", str(tiny_model_dir), "--input", str(tiny_corpus_file), "--json")
    assert "adapt" not in json.loads(s.stdout)
    bad = _cli("eval", str(tiny_model_dir), "--input", str(tiny_corpus_file), "--context-lines", "2")
    assert bad.returncode == 2 and "add --adapt" in bad.stderr and "Traceback" not in bad.stderr
