import math
import warnings

import numpy as np
import pytest

from lmkit import gradient as G
from lmkit.config import GradientConfig, make
from lmkit.counts import count_chunk
from lmkit.errors import InputError, MemoryLimitError
from lmkit.explicit import solve_explicit
from lmkit.features import Window
from lmkit.params import DenseParams
from lmkit.scoring import dense_log_proba, sparse_log_proba

V, BOS, EOS = 8, 1, 2
# a tiny corpus over tokens 3..7: "3 4" and "4 5" are frequent bigrams
SEQS = [[3, 4, 5], [3, 4, 5, 6], [4, 5, 3], [7, 3, 4], [5, 6, 7, 3, 4], [6, 4, 5]]


def data(groups, seqs=SEQS):
    return G.rows_of(groups, seqs, V, BOS, EOS)


def explicit(groups, discount=None, lambdas=None):
    p = solve_explicit(count_chunk(SEQS, V, groups, BOS, EOS), discount=discount)
    if lambdas is not None:
        p = p.with_lambdas(lambdas)
    return p


def mean_loss(W, b, rows, targets):
    return G.batch_gradient(W, b, rows, targets)[0] / len(targets)


def test_batch_gradient_matches_finite_differences():
    groups = [Window(1), Window(2)]
    rows, targets = data(groups)
    W, b = G.init_params("random", groups, V, seed=3, random_scale=0.5, dtype=np.float64)
    loss, grads, gb = G.batch_gradient(W, b, rows, targets)
    eps = 1e-6
    for g, (uniq, gr) in enumerate(grads):
        assert np.array_equal(uniq, np.unique(rows[g]))  # only rows the batch touches
        for i, j in [(0, 3), (1, 4), (len(uniq) - 1, 7)]:
            r = uniq[i]
            Wp = [w.copy() for w in W]
            Wm = [w.copy() for w in W]
            Wp[g][r, j] += eps
            Wm[g][r, j] -= eps
            fd = (mean_loss(Wp, b, rows, targets) - mean_loss(Wm, b, rows, targets)) / (2 * eps)
            assert abs(fd - gr[i, j]) < 1e-7
    for j in range(V):
        bp, bm = b.copy(), b.copy()
        bp[j] += eps
        bm[j] -= eps
        fd = (mean_loss(W, bp, rows, targets) - mean_loss(W, bm, rows, targets)) / (2 * eps)
        assert abs(fd - gb[j]) < 1e-7


def test_loss_hand_checked_at_zero():
    rows, targets = data([Window(1)])
    W, b = G.init_params("zeros", [Window(1)], V)
    loss, _, gb = G.batch_gradient(W, b, rows, targets)
    assert loss == pytest.approx(len(targets) * math.log(V))  # uniform over V = 8 tokens
    # mean of (P - Y): 1/V minus each token's target frequency
    freq = np.bincount(targets, minlength=V) / len(targets)
    assert np.allclose(gb, 1 / V - freq, atol=1e-7)


@pytest.mark.filterwarnings("ignore::lmkit.gradient.ConvergenceWarning")
def test_one_hot_gradient_descent_converges_to_explicit_with_vanishing_discount():
    groups = [Window(1)]
    rows, targets = data(groups)
    params = explicit(groups, discount=1e-6)
    W, b = G.init_params("zeros", groups, V, dtype=np.float64)
    W, b, curve, info = G.fit_dense(W, b, rows, targets, rows, targets, epochs=3000,
                                    batch_size=len(targets), lr=0.05, patience=None, progress=False)
    seen = np.unique(rows[0])  # contexts that occur: compare their next-token distributions
    dense = DenseParams(groups, W, b, [None])
    for i in seen:
        r = [np.full(V, i)]
        p_grad = np.exp(dense_log_proba(dense, r, np.arange(V)))
        p_exp = np.exp(sparse_log_proba(params, r, np.arange(V)))
        assert np.abs(p_grad - p_exp).max() < 1e-3
    assert curve[-1]["valid_ppl"] < curve[0]["valid_ppl"]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_warm_start_reproduces_explicit_perplexity_at_step_0(dtype, tol):
    groups = [Window(1), Window(2), Window(3)]
    params = explicit(groups, lambdas=[0.8, 0.35, 0.1])
    held = [[3, 4, 5, 6, 7], [7, 6, 5], [4, 4, 4, 3]]  # includes pairs never seen in training
    vrows, vtargets = data(groups, held)
    ppl_exp = math.exp(-sparse_log_proba(params, vrows, vtargets).mean())
    W, b = G.init_params("explicit", groups, V, explicit=params, dtype=dtype)
    ppl_dense = math.exp(-dense_log_proba(DenseParams(groups, W, b, [None] * 3), vrows, vtargets).mean())
    assert ppl_dense == pytest.approx(ppl_exp, rel=tol)
    rows, targets = data(groups)
    _, _, curve, _ = G.fit_dense(W, b, rows, targets, vrows, vtargets, epochs=1, lr=1e-3,
                                 progress=False)
    assert curve[0]["step"] == 0 and curve[0]["valid_ppl"] == pytest.approx(ppl_exp, rel=tol)


def run(seed, init="random", **kw):
    groups = [Window(1), Window(2)]
    rows, targets = data(groups)
    W, b = G.init_params(init, groups, V, seed=seed, explicit=explicit(groups))
    opts = dict(epochs=3, batch_size=4, lr=0.01, seed=seed, progress=False)
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", G.ConvergenceWarning)
        return G.fit_dense(W, b, rows, targets, rows, targets, **opts)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_same_seed_same_weights(optimizer):
    a, b_ = run(0, optimizer=optimizer), run(0, optimizer=optimizer)
    c = run(1, optimizer=optimizer)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b_[0])) and np.array_equal(a[1], b_[1])
    assert not np.array_equal(a[0][0], c[0][0])


def test_early_stopping_keeps_best_on_valid_weights():
    groups = [Window(1), Window(2)]
    W0, b0 = G.init_params("explicit", groups, V, explicit=explicit(groups))
    # plain SGD with a huge rate makes things worse than the smoothed start on held-out text
    W, b, curve, info = run(0, init="explicit", optimizer="sgd", lr=50.0, epochs=50, patience=2,
                            batch_size=2)
    ppls = [r["valid_ppl"] for r in curve]
    assert info["stopped"] == "patience"
    assert info["best_valid_ppl"] == min(ppls)
    rows, targets = data(groups)
    assert G.valid_perplexity(W, b, rows, targets) == pytest.approx(min(ppls), rel=1e-6)
    best = int(np.argmin(ppls))
    assert ppls[-1] > ppls[best]  # it did get worse, and those later weights were not kept
    if best == 0:
        assert all(np.array_equal(x, y) for x, y in zip(W, W0)) and np.array_equal(b, b0)


def test_warns_when_budget_stops_it_while_improving():
    groups = [Window(1)]
    rows, targets = data(groups)
    W, b = G.init_params("zeros", groups, V)
    with pytest.warns(G.ConvergenceWarning, match="raise epochs"):
        G.fit_dense(W, b, rows, targets, rows, targets, epochs=1, lr=0.01, progress=False)


@pytest.mark.parametrize("kw,match", [
    ({"lr": 0}, r"lr must be > 0.0, got 0"),
    ({"lr": -0.1}, r"lr must be > 0.0, got -0.1"),
    ({"lr": float("nan")}, r"lr must be a finite number, got nan"),
    ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
    ({"optimizer": "rmsprop"}, r"optimizer must be one of adam, sgd"),
    ({"init": "zeros", "solver": "warm"}, r"solver warm starts from the explicit solution"),
    ({"init": "explicit", "solver": "explicit"}, r"init explicit needs an iterative solver"),
    ({"init": "random", "solver": "explicit"}, r"init random needs an iterative solver"),
    ({"patience": 0}, r"patience must be >= 1"),
    ({"pateince": 3}, r"unknown option 'pateince'; did you mean 'patience'\?"),
])
def test_bad_options_are_refused(kw, match):
    kw.setdefault("solver", "gradient")
    with pytest.raises(InputError, match=match):
        make(GradientConfig, kw)


def test_defaults_per_solver():
    """Each solver gets the init and learning rate that work for it (warm: a small step)."""
    assert make(GradientConfig, {"solver": "gradient"}).effective_init == "zeros"
    assert make(GradientConfig, {"solver": "warm"}).effective_init == "explicit"
    assert make(GradientConfig, {"solver": "explicit"}).effective_init is None
    assert make(GradientConfig, {"solver": "warm"}).effective_lr == 3e-4
    assert make(GradientConfig, {"solver": "gradient"}).effective_lr == 3e-3
    assert make(GradientConfig, {"solver": "warm", "lr": 1e-2}).effective_lr == 1e-2


def test_model_too_big_for_memory_is_refused_with_bytes():
    need = G.dense_bytes(3, 4096, 1024, "adam")
    assert need == (3 * 4096 ** 2 + 4096) * 4 * 4 + 4 * 1024 * 4096 * 4
    with pytest.raises(MemoryLimitError, match=rf"needs .* \({need} bytes\) but the memory limit is "
                                               r"1\.0 MiB; lower vocab_size"):
        G.check_dense_memory(3, 4096, 1024, "adam", max_memory="1M")
    assert G.dense_bytes(1, 4, 2, "adam") == 448  # the docstring example


def test_cli_refuses_bad_lr_before_counting(tmp_path, capsys):
    from lmkit.cli import main
    p = tmp_path / "c.txt"
    p.write_text("a b c\n")
    assert main(["train", "--input", str(p), "--output", str(tmp_path / "m"), "--solver",
                 "gradient", "--lr", "0"]) == 2
    assert "--lr must be > 0.0, got 0.0" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::lmkit.gradient.ConvergenceWarning")
def test_trained_dense_model_saves_loads_and_scores_like_itself(tiny_corpus_file, tiny_tok_file,
                                                                 tiny_lines, tmp_path):
    from lmkit.model import LanguageModel
    from lmkit.train import train
    m = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), context=2,
              solver="warm", epochs=1, lr=1e-3, batch_size=256, lambda_tokens=2000)
    assert m.kind == "dense" and m.params.info["init"] == "explicit"
    path = m.save(tmp_path / "dense")
    m2 = LanguageModel.load(path)
    assert m2.kind == "dense"
    assert m2.perplexity(tiny_lines[:20]) == pytest.approx(m.perplexity(tiny_lines[:20]), rel=1e-12)
    lp = m2.next_logp([])
    assert np.exp(lp).sum() == pytest.approx(1.0)
    assert m2.sample("The", max_tokens=5, seed=0) == m.sample("The", max_tokens=5, seed=0)
