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


def _weights(K, seed=0, window=0, window_order=0):
    """Random valid weights: K full levels, then ``window_order`` window levels (d = e = 0)."""
    rng = np.random.default_rng(seed)
    L = K + window_order
    a, b, d, e = (rng.uniform(lo, hi, L) for lo, hi in
                  ((0.2, 1.0), (0.01, 3.0), (0.0, 1.0), (0.0, 3.0)))
    d[K:] = e[K:] = 0.0
    return cache.CacheWeights(*(tuple(float(v) for v in x) for x in (a, b, d, e)),
                              window=window, window_order=window_order)


@pytest.mark.parametrize("window", [1, 4, 1000])
def test_window_stats_count_only_the_last_tokens(window):
    rng = np.random.default_rng(window)
    seqs = [list(rng.integers(0, 3, rng.integers(0, 6))) for _ in range(25)]
    stream, line = cache.stream_of(seqs, 3)
    got = cache.window_stats(stream, line, 3, 1, 4, window)
    hist = cache.history_ids(stream, line, 3, 1, 4)  # exact ids (checked above via the stats)
    for t in range(len(stream)):
        lo = max(0, t - window)
        for k in range(3):
            same = hist[k][lo:t] == hist[k][t]
            assert got[0, k, t] == same.sum()
            assert got[1, k, t] == (same & (stream[lo:t] == stream[t])).sum()
    assert not got[2].any()  # no distinct counts on window levels
    if window >= len(stream):
        assert np.array_equal(got[:2], cache.cache_stats(stream, line, 3, 1, 4)[:2])


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
    lv = cache._levels(st)
    f, g = cache._nll_and_grad(x, static, lv, 3)
    h = 1e-7
    num = [(cache._nll_and_grad(x + h * e, static, lv, 3)[0] - f) / h for e in np.eye(12)]
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
    assert cache.default_weights(8, 500).order == 8
    with pytest.raises(InputError, match="fit weights for them"):
        cache.default_weights(3, 500)
    with pytest.raises(InputError, match="window"):
        cache.CacheWeights.from_json({**w.to_json(), "window": 5, "window_order": 1})


def test_options_refused_without_adapt():
    with pytest.raises(OptionError, match="add adapt"):
        AdaptConfig(context_lines=2)
    with pytest.raises(OptionError, match="add cache_fit"):
        AdaptConfig(adapt=True, cache_order=4)
    assert AdaptConfig(adapt=True, cache_order=4, cache_fit=True).effective_cache_order == 4
    assert AdaptConfig(adapt=True).effective_context_lines == AdaptConfig.DEFAULT_CONTEXT_LINES


CFG = dict(adapt=True, cache_order=4, cache_weights=_weights(4, window=30, window_order=2).to_json())


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
    off = dict(CFG, cache_weights={**CFG["cache_weights"], "a": [0.0] * 6})  # cache switched off
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


# ---- exact adaptation of an n-gram model (adapt_ngram.py) ----------------------------------
from lmkit.adapt_ngram import AdaptiveNgram  # noqa: E402
from lmkit.counts import count_chunk  # noqa: E402
from lmkit.features import make_groups  # noqa: E402
from lmkit.ngram.mkn import solve_ngram  # noqa: E402
from lmkit.scoring import context_rows, sparse_log_proba  # noqa: E402

BOS, EOS = 1, 2
D = (0.6, 1.1, 1.7)


def _resolved(seqs, target, V, order):
    """log P of ``target``'s tokens under MKN re-solved on ``seqs`` (lmkit's closed form)."""
    groups = make_groups(0, order)
    params = solve_ngram(count_chunk(seqs, V, groups, BOS, EOS), discount=D)
    rows, targets, _ = context_rows(groups, params.keys, [target], V, BOS, EOS)
    return sparse_log_proba(params, rows, targets)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_adaptive_ngram_equals_resolving_on_train_plus_scored(order):
    rng = np.random.default_rng(order)
    V = 9
    p = 1.0 / np.arange(1, V - 2)
    p /= p.sum()

    def line():
        return list(rng.choice(np.arange(3, V), size=rng.integers(0, 7), p=p))
    train = [line() for _ in range(40)]
    test = [line() for _ in range(12)] + [train[3], [], train[3]]  # repeats, an empty line
    m = AdaptiveNgram(order, V, BOS, EOS, D).add(train)
    for i, s in enumerate(test):
        got = np.array(m.log_proba_line(s))
        want = _resolved(train + test[:i], s, V, order)
        assert np.allclose(got, want, rtol=0, atol=1e-9), i
        m.add_line(s)
    # and the adapted distribution still sums to one over every next token
    total = sum(m.prob((BOS, 3), w) for w in range(V))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_adaptive_ngram_is_causal_and_learns():
    train = [[3, 4, 5], [4, 5, 6]]
    test = [[7, 8, 7, 8], [7, 8, 7, 8], [3, 3]]
    a = AdaptiveNgram(3, 9, BOS, EOS, D).add(train).score_adaptive(test)
    b = AdaptiveNgram(3, 9, BOS, EOS, D).add(train).score_adaptive(test[:2] + [[6, 6, 6]])
    assert a[:2] == b[:2]  # the last line changes no earlier score
    assert sum(a[1]) > sum(a[0])  # the repeated line is more probable the second time
    with pytest.raises(InputError, match="triples"):
        AdaptiveNgram(3, 9, BOS, EOS, [(0.5, 1.0, 1.5)])


# ---- lmkit score --adapt ---------------------------------------------------------------------
def test_score_adapt_matches_adaptive_scores(tiny_model, tiny_model_dir, tiny_lines, tmp_path):
    from lmkit.docscore import score_file
    src = tmp_path / "in.txt"
    src.write_text("\n".join(tiny_lines[:20]) + "\n\n" + "\n".join(tiny_lines[20:30]) + "\n")
    out = tmp_path / "s.jsonl"
    score_file(tiny_model_dir, out, input=[str(src)], unit="document", progress=False, **CFG)
    docs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d["index"] for d in docs] == [0, 1]
    logp, seqs = adaptive_log_proba(tiny_model, tiny_lines[:30], AdaptConfig(**CFG))
    n20 = sum(len(s) + 1 for s in seqs[:20])
    assert docs[0]["nll_nats"] == pytest.approx(-logp[:n20].sum(), rel=1e-12)
    assert docs[1]["nll_nats"] == pytest.approx(-logp[n20:].sum(), rel=1e-12)
    static = tmp_path / "static.jsonl"
    score_file(tiny_model_dir, static, input=[str(src)], unit="document", progress=False)
    assert json.loads(static.read_text().splitlines()[1])["nll_nats"] != docs[1]["nll_nats"]
    with pytest.raises(InputError, match="pass workers 1"):
        score_file(tiny_model_dir, out, input=[str(src)], workers=2, **CFG)


def test_cli_score_adapt(tiny_model_dir, tiny_corpus_file, tmp_path):
    out = tmp_path / "s.jsonl"
    r = _cli("score", str(tiny_model_dir), "--input", str(tiny_corpus_file), "--output",
             str(out), "--adapt")
    assert r.returncode == 0, r.stderr
    from lmkit.corpus import sequences  # one row per sequence (blank lines are none)
    assert len(out.read_text().splitlines()) == len(list(sequences(
        tiny_corpus_file.read_text().split("\n"))))
    bad = _cli("score", str(tiny_model_dir), "--input", str(tiny_corpus_file), "--output",
               str(out), "--cache-window", "9")
    assert bad.returncode == 2 and "add --adapt" in bad.stderr
