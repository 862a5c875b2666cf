"""Interpolation: EM weights, exact mixture scores, save/load, log-linear merge; CLI verbs."""
import json
import math

import numpy as np
import pytest

from lmkit.cli import main
from lmkit.errors import InputError
from lmkit.interpolate import MixtureModel, fit_weights, interpolate


def test_em_weights_hand_checked():
    # component 0 predicts tokens 0..49 with p=.9 and the rest with .1; component 1 the reverse
    lp = np.log(np.array([[0.9] * 50 + [0.1] * 50, [0.1] * 50 + [0.9] * 50]))
    w, trace = fit_weights(lp)
    assert w == pytest.approx([0.5, 0.5], abs=1e-6)
    # with 3:1 data the EM optimum is where d/dw of the mean log-likelihood is 0
    lp = np.log(np.array([[0.9] * 75 + [0.1] * 25, [0.1] * 75 + [0.9] * 25]))
    w, trace = fit_weights(lp, tol=1e-12, max_iter=2000)
    grad = np.mean((np.exp(lp[0]) - np.exp(lp[1])) / np.exp(np.logaddexp(np.log(w[0]) + lp[0],
                                                                          np.log(w[1]) + lp[1])))
    assert abs(grad) < 1e-5 and w[0] > 0.5
    assert all(b[1] <= a[1] + 1e-12 for a, b in zip(trace, trace[1:]))  # EM never goes up


@pytest.fixture(scope="module")
def two_models(tiny_corpus_file, tiny_tok_file, tmp_path_factory):
    from lmkit.train import train
    d = tmp_path_factory.mktemp("mix")
    a = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3)
    b = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), context=1,
              lambda_tokens=2000)
    return a, b, a.save(d / "a"), b.save(d / "b")


def test_mixture_scores_exactly_and_round_trips(two_models, tiny_lines, tmp_path):
    a, b, _, _ = two_models
    mix = interpolate([a, b], tiny_lines[::7], weights="auto")
    w = mix.weights
    seqs = a.encode_lines(tiny_lines[:20])
    want = np.log(w[0] * np.exp(a.log_proba_ids(seqs)[0]) + w[1] * np.exp(b.log_proba_ids(seqs)[0]))
    assert np.abs(mix.log_proba_ids(seqs)[0] - want).max() < 1e-12
    assert np.exp(mix.next_logp([5, 6])).sum() == pytest.approx(1.0)
    held = tiny_lines[::7]
    assert mix.perplexity(held) <= min(a.perplexity(held), b.perplexity(held)) * (1 + 1e-5)
    again = MixtureModel.load(mix.save(tmp_path / "mix"))
    assert json.loads((tmp_path / "mix" / "manifest.json").read_text())["kind"] == "mixture"
    assert np.array_equal(again.log_proba_ids(seqs)[0], mix.log_proba_ids(seqs)[0])
    assert again.sample("Th", max_tokens=5, seed=1) == mix.sample("Th", max_tokens=5, seed=1)
    assert again.top_next("Th", 3)[0][1] == pytest.approx(np.max(np.delete(
        again.next_distribution("Th"), again.tokenizer.bos_id)))


def test_loglinear_merge_is_a_normalised_sparse_model(two_models, tiny_lines):
    a, b, _, _ = two_models
    held = tiny_lines[::5]
    merged = interpolate([a, b], held, method="loglinear")
    assert [g.name for g in merged.groups] == ["suffix1", "suffix2", "window1"]
    assert np.exp(merged.next_logp([5, 6])).sum() == pytest.approx(1.0)
    # the fit starts at the best component and only takes steps that lower the held-out NLL
    assert merged.perplexity(held) <= min(a.perplexity(held), b.perplexity(held)) * (1 + 1e-9)


def test_loglinear_merge_refuses_shared_groups(two_models, tiny_lines):
    a, _, _, _ = two_models
    with pytest.raises(InputError, match="different feature groups, but suffix1, suffix2 occur"):
        interpolate([a, a], tiny_lines[::5], method="loglinear")


def test_mixture_refuses_bad_weights_and_tokenizers(two_models, tiny_model):
    a, b, _, _ = two_models
    with pytest.raises(InputError, match="weights needs 2 non-negative values"):
        interpolate([a, b], [], weights=[1, -1])
    with pytest.raises(InputError, match="at least 2 models"):
        interpolate([a], [], weights=[1])


def test_cli_interpolate_next_vocab(two_models, tiny_corpus_file, tmp_path, capsys):
    _, _, da, db = two_models
    out = tmp_path / "mix"
    assert main(["interpolate", da, db, "--input", tiny_corpus_file, "--output", out]) == 0
    assert "linear mixture of 2 models" in capsys.readouterr().out
    assert main(["interpolate", da, db, "--weights", "0.3", "0.7", "--output", out]) == 0
    assert json.loads((out / "manifest.json").read_text())["weights"] == pytest.approx([0.3, 0.7])
    capsys.readouterr()
    assert main(["next", out, "--context", "Th", "--top", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert main(["vocab", da]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "2\t</s>" and len(lines) == 300
    assert main(["score", out, "--input", tiny_corpus_file, "--output", tmp_path / "s.jsonl"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["interpolate", da, db, "--weights", "x", "y", "--output", out])
    assert e.value.code == 2
    assert "argument --weights: invalid float value: 'x'" in capsys.readouterr().err
    assert main(["interpolate", da, db, "--weights", "0.5", "--output", out]) == 2
    assert "needs 2 non-negative values" in capsys.readouterr().err


def test_cli_import_prune_export_pieces(two_models, tmp_path, capsys):
    kenlm = pytest.importorskip("kenlm")
    a, _, da, _ = two_models
    assert main(["export-arpa", da, tmp_path / "p.arpa", "--words", "pieces"]) == 0
    assert "SentencePiece pieces" in capsys.readouterr().out
    assert main(["import-arpa", tmp_path / "p.arpa", "--tokenizer", da, "--output",
                 tmp_path / "imp"]) == 0
    assert main(["prune", tmp_path / "imp", "--threshold", "1e-5", "--output", tmp_path / "pr"]) == 0
    assert "n-grams" in capsys.readouterr().out
    assert main(["next", tmp_path / "imp", "--context", "Th", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    km = kenlm.Model(str(tmp_path / "p.arpa"))
    state, out = kenlm.State(), kenlm.State()
    km.BeginSentenceWrite(state)
    for piece in a.tokenizer.encode_pieces("Th"):
        km.BaseScore(state, piece, out)
        state, out = out, state
    p, piece = lines[0].split("\t")
    assert math.log10(float(p)) == pytest.approx(km.BaseScore(state, piece, out), abs=1e-5)
    assert main(["import-arpa", tmp_path / "nope.arpa", "--tokenizer", da, "--output",
                 tmp_path / "x"]) == 2
    assert "no such ARPA file" in capsys.readouterr().err
