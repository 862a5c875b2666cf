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


# ---- the one fast scorer (scoring.SparseScorer) against the reference sparse_log_proba --------
def _reference_next_logp(params, rows):
    """Full distributions from the reference: the union pattern + ``union_log_z``."""
    from lmkit.scoring import sparse_scores
    from lmkit.sparse import union_log_z
    n = len(rows[0])
    s = sparse_scores(params, rows, n)
    logp = np.broadcast_to(np.log(params.q), (n, params.vocab_size)).copy()
    logp[np.repeat(np.arange(n), np.diff(s.indptr)), s.indices] += s.data
    return logp - union_log_z(params.q, s)[:, None]


def _models():
    """Window, pure MKN, MKN + windows (tuned lambdas) and rich parameters on one tiny corpus."""
    from lmkit.ngram.mkn import solve_ngram
    from lmkit.rich import base_groups, cluster_groups, fit_rich, merge_groups
    from lmkit.features import Suffix
    train, held = seqs_of(300, 3), seqs_of(60, 4)
    win = solve_explicit(count_chunk(train, V, GROUPS, BOS, EOS))
    win = win.with_lambdas(np.array([0.8, 0.35, 0.15]))
    mkn = solve_ngram(count_chunk(train, V, [Suffix(1), Suffix(2), Suffix(3)], BOS, EOS))
    mixed = solve_ngram(count_chunk(train, V, [Suffix(1), Suffix(2), Window(1)], BOS, EOS))
    mixed = mixed.with_lambdas(np.array([0.9, 1.1, 0.4]))
    counts = count_chunk(train, V, base_groups(order=3, context=2, skips=((1, 1, 1),)), BOS, EOS)
    counts = merge_groups(counts, count_chunk(train, V, cluster_groups(np.arange(V) % 4, ((3, 1),)),
                                              BOS, EOS))
    rich = fit_rich(counts, held, BOS, EOS)
    return {"window": win, "mkn": mkn, "mixed": mixed, "rich": rich}


MODELS = _models()


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def every_path(request, monkeypatch):
    """Run a test on the compiled path (numba, forced for any size) and on the numpy path."""
    from lmkit import features, scoring
    if request.param and scoring._compiled() is None:
        pytest.skip("numba is not installed: only the numpy path exists")
    monkeypatch.setattr(scoring, "USE_COMPILED", request.param)
    monkeypatch.setattr(scoring, "COMPILED_MIN_POSITIONS", 1)
    monkeypatch.setattr(scoring, "COMPILED_MIN_DISTRIBUTIONS", 1)
    # the rows too: keyed groups searched by the compiled radix sort + merge (fastkeys)
    monkeypatch.setattr(features, "USE_COMPILED", request.param)
    monkeypatch.setattr(features, "COMPILED_MIN_QUERIES", 1)
    return request.param


def _window_scaled(top):
    """The window model with each group's weight set so that its largest lambda * S is ``top``."""
    p = MODELS["window"]
    return p.with_lambdas(np.array([top / S.data.max() for S in p.S]))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_scorer_path_equals_the_reference(name, every_path):
    from lmkit.params import SparseParams
    from lmkit.scoring import log_proba, next_logp_batch
    params = MODELS[name]
    params = SparseParams(params.groups, params.q, params.S, params.keys, params.lambdas,
                          params.info)  # a fresh object: no tables cached by another path
    test = seqs_of(800, 5, hi=V)  # unseen tokens too; > 4096 positions: a history order
    rows, targets, _, order = context_rows(params.groups, params.keys, test, V, BOS, EOS,
                                           with_order=True)
    assert len(targets) > 4096 and (name == "window" or order is not None)
    want = sparse_log_proba(params, rows, targets)
    for o in (None, order):
        assert np.abs(log_proba(params, rows, targets, o) - want).max() <= 1e-9
    k = [r[:300] for r in rows]
    got = next_logp_batch(params, k)
    assert np.abs(got - _reference_next_logp(params, k)).max() <= 1e-9
    assert np.abs(got[np.arange(300), targets[:300]] - want[:300]).max() <= 1e-9
    one = next_logp(params, [r[7:8] for r in rows])
    assert np.abs(one - got[7]).max() <= 1e-9


@pytest.mark.parametrize("top", [300.0, 800.0], ids=["product", "factor"])
def test_scorer_falls_back_to_log_space_when_products_overflow(every_path, top):
    """Weights so large that a product of factors (300: each exp(lambda S) is finite) or a
    factor itself (800) overflows: every path still returns the finite
    log-probabilities of a dense max-shifted log-softmax."""
    from lmkit.scoring import log_proba, next_logp_batch
    params = _window_scaled(top)
    test = seqs_of(200, 6)
    rows, targets, _ = context_rows(params.groups, params.keys, test, V, BOS, EOS)
    logits = np.log(params.q) + sum(lam * S.toarray()[r] for S, r, lam in
                                    zip(params.S, rows, params.lambdas))
    dense = log_softmax(logits)
    want = dense[np.arange(len(targets)), targets]
    assert np.abs(log_proba(params, rows, targets) - want).max() <= 1e-9
    assert np.abs(next_logp_batch(params, rows) - dense).max() <= 1e-9


def test_model_verbs_use_the_scorer(tiny_tok, tiny_lines, every_path):
    """LanguageModel.log_proba_ids / next_logp / next_log_proba_batch / top_next of a rich model
    and a mixture of two models equal the reference scorer's numbers."""
    from lmkit.interpolate import MixtureModel
    from lmkit.model import LanguageModel
    from lmkit.rich import count_rich, fit_rich
    tok = tiny_tok
    seqs = tok.encode_batch(tiny_lines)
    counts, _ = count_rich([seqs[:250]], tok.vocab_size, tok.bos_id, tok.eos_id, order=3,
                           context=2, skips=((1, 1, 1),), clusterings=((8, ((2, 0), (3, 1))),))
    model = LanguageModel(tok, fit_rich(counts, seqs[250:], tok.bos_id, tok.eos_id))
    p = model.params
    test = seqs[:200]
    rows, targets, _ = context_rows(p.groups, p.keys, test, tok.vocab_size, tok.bos_id, tok.eos_id)
    want = sparse_log_proba(p, rows, targets)
    got, _ = model.log_proba_ids(test)
    assert np.abs(got - want).max() <= 1e-9
    ctx = [list(s[:3]) for s in test[:20]]
    per_ctx = [next_rows(p.groups, p.keys, c, tok.vocab_size, tok.bos_id) for c in ctx]
    ref = _reference_next_logp(p, [np.concatenate([r[g] for r in per_ctx])
                                   for g in range(len(p.groups))])
    assert np.abs(model.next_log_proba_batch(ctx) - ref).max() <= 1e-9
    assert np.abs(model.next_logp(ctx[3]) - ref[3]).max() <= 1e-9
    best = np.argsort(-np.where(np.arange(tok.vocab_size) == tok.bos_id, -np.inf, ref[3]),
                      kind="stable")[:5]
    assert [t[0] for t in model.top_next(ctx[3], 5)] == [tok.id_to_piece(int(i)) for i in best]
    other = LanguageModel(tok, solve_explicit(count_chunk(seqs[:250], tok.vocab_size,
                                                          GROUPS, tok.bos_id, tok.eos_id)))
    mix = MixtureModel([model, other], [0.7, 0.3])
    o_rows, o_t, _ = context_rows(GROUPS, other.params.keys, test, tok.vocab_size, tok.bos_id,
                                  tok.eos_id)
    o_want = sparse_log_proba(other.params, o_rows, o_t)
    mix_want = np.logaddexp(np.log(0.7) + want, np.log(0.3) + o_want)
    assert np.abs(mix.log_proba_ids(test)[0] - mix_want).max() <= 1e-9


@pytest.mark.parametrize("name", list(MODELS))
def test_total_nll_equals_the_reference_to_1e9_relative(name, every_path):
    """The number ``lmkit eval`` reports: the total nll over many positions (several compiled
    blocks, history order) equals the reference scorer's to 1e-9 relative."""
    from lmkit.params import SparseParams
    from lmkit.scoring import log_proba
    p = MODELS[name]
    p = SparseParams(p.groups, p.q, p.S, p.keys, p.lambdas, p.info)
    test = seqs_of(2500, 8, hi=V)
    rows, targets, _, order = context_rows(p.groups, p.keys, test, V, BOS, EOS, with_order=True)
    assert len(targets) > 2 * 2048  # more than one block of fastscore.BLOCK positions
    want = -sparse_log_proba(p, rows, targets).sum()
    got = -log_proba(p, rows, targets, order).sum()
    assert abs(got - want) <= 1e-9 * abs(want)


def test_compiled_scorer_takes_int64_indices_and_kept_levels(every_path):
    """Parameters with int64 indices (more than 2**31 stored entries, or an int64 folder) take
    the int64 variant of the compiled loop; the kept-product levels (0, 1, 2) change
    only the speed: every assignment gives the reference numbers."""
    import scipy.sparse as sp
    from lmkit import scoring
    from lmkit.params import SparseParams
    p = MODELS["rich"]
    S64 = [S.copy() for S in p.S]
    for S in S64:  # SciPy's constructor would narrow them back to int32
        S.indices, S.indptr = S.indices.astype(np.int64), S.indptr.astype(np.int64)
    wide = SparseParams(p.groups, p.q, S64, p.keys, p.lambdas, p.info)
    assert scoring.score_tables(wide)[1][0].dtype == np.int64
    test = seqs_of(800, 9, hi=V)
    rows, targets, _, order = context_rows(p.groups, p.keys, test, V, BOS, EOS, with_order=True)
    want = sparse_log_proba(p, rows, targets)
    assert np.abs(scoring.log_proba(wide, rows, targets, order) - want).max() <= 1e-9
    scorer = scoring.sparse_scorer(p)
    if scorer.kernel("union_products") is None:
        return
    r = scoring._rows_array(rows, scorer.active, order)
    G = len(r)
    for levels in (np.zeros(G), np.ones(G), np.full(G, 2), np.arange(G) % 3):
        term, z = np.empty(len(targets)), np.empty(len(targets))
        scorer.union_products(r, levels.astype(np.int8), targets.take(order), term, z)
        got = np.empty(len(targets))
        got[order] = np.log(term) - np.log(z)
        assert np.abs(got - want).max() <= 1e-9


def _as_stored(p, float32: bool):
    """``p`` as a loaded compact folder holds it: a ``LazyCSRs`` of uint16 columns and (with
    ``float32``) float32 values, widened only when a group is read as a CSR."""
    from lmkit.params import LazyCSRs, SparseParams, StoredCSR
    S = LazyCSRs([StoredCSR(S.data.astype(np.float32) if float32 else S.data,
                            S.indices.astype(np.uint16), S.indptr, S.shape) for S in p.S])
    return SparseParams(p.groups, p.q, S, p.keys, p.lambdas, p.info)


@pytest.mark.parametrize("float32", [True, False], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(MODELS))
def test_stored_dtypes_score_as_their_widened_csr(name, float32, every_path):
    """A loaded folder's weights stay uint16 / float32 (``params.LazyCSRs``): the scorer reads
    them as stored (compiled loop with uint16 columns, numpy scatter of ``next``) and gives the
    reference scorer's numbers on the widened CSRs, position by position and in total."""
    from lmkit import scoring
    from lmkit.params import LazyCSRs
    from lmkit.scoring import log_proba, next_logp_batch
    p = _as_stored(MODELS[name], float32)
    test = seqs_of(2500, 10, hi=V)
    rows, targets, _, order = context_rows(p.groups, p.keys, test, V, BOS, EOS, with_order=True)
    got = log_proba(p, rows, targets, order)
    if every_path:  # the compiled loop read the stored arrays: nothing was widened
        from lmkit.params import StoredCSR
        assert all(isinstance(x, StoredCSR) for x in p.S._items)
        assert scoring.score_tables(p)[1][0].dtype == np.uint16
    ref = _as_stored(MODELS[name], float32)
    want = sparse_log_proba(ref, rows, targets)  # reads ref.S[g]: the widened float64 CSRs
    assert isinstance(ref.S, LazyCSRs) and ref.S[0].data.dtype == np.float64
    assert np.abs(got - want).max() <= 1e-9
    assert abs(got.sum() - want.sum()) <= 1e-9 * abs(want.sum())
    k = [r[:300] for r in rows]
    assert np.abs(next_logp_batch(p, k) - _reference_next_logp(ref, k)).max() <= 1e-9
    one = next_logp(p, [r[7:8] for r in rows])
    assert np.abs(one - _reference_next_logp(ref, [r[7:8] for r in rows])[0]).max() <= 1e-9


def test_an_order_that_is_not_a_permutation_is_refused(every_path):
    """The compiled path walks the positions in ``order``: a wrong length or an index out of
    range is refused with one line (the numpy path ignores the order)."""
    from lmkit.scoring import log_proba
    p = MODELS["rich"]
    rows, targets, _, order = context_rows(p.groups, p.keys, seqs_of(800, 11, hi=V), V, BOS,
                                           EOS, with_order=True)
    for bad in (order[:-1], np.where(order == 0, len(order), order), order - 1):
        if every_path:
            with pytest.raises(ValueError, match="permutation"):
                log_proba(p, rows, targets, bad)
        else:
            assert np.isfinite(log_proba(p, rows, targets, bad)).all()
