"""lmkit.neural: the small transformer and the explicit + neural hybrid (needs the neural extra)."""
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install 'lmkit[neural]')")

from lmkit.errors import InputError, ModelFormatError  # noqa: E402
from lmkit.neural import (GPTConfig, NeuralLM, is_neural_folder, train_residual,  # noqa: E402
                          train_transformer)
from lmkit.neural.data import make_windows  # noqa: E402

TINY = GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=2, n_embd=16)
FAST = {"max_seconds": 60.0, "max_steps": 4, "batch_size": 16, "eval_every": 1e9,
        "valid_tokens": 200, "log": lambda msg: None}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible matmuls for the determinism checks
    yield
    torch.set_num_threads(old)


def test_windows_cover_every_target_once():
    w = make_windows(np.array([2, 5, 20]), 8)
    assert w[:2].tolist() == [[0, 0, 3, 0], [1, 0, 6, 0]]
    for s, n in ((0, 3), (1, 6), (2, 21)):
        scored = [t for (q, a, b, f) in w if q == s for t in range(f, b)]
        assert scored == list(range(n))
    assert ((w[:, 2] - w[:, 1]) <= 8).all()


def test_tiny_transformer_trains_and_scores(tiny_tok, tiny_lines):
    lm = train_transformer(tiny_tok, tiny_lines[:200], tiny_lines[200:], config=TINY, seed=0,
                           **{**FAST, "max_steps": 12, "lr": 3e-3, "warmup": 1})
    hist = lm.training["history"]
    assert lm.training["steps"] == 12 and hist[-1]["valid_ppl"] < hist[0]["valid_ppl"]
    assert lm.training["best_valid_ppl"] == min(h["valid_ppl"] for h in hist)
    seqs = lm.encode_lines(tiny_lines[200:210] + ["a line longer than the block: " * 3])
    logp, idx = lm.log_proba_ids(seqs)
    assert len(logp) == sum(len(s) + 1 for s in seqs) and np.all(np.isfinite(logp))
    assert np.array_equal(idx, np.repeat(np.arange(len(seqs)), [len(s) + 1 for s in seqs]))
    # within one block, scoring token by token with next_logp gives the same numbers
    s = seqs[0] + [tiny_tok.eos_id]
    by_step = [lm.next_logp(s[:t])[s[t]] for t in range(TINY.block_size)]
    assert np.allclose(by_step, logp[:TINY.block_size], atol=1e-5)
    p = np.exp(lm.next_logp(s[:3]))
    assert abs(p.sum() - 1) < 1e-5
    r = lm.score(tiny_lines[200:])
    assert r["perplexity"] > 1 and np.isfinite(r["bits_per_byte"])


def test_hybrid_with_zero_network_is_the_explicit_model(tiny_model, tiny_lines):
    lm = NeuralLM.create(tiny_model.tokenizer, explicit=tiny_model, config=TINY, seed=0)
    # a fresh hybrid's f_theta is exactly 0 (zero final LayerNorm gain) and its scale is 1
    assert float(lm.net.scale.detach()) == 1.0 and not lm.net.gpt.ln_f.weight.any()
    seqs = tiny_model.encode_lines(tiny_lines[:20])
    a, ia = lm.log_proba_ids(seqs)
    b, ib = tiny_model.log_proba_ids(seqs)
    assert np.allclose(a, b, atol=1e-4) and np.array_equal(ia, ib)
    assert np.allclose(lm.next_logp(seqs[0][:2]), tiny_model.next_logp(seqs[0][:2]), atol=1e-4)


def test_residual_training_changes_the_model(tiny_model, tiny_lines):
    lm = train_residual(tiny_model, tiny_lines[:200], tiny_lines[200:], config=TINY, seed=0,
                        **{**FAST, "max_steps": 8, "lr": 3e-3, "warmup": 1})
    assert lm.training["best_step"] == 8  # better on valid than the explicit model it started as
    seqs = tiny_model.encode_lines(tiny_lines[:20])
    a, _ = lm.log_proba_ids(seqs)
    b, _ = tiny_model.log_proba_ids(seqs)
    assert not np.allclose(a, b, atol=1e-4)
    assert lm.net.gpt.ln_f.weight.any() and float(lm.net.scale.detach()) != 1.0


def test_save_load_round_trip(tiny_model, tiny_lines, tmp_path):
    lm = train_residual(tiny_model, tiny_lines[:200], tiny_lines[200:], config=TINY, seed=0,
                        **FAST)
    path = lm.save(tmp_path / "hybrid")
    assert is_neural_folder(path) and not is_neural_folder(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["explicit", "manifest.json",
                                                      "tokenizer.model", "weights.npz"]
    back = NeuralLM.load(path)
    seqs = lm.encode_lines(tiny_lines[200:230])
    assert np.array_equal(lm.log_proba_ids(seqs)[0], back.log_proba_ids(seqs)[0])
    assert back.sample(max_tokens=8, seed=3) == lm.sample(max_tokens=8, seed=3)
    assert back.training["steps"] == 4 and back.config == TINY
    lm.save(path)  # replacing our own folder is allowed
    (path / "weights.npz").write_bytes(b"not a state dict")
    with pytest.raises(ModelFormatError, match=r"weights.npz: corrupt or truncated \(16 bytes"):
        NeuralLM.load(path)
    m = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(ModelFormatError, match="version 99"):
        NeuralLM.load(path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("user data")
    with pytest.raises(InputError, match="not a model folder"):
        lm.save(tmp_path / "data")


def test_same_seed_same_model(tiny_tok, tiny_lines):
    runs = [train_transformer(tiny_tok, tiny_lines[:200], tiny_lines[200:], config=TINY,
                              seed=s, **FAST) for s in (1, 1, 2)]
    seqs = tiny_tok.encode_batch(tiny_lines[200:220])
    a, b, c = (r.log_proba_ids(seqs)[0] for r in runs)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_bad_budget_is_refused(tiny_tok, tiny_lines):
    with pytest.raises(InputError, match="max_seconds"):
        train_transformer(tiny_tok, tiny_lines[:20], tiny_lines[20:30], config=TINY,
                          **{**FAST, "max_seconds": 0})


def test_crossfit_rows_come_from_the_model_without_the_line(tiny_model, tiny_lines):
    from lmkit.neural.crossfit import CrossFitRows, fold_models
    lines = tiny_lines[:120]
    models = fold_models(tiny_model, lines, 2)
    assert [len(m.params.lambdas) for m in models] == [2, 2]
    assert np.array_equal(models[0].params.lambdas, tiny_model.params.lambdas)
    seqs = tiny_model.encode_lines(lines)
    rows = CrossFitRows(models, seqs)
    flat = np.arange(len(seqs[0]) + len(seqs[1]) + 2)  # every target of lines 0 (fold 0), 1
    got = rows.log_proba(flat).double().numpy()
    n0 = len(seqs[0]) + 1
    want0 = models[0].next_log_proba_batch([seqs[0][:t] for t in range(n0)])
    want1 = models[1].next_log_proba_batch([seqs[1][:t] for t in range(len(seqs[1]) + 1)])
    assert np.allclose(got[:n0], want0, atol=1e-5) and np.allclose(got[n0:], want1, atol=1e-5)
    full = tiny_model.next_log_proba_batch([seqs[0][:t] for t in range(n0)])
    assert not np.allclose(got[:n0], full, atol=1e-3)  # the full model has seen line 0
    lm = train_residual(tiny_model, lines, tiny_lines[200:], config=TINY, seed=0, crossfit=2,
                        **FAST)
    assert lm.training["crossfit"] == 2 and lm.training["steps"] == 4


def test_cli_residual_trains_evaluates_and_generates(tmp_path, tiny_corpus_file, tiny_tok_file, capsys):
    """`lmkit train --solver residual` is the same code path users run; eval/generate load it."""
    from lmkit.cli import main
    src = ["--input", str(tiny_corpus_file)]
    out = tmp_path / "hyb"
    assert main(["train", *src, "--tokenizer", str(tiny_tok_file), "--context", "2",
                 "--solver", "residual", "--hybrid", "residual", "--max-seconds", "2",
                 "--crossfit", "0", "--output", str(out)]) == 0
    assert main(["eval", str(out), *src, "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["tokens"] > 0 and math.isfinite(r["perplexity"])
    assert main(["generate", str(out), "--max-tokens", "5", "--seed", "1"]) == 0
    assert main(["train", *src, "--solver", "residual", "--output", str(tmp_path / "x")]) == 2
    assert "--solver residual trains by a CPU-time budget; add --max-seconds" in capsys.readouterr().err


def test_crossfit_of_a_rich_base_trains_rich_folds(tiny_corpus_file, tiny_tok_file, tiny_lines):
    from lmkit.neural.crossfit import fold_models
    from lmkit.train import train
    base = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), verbose=False)
    assert base.config["rich"] is True  # the default model
    models = fold_models(base, tiny_lines[:120], 2)
    assert [m.config["rich"] for m in models] == [True, True]
    assert [g.name.split("_")[0] for g in models[0].groups] == \
        [g.name.split("_")[0] for g in base.groups]  # same families (cluster sizes may differ)


def test_explicit_init_arrays_are_the_unigram_and_the_bigram_pmi(tiny_tok, tiny_lines):
    from lmkit.neural.explicit_init import bigram_counts, init_arrays
    seqs = tiny_tok.encode_batch(tiny_lines)
    V, bos, eos = tiny_tok.vocab_size, tiny_tok.bos_id, tiny_tok.eos_id
    c = bigram_counts([[5, 6]], V, bos, eos)
    assert c.sum() == 3 and c[bos, 5] == c[5, 6] == c[6, eos] == 1
    bias, emb = init_arrays(seqs, V, bos, eos, n_embd=16, rank=8, seed=0)
    col = np.bincount(np.concatenate([s + [eos] for s in seqs]), minlength=V)
    want = np.log((col + 1) / (col.sum() + V))
    assert np.allclose(bias, want - want.mean(), atol=1e-5)
    assert emb.shape == (V, 8) and emb.dtype == np.float32
    gram = emb.T.astype(np.float64) @ emb  # eigenvectors: orthogonal columns, eigenvalues >= 0
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-4 * np.diag(gram).max()
    assert (np.diff(np.diag(gram)) <= 1e-6).all() and np.diag(gram).min() >= 0
    again = init_arrays(seqs, V, bos, eos, n_embd=16, rank=8, seed=0)
    assert np.array_equal(again[1], emb)  # seeded: deterministic
    with pytest.raises(ValueError, match="rank"):
        init_arrays(seqs, V, bos, eos, n_embd=16, rank=17)


def test_explicit_init_starts_better_and_is_charged(tiny_tok, tiny_lines):
    runs = {init: train_transformer(tiny_tok, tiny_lines[:200], tiny_lines[200:], config=TINY,
                                    seed=0, init=init, **{**FAST, "max_steps": 2})
            for init in ("random", "explicit")}
    r, e = (runs[k].training for k in ("random", "explicit"))
    # the unigram bias alone beats the near-uniform random start (ppl ~ V = 300)
    assert e["history"][0]["valid_ppl"] < 0.5 * r["history"][0]["valid_ppl"]
    assert e["init"] == "explicit" and e["init_rank"] == TINY.n_embd // 2
    assert e["history"][0]["seconds"] > 0 == r["history"][0]["seconds"]  # init CPU s charged
    assert runs["explicit"].config.head_bias and not runs["random"].config.head_bias
    lm = NeuralLM.create(tiny_tok, config=TINY, seed=0)
    with pytest.raises(InputError, match="head_bias"):
        lm.init_explicit(tiny_tok.encode_batch(tiny_lines[:10]))
    with pytest.raises(InputError, match="init must be"):
        NeuralLM.create(tiny_tok, config=TINY, init="zeros")


def test_init_option_is_one_definition_for_cli_and_api(tmp_path, tiny_corpus_file, tiny_tok_file,
                                                       capsys):
    from lmkit.cli import main
    from lmkit.config import GradientConfig
    from lmkit.errors import OptionError
    assert GradientConfig(solver="transformer", max_seconds=1, init="explicit").effective_init \
        == "explicit"
    assert GradientConfig(solver="transformer", max_seconds=1).effective_init == "random"
    with pytest.raises(OptionError, match="random or explicit"):
        GradientConfig(solver="transformer", max_seconds=1, init="zeros")
    from lmkit.config import TrainConfig
    with pytest.raises(OptionError, match="not hybrid residual"):
        TrainConfig.from_kwargs(solver="residual", max_seconds=1, init="explicit",
                                hybrid="residual")
    assert TrainConfig.from_kwargs(solver="residual", max_seconds=1, init="random").neural.hybrid \
        == "mix"  # the mixed hybrid's network takes init
    src = ["--input", str(tiny_corpus_file), "--tokenizer", str(tiny_tok_file)]
    out = tmp_path / "t"
    assert main(["train", *src, "--solver", "transformer", "--init", "explicit",
                 "--max-seconds", "3", "--output", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["training"]["init"] == "explicit" and m["config"]["head_bias"] is True
    assert NeuralLM.load(out).config.head_bias
    assert main(["train", *src, "--solver", "residual", "--hybrid", "residual", "--init",
                 "explicit", "--max-seconds", "3", "--output", str(tmp_path / "r")]) == 2
    assert "residual (its network starts at exactly 0)" in capsys.readouterr().err


def test_resumed_training_equals_uninterrupted(tiny_tok, tiny_lines):
    from lmkit.neural.fit import Trainer
    opts = {"seed": 0, "batch_size": 16, "eval_every": 1e9, "valid_tokens": 200, "lr": 3e-3,
            "warmup": 1, "log": lambda m: None}

    def trainer():
        return Trainer(NeuralLM.create(tiny_tok, config=TINY, seed=0), tiny_lines[:200],
                       tiny_lines[200:], **opts)
    whole = trainer()
    whole.advance(60, max_steps=6)
    first = trainer()
    first.advance(60, max_steps=3)
    ck = first.checkpoint()
    buf = __import__("io").BytesIO()
    torch.save(ck, buf)
    buf.seek(0)
    second = trainer()
    second.resume(torch.load(buf, weights_only=True))  # no pickle of arbitrary objects
    assert second.step == 3
    second.advance(60, max_steps=6)
    for a, b in zip(whole.lm.net.parameters(), second.lm.net.parameters()):
        assert torch.equal(a, b)
    other = Trainer(NeuralLM.create(tiny_tok, config=TINY, seed=0), tiny_lines[:200],
                    tiny_lines[200:], **{**opts, "lr": 1e-2})
    with pytest.raises(InputError, match="other training options"):
        other.resume(ck)


def test_hybrid_without_gain_says_so(tiny_model, tiny_lines):
    said = []
    lm = train_residual(tiny_model, tiny_lines[:200], tiny_lines[200:], config=TINY, seed=0,
                        **{**FAST, "max_steps": 3, "lr": 30.0, "warmup": 1, "crossfit": 0,
                           "log": said.append})  # a rate that can only spoil the base
    assert lm.training["improved"] is False and lm.training["best_step"] == 0
    assert any("NO GAIN" in m and "explicit base" in m for m in said)
    seqs = tiny_model.encode_lines(tiny_lines[:20])
    assert np.allclose(lm.log_proba_ids(seqs)[0], tiny_model.log_proba_ids(seqs)[0], atol=1e-4)


def test_residual_defaults_improve_on_the_base(tiny_model, tiny_lines):
    from lmkit.neural.fit import default_schedule
    assert default_schedule(residual=True)[0] < default_schedule(residual=False)[0]
    lm = train_residual(tiny_model, tiny_lines[:200], tiny_lines[200:], config=TINY, seed=0,
                        **{**FAST, "max_steps": 30, "eval_every": 0.0})
    t = lm.training
    assert (t["lr"], t["warmup"]) == default_schedule(residual=True)
    assert t["improved"] and t["best_valid_ppl"] < t["start_valid_ppl"]


def test_crossfit_fold_models_are_cached_and_checked(tiny_model, tiny_lines, tmp_path):
    from lmkit.neural.crossfit import fold_models
    lines = tiny_lines[:120]
    built = fold_models(tiny_model, lines, 2, cache=tmp_path / "folds")
    again = fold_models(tiny_model, lines, 2, cache=tmp_path / "folds")
    seq = tiny_model.encode_lines(lines[:3])
    for a, b in zip(built, again):
        assert np.array_equal(a.log_proba_ids(seq)[0], b.log_proba_ids(seq)[0])
    with pytest.raises(InputError, match="another base, corpus, k or seed"):
        fold_models(tiny_model, lines[:100], 2, cache=tmp_path / "folds")


# ---- the budget schedule ---------------------------------------------------------------------
def test_lr_factor_warms_up_then_decays_to_the_budget_end():
    from lmkit.neural.fit import FINAL_FRACTION, lr_factor
    assert lr_factor(10, 0.0, 100) == pytest.approx(0.1)  # 10 of 100 warm-up steps
    # the warm-up stays in steps, the decay follows the budget
    assert lr_factor(10, 0.5, 100) == pytest.approx(0.055)
    assert lr_factor(1000, 0.5, 100) == pytest.approx(0.55)
    assert lr_factor(5000, 1.0, 100) == pytest.approx(FINAL_FRACTION)
    assert lr_factor(5000, 1.7, 100) == pytest.approx(FINAL_FRACTION)  # past the end: the floor
    rates = [lr_factor(s, s / 1000, 100) for s in range(1, 1001)]
    top = int(np.argmax(rates))
    assert 0 < top < 100 and all(a >= b for a, b in zip(rates[top:], rates[top + 1:]))
    # without a budget: the anytime schedule of the multi-mark benchmark runs
    assert lr_factor(400, None, 100) == pytest.approx(0.5)


def test_fit_decays_the_rate_over_the_budget_it_is_given(tiny_tok, tiny_lines):
    from lmkit.neural.fit import FINAL_FRACTION, Trainer
    lm = NeuralLM.create(tiny_tok, config=TINY, seed=0)
    tr = Trainer(lm, tiny_lines[:200], tiny_lines[200:], batch_size=16, eval_every=1e9,
                 valid_tokens=200, lr=1e-2, warmup=1, horizon=(1e6, 10), log=lambda m: None)
    seen = []
    for _ in range(10):
        tr.advance(1e6, max_steps=tr.step + 1)
        seen.append(tr.opt.param_groups[0]["lr"])
    assert max(seen) == pytest.approx(1e-2, rel=0.05) and seen.index(max(seen)) <= 1
    assert seen[-1] < 0.2e-2 and seen[-1] >= FINAL_FRACTION * 1e-2 * 0.999
    assert tr.options["schedule"] == "budget"
    with pytest.raises(InputError, match="schedule must be"):
        train_transformer(tiny_tok, tiny_lines[:200], tiny_lines[200:], config=TINY,
                          schedule="cosine", **FAST)


# ---- the mixed hybrid (the default of --solver residual) -------------------------------------
@pytest.fixture(scope="module")
def weak_base(tmp_path_factory, tiny_lines, tiny_tok_file):
    """An explicit model of *reversed* lines (same tokenizer): a poor model of the real lines,
    so a network trained on them must earn a large mixture weight."""
    from lmkit.train import train
    p = tmp_path_factory.mktemp("weak") / "rev.txt"
    p.write_text("\n".join(x[::-1] for x in tiny_lines) + "\n", encoding="utf-8")
    return train(input=[str(p)], tokenizer=str(tiny_tok_file), context=1, lambda_tokens=2000,
                 verbose=False)


def test_mixed_hybrid_keeps_the_best_mixture_and_fits_its_weight(weak_base, tiny_lines):
    from lmkit.interpolate import fit_weights
    from lmkit.mixture import MixtureModel
    from lmkit.neural import train_mixed
    said = []
    mix = train_mixed(weak_base, tiny_lines[:200], tiny_lines[200:], config=TINY, seed=0,
                      **{**FAST, "max_steps": 20, "lr": 1e-2, "eval_every": 0.0,
                         "log": said.append})
    assert isinstance(mix, MixtureModel) and mix.models[0] is weak_base
    net, t = mix.models[1], mix.models[1].training
    assert mix.info["improved"] and t["improved"] and t["mix"]
    assert t["best_valid_ppl"] < t["base_valid_ppl"] and 0 < t["mix_weight"] < 1
    # the kept checkpoint is the one whose mixture was best on valid, not the last one
    assert t["best_valid_ppl"] == min(h["valid_ppl"] for h in t["history"])
    assert all(0 <= h["mix_weight"] <= 1 for h in t["history"])
    # the final weights are EM's on all the valid lines: the same as `lmkit interpolate`'s
    seqs = weak_base.encode_lines(tiny_lines[200:])
    lps = np.stack([weak_base.log_proba_ids(seqs)[0], net.log_proba_ids(seqs)[0]])
    assert np.allclose(mix.weights, fit_weights(lps)[0], atol=1e-9)
    r = mix.score(tiny_lines[200:])
    # EM's mixture fits valid no worse than either model alone
    assert r["perplexity"] <= min(weak_base.score(tiny_lines[200:])["perplexity"],
                                  net.score(tiny_lines[200:])["perplexity"]) * (1 + 1e-6)
    assert any("best valid ppl mixed" in m for m in said)


def test_mixed_hybrid_without_gain_says_so(weak_base, tiny_model, tiny_lines):
    from lmkit.neural import train_mixed
    said = []
    mix = train_mixed(tiny_model, tiny_lines[:200], tiny_lines[200:], config=TINY, seed=0,
                      **{**FAST, "max_steps": 3, "lr": 30.0, "warmup": 1,
                         "log": said.append})  # a rate that can only spoil the network
    assert mix.info["improved"] is False and mix.weights.tolist() == [1.0, 0.0]
    assert any("NO GAIN" in m and "explicit model" in m for m in said)
    assert "NO GAIN" in mix.describe()
    seqs = tiny_model.encode_lines(tiny_lines[:20])
    assert np.allclose(mix.log_proba_ids(seqs)[0], tiny_model.log_proba_ids(seqs)[0])


def test_cli_residual_default_is_the_mixture_every_verb_reads(tmp_path, tiny_corpus_file,
                                                             tiny_tok_file, capsys):
    from lmkit.cli import main
    src = ["--input", str(tiny_corpus_file)]
    out = tmp_path / "mix"
    assert main(["train", *src, "--tokenizer", str(tiny_tok_file), "--context", "2",
                 "--solver", "residual", "--max-seconds", "2", "--output", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "mixture" and m["info"]["hybrid"] == "mix" and len(m["weights"]) == 2
    assert is_neural_folder(out / "components" / "1")
    assert json.loads((out / "components/1/manifest.json").read_text())["training"]["init"] \
        == "explicit"
    assert main(["eval", str(out), *src, "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["tokens"] > 0 and math.isfinite(r["perplexity"])
    assert main(["generate", str(out), "--max-tokens", "5", "--seed", "1"]) == 0
    assert main(["next", str(out), "--context", "the"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("lines", [5, 19, 1])
def test_cli_neural_on_too_few_lines_says_why_before_training(tmp_path, tiny_lines,
                                                              tiny_tok_file, capsys, lines):
    """Under 20 lines (or one huge line) no held-out lines are carved: one line naming the
    fix, before an explicit base is trained (it said only "needs non-empty train and valid
    lines", after training the base)."""
    from lmkit.cli import main
    text = tmp_path / "few.txt"
    body = tiny_lines[:lines] if lines > 1 else [" ".join(tiny_lines[:200])]
    text.write_text("\n".join(body) + "\n", encoding="utf-8")
    code = main(["train", "--input", str(text), "--tokenizer", str(tiny_tok_file), "--solver",
                 "residual", "--max-seconds", "2", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "[1/2]" not in err
    assert "fewer than 20 non-blank lines" in err and "give at least 20 lines" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.txt"]


@pytest.mark.parametrize("args, says", [
    (["--solver", "residual", "--max-seconds", "2", "--crossfit", "2"],
     "--crossfit is for --hybrid residual"),
    (["--solver", "residual", "--max-seconds", "2", "--no-learn-scale"],
     "--learn-scale is for --hybrid residual"),
    (["--solver", "residual", "--hybrid", "residual", "--init", "random", "--max-seconds", "2"],
     "--init is for --hybrid mix"),
    (["--solver", "transformer", "--max-seconds", "2", "--base", "m"],
     "--base is for --solver residual"),
    (["--solver", "transformer", "--max-seconds", "2", "--hybrid", "residual"],
     "--hybrid is for --solver residual"),
    (["--warmup", "5"], "--warmup is for --solver residual or transformer"),
])
def test_neural_options_off_their_solver_are_refused(tmp_path, tiny_corpus_file, capsys, args,
                                                     says):
    from lmkit.cli import main
    assert main(["train", "--input", str(tiny_corpus_file), *args,
                 "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not __import__("shutil").which("cc") and not __import__("shutil").which("gcc"),
                    reason="torch.compile needs a C compiler at run time (none on PATH)")
def test_compiled_training_steps_equal_eager_ones(tiny_tok, tiny_lines):
    from lmkit.neural.fit import Trainer
    opts = {"seed": 0, "batch_size": 16, "eval_every": 1e9, "valid_tokens": 200, "lr": 3e-3,
            "warmup": 1, "log": lambda m: None}
    runs = []
    for compile in (False, True):
        tr = Trainer(NeuralLM.create(tiny_tok, config=TINY, seed=0), tiny_lines[:200],
                     tiny_lines[200:], compile=compile, **opts)
        tr.advance(1e6, max_steps=3)
        runs.append(tr)
    assert runs[1].options["compile"] and runs[1].hidden is not None
    for a, b in zip(runs[0].lm.net.parameters(), runs[1].lm.net.parameters()):
        assert torch.allclose(a, b, atol=1e-4)
    assert [h["valid_ppl"] for h in runs[0].history] == pytest.approx(
        [h["valid_ppl"] for h in runs[1].history], rel=1e-4)


def test_training_leaves_no_empty_inductor_folder_in_tmpdir(tmp_path, tiny_corpus_file,
                                                           tiny_tok_file):
    """torch makes $TMPDIR/torchinductor_$USER when training imports torch._dynamo; a run that
    did not find it there removes it at exit when it is still empty."""
    import os
    import subprocess
    import sys
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["TMPDIR"] = str(tmp)
    r = subprocess.run([sys.executable, "-m", "lmkit.cli", "train", "--input",
                        str(tiny_corpus_file), "--tokenizer", str(tiny_tok_file), "--solver",
                        "transformer", "--max-seconds", "1", "--output", str(tmp_path / "net")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "net" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp.iterdir()) == []
