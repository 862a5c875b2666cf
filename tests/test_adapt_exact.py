"""Exact causal adaptation of n-gram models (adapt_mode counts): equal to re-solving on train +
the lines scored before, through the vectorised and compiled passes and the eval/score routes;
causal; refused where it cannot be exact."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmkit import adapt, adapt_ngram
from lmkit.adapt_ngram import AdaptiveNgram, adaptive_log_proba, ngram_tables
from lmkit.config import AdaptConfig
from lmkit.counts import count_chunk
from lmkit.errors import InputError, OptionError
from lmkit.evaluate import evaluate
from lmkit.features import make_groups
from lmkit.ngram.mkn import solve_ngram
from lmkit.scoring import context_rows, sparse_log_proba

BOS, EOS = 1, 2
D = (0.6, 1.1, 1.7)
COMPILED = [False] + ([True] if adapt_ngram._fast() is not None else [])


def _resolved(seqs, target, V, order, d=D, bos=BOS, eos=EOS):
    """log P of ``target``'s tokens under MKN re-solved on ``seqs`` (lmkit's closed form)."""
    groups = make_groups(0, order)
    params = solve_ngram(count_chunk(seqs, V, groups, bos, eos), discount=d, bos_id=bos)
    rows, targets, _ = context_rows(groups, params.keys, [target], V, bos, eos)
    return sparse_log_proba(params, rows, targets)


def _text(seed, n, V=9):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, V - 2)
    p /= p.sum()
    return [list(rng.choice(np.arange(3, V), size=rng.integers(0, 8), p=p)) for _ in range(n)]


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_vectorised_pass_equals_resolving_and_reference(order, compiled):
    V = 9
    train = _text(order, 40)
    test = _text(order + 10, 25) + [train[3], [], train[3], [7] * 9]  # repeats, an empty line
    got = adaptive_log_proba(ngram_tables(count_chunk(train, V, make_groups(0, order), BOS, EOS),
                                          [D] * order, BOS, EOS), test, compiled=compiled)
    want = np.concatenate([_resolved(train + test[:i], s, V, order) for i, s in enumerate(test)])
    assert np.allclose(got, want, rtol=0, atol=1e-9)
    # per-order discounts (the re-solve takes one triple): the dictionary reference
    d = [(0.3 + 0.1 * n, 0.9 + 0.1 * n, 1.2 + 0.2 * n) for n in range(order)]
    t = ngram_tables(count_chunk(train, V, make_groups(0, order), BOS, EOS), d, BOS, EOS)
    ref = AdaptiveNgram(order, V, BOS, EOS, d).add(train).score_adaptive(test)
    assert np.allclose(adaptive_log_proba(t, test, compiled=compiled), np.concatenate(ref),
                       rtol=0, atol=1e-12)


@pytest.mark.skipif(len(COMPILED) < 2, reason="numba not installed")
def test_compiled_and_numpy_passes_agree_on_longer_text():
    V = 30
    rng = np.random.default_rng(5)
    train = [list(rng.integers(3, V, rng.integers(0, 15))) for _ in range(300)]
    test = [list(rng.integers(3, V, rng.integers(0, 15))) for _ in range(200)]
    t = ngram_tables(count_chunk(train, V, make_groups(0, 4), BOS, EOS), [D] * 4, BOS, EOS)
    a = adaptive_log_proba(t, test, compiled=False)
    b = adaptive_log_proba(t, test, compiled=True)
    assert np.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_adjusted_counts_equal_the_solvers(order):
    from lmkit.ngram.mkn import adjusted_counts
    counts = count_chunk(_text(order, 60), 9, make_groups(0, order), BOS, EOS)
    for m in range(order):
        mine = adapt_ngram.adjusted_counts(counts, m, order - 1, BOS)
        theirs = adjusted_counts(counts, m, order - 1, BOS)
        assert (mine != theirs).nnz == 0 and mine.nnz == theirs.nnz


def test_row_stats_hand_checked():
    import scipy.sparse as sp
    A = sp.csr_matrix(np.array([[1, 2, 5, 0], [0, 0, 0, 0], [3, 1, 1, 0]], dtype=np.int64))
    assert adapt_ngram.row_stats(A).tolist() == [[8, 0, 5], [1, 0, 2], [1, 0, 0], [1, 0, 1]]


# ---- through the model, eval and score -----------------------------------------------------
@pytest.fixture(scope="module")
def ngram_setup(tmp_path_factory, tiny_lines, tiny_tok_file):
    """An order-3 model with fixed discounts trained on the first 200 tiny lines (a file of its
    own, so a test can change it), and the next 12 lines to score."""
    from lmkit.train import train
    d = tmp_path_factory.mktemp("adapt_exact")
    src = d / "train.txt"
    src.write_text("\n".join(tiny_lines[:200]) + "\n", encoding="utf-8")
    test = d / "test.txt"
    test.write_text("\n".join(tiny_lines[200:212]) + "\n", encoding="utf-8")
    model = train(input=[str(src)], tokenizer=str(tiny_tok_file), order=3, discount=D)
    return model, model.save(d / "o3"), src, test, tiny_lines[:200], tiny_lines[200:212]


def _resolved_lines(model, train_lines, lines):
    """Per line of ``lines``: its log P under MKN re-solved on train + the lines before it."""
    tr, te = model.encode_lines(train_lines), model.encode_lines(lines)
    V, tok = model.vocab_size, model.tokenizer
    return [_resolved(tr + te[:i], s, V, 3, bos=tok.bos_id, eos=tok.eos_id)
            for i, s in enumerate(te)]


def test_eval_counts_equals_resolving(ngram_setup):
    model, _, _, test, train_lines, lines = ngram_setup
    want = _resolved_lines(model, train_lines, lines)
    r = evaluate(model, input=[str(test)], adapt=True, adapt_mode="counts")
    assert r["nll_nats"] == pytest.approx(-sum(x.sum() for x in want), rel=0, abs=1e-9)
    assert r["adapt"] == {"mode": "counts", "order": 3}
    static = evaluate(model, input=[str(test)])
    assert static["tokens"] == r["tokens"] and "adapt" not in static
    # the first line has read nothing yet: the static model's score
    first, _ = adapt.adaptive_log_proba(model, lines[:1], AdaptConfig(adapt=True,
                                                                      adapt_mode="counts"))
    assert np.allclose(first, adapt.static_log_proba(model, lines[:1])[0], rtol=0, atol=1e-12)
    again = evaluate(model, input=[str(test)], adapt=True, adapt_mode="counts")
    assert again == r  # deterministic


def test_score_counts_equals_resolving_per_line(ngram_setup, tmp_path):
    from lmkit.docscore import score_file
    model, model_dir, _, test, train_lines, lines = ngram_setup
    want = _resolved_lines(model, train_lines, lines)
    out = tmp_path / "s.jsonl"
    score_file(model_dir, out, input=[str(test)], progress=False, adapt=True, adapt_mode="counts")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(lines)))  # in reading order
    assert np.allclose([r["nll_nats"] for r in rows], [-x.sum() for x in want], rtol=0, atol=1e-9)
    with pytest.raises(OptionError, match="workers 1"):
        score_file(model_dir, out, input=[str(test)], workers=2, adapt=True, adapt_mode="counts")


def test_counts_is_causal(ngram_setup):
    model, _, _, _, _, lines = ngram_setup
    cfg = AdaptConfig(adapt=True, adapt_mode="counts")
    base, seqs = adapt.adaptive_log_proba(model, lines, cfg)
    n8 = sum(len(s) + 1 for s in seqs[:8])
    later = lines[:8] + [x[::-1] for x in lines[8:]] + [lines[0]] * 3
    other, _ = adapt.adaptive_log_proba(model, later, cfg)
    assert np.array_equal(base[:n8], other[:n8])
    # within a line: a changed ending leaves the scores of its beginning alone
    cut, _ = adapt.adaptive_log_proba(model, lines[:7] + [lines[7] + " ki ro"], cfg)
    assert np.array_equal(base[:n8 - 1], cut[:n8 - 1])
    # and the text read does change later scores (a repeated line becomes more probable)
    rep, s2 = adapt.adaptive_log_proba(model, [lines[3]] * 3, cfg)
    n = len(s2[0]) + 1
    assert rep[n:2 * n].sum() > rep[:n].sum()


def test_counts_plus_cache(ngram_setup):
    model, _, _, test, _, _ = ngram_setup
    counts = evaluate(model, input=[str(test)], adapt=True, adapt_mode="counts")
    w = adapt.cache.default_weights(8, 500).to_json()
    off = {**w, "a": [0.0] * len(w["a"])}  # a cache of weight 0 leaves the counts model alone
    r = evaluate(model, input=[str(test)], adapt=True, adapt_mode="counts+cache", cache_weights=off)
    assert r["nll_nats"] == pytest.approx(counts["nll_nats"], rel=1e-12)
    on = evaluate(model, input=[str(test)], adapt=True, adapt_mode="counts+cache")
    assert on["nll_nats"] != counts["nll_nats"] and on["adapt"]["order"] == 3


def test_counts_refusals(ngram_setup, tiny_model, tiny_corpus_file, tmp_path, tiny_tok_file):
    with pytest.raises(OptionError, match="add adapt"):
        AdaptConfig(adapt_mode="counts")
    with pytest.raises(OptionError, match="adapt_mode counts has none; use adapt_mode counts"):
        AdaptConfig(adapt=True, adapt_mode="counts", context_lines=2)
    with pytest.raises(OptionError, match="one of"):
        AdaptConfig(adapt=True, adapt_mode="exact")
    with pytest.raises(InputError, match="pure unpruned n-gram model .* use adapt_mode cache"):
        evaluate(tiny_model, input=[str(tiny_corpus_file)], adapt=True, adapt_mode="counts")
    # the training text must be the one the model was trained on
    from lmkit.train import train
    src = tmp_path / "t.txt"
    shutil.copy(ngram_setup[2], src)
    model = train(input=[str(src)], tokenizer=str(tiny_tok_file), order=3)
    src.write_text(src.read_text() + "one more line\n")
    with pytest.raises(InputError, match="not the text it was trained on"):
        evaluate(model, input=[str(ngram_setup[3])], adapt=True, adapt_mode="counts")
    src.unlink()
    with pytest.raises(InputError, match="cannot be read"):
        evaluate(model, input=[str(ngram_setup[3])], adapt=True, adapt_mode="counts")
    pruned = train(input=[str(ngram_setup[2])], tokenizer=str(tiny_tok_file), order=3, prune=(0, 1))
    with pytest.raises(InputError, match="pure unpruned"):
        evaluate(pruned, input=[str(ngram_setup[3])], adapt=True, adapt_mode="counts")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lmkit.cli", *args], capture_output=True,
                          text=True)


def test_cli_counts(ngram_setup, tiny_model_dir, tmp_path):
    _, model_dir, _, test, _, _ = ngram_setup
    r = _cli("eval", str(model_dir), "--input", str(test), "--adapt", "--adapt-mode", "counts",
             "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["adapt"]["mode"] == "counts"
    out = tmp_path / "s.jsonl"
    bad = _cli("score", str(tiny_model_dir), "--input", str(test), "--output", str(out),
               "--adapt", "--adapt-mode", "counts")
    assert bad.returncode == 2 and "pure unpruned" in bad.stderr
    assert "Traceback" not in bad.stderr and not out.exists()
    bad = _cli("eval", str(model_dir), "--input", str(test), "--adapt-mode", "counts")
    assert bad.returncode == 2 and "add --adapt" in bad.stderr


@pytest.mark.skipif(len(COMPILED) < 2, reason="numba not installed")
@pytest.mark.parametrize("order,window,reach", [(4, 0, 1), (4, 3, 0), (4, 50, 2), (2, 10, 1)])
def test_cache_counts_compiled_equal_numpy(order, window, reach):
    from lmkit import cache
    rng = np.random.default_rng(window)
    seqs = [list(rng.integers(0, 5, rng.integers(0, 9))) for _ in range(60)]
    stream, line = cache.stream_of(seqs, 5)
    wo = 3 if window else 0
    a = cache.level_stats(stream, line, order, window, wo, reach, 6, compiled=False)
    b = cache.level_stats(stream, line, order, window, wo, reach, 6, compiled=True)
    assert a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("bad", [5, [5], "x", {"a": 1}, [None]])
def test_counts_refuses_a_damaged_manifest_corpus_in_one_line(ngram_setup, tmp_path, bad):
    """A model folder is untrusted: the training text's options in its manifest are type-checked
    before anything reads them (they once reached the corpus reader and gave a traceback)."""
    _, model_dir, _, test, _, _ = ngram_setup
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["config"]["input"] = bad
    (d / "manifest.json").write_text(json.dumps(manifest))
    r = _cli("eval", str(d), "--input", str(test), "--adapt", "--adapt-mode", "counts")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "config 'input'" in r.stderr and "damaged" in r.stderr
