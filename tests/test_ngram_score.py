"""lmkit.ngram.score: the compiled MKN trie walk gives today's exact scorer's numbers.

Reference: ``ngram.tables.mkn_log_proba`` over ``features.context_rows`` (the numpy route, also what
runs without numba), on MKN models of orders 2-6, pruned ones, patterns that are not nested
(as ARPA imports can be), sequences with tokens never seen and histories never seen; and
KenLM's ``full_scores`` on the exported ARPA.
"""
import math

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("numba")

from lmkit import scoring  # noqa: E402
from lmkit.counts import count_chunk  # noqa: E402
from lmkit.errors import InputError  # noqa: E402
from lmkit.features import context_rows, make_groups  # noqa: E402
from lmkit.ngram.mkn import solve_ngram  # noqa: E402
from lmkit.ngram.tables import loggamma_tables, mkn_log_proba  # noqa: E402
from lmkit.ngram import score as ngram_score  # noqa: E402
from lmkit.ngram.score import MknWalker, walker  # noqa: E402

BOS, EOS = 1, 2


def corpus(n, V, seed, lo=3, hi=None):
    """n Zipf-ish sequences over tokens lo..hi-1 (hi = V: every real token)."""
    rng = np.random.default_rng(seed)
    hi = V if hi is None else hi
    p = 1.0 / np.arange(1, hi - lo + 1)
    p /= p.sum()
    return [list(rng.choice(np.arange(lo, hi), size=rng.integers(0, 12), p=p)) for _ in range(n)]


def fit(order, V=14, prune=None, seed=0):
    groups = make_groups(0, order)
    seqs = corpus(300, V, seed, hi=V - 3)  # the last 3 tokens (and <unk> 0) are never seen
    return solve_ngram(count_chunk(seqs, V, groups, BOS, EOS), prune=prune), groups


def reference(params, groups, seqs, loggammas):
    rows, targets, _, order = context_rows(groups, params.keys, seqs, params.vocab_size, BOS,
                                           EOS, with_order=True)
    return mkn_log_proba(params, rows, targets, loggammas, order)


def sample_sequences(V=14):
    """Seen text, unseen tokens (0 = <unk>, V-3..V-1), random (mostly unseen) histories,
    empty sequences, long ones (past the order), and 4096+ positions (history_order used)."""
    seqs = corpus(60, V, 0, hi=V - 3) + corpus(60, V, 7, lo=0) + [[], [], [0], [V - 1] * 9]
    return seqs + corpus(500, V, 3, hi=V - 3) + [list(range(3, V)) * 3]


@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("prune", [None, "prune"])
def test_walk_equals_mkn_log_proba(order, prune):
    params, groups = fit(order, prune=[0] + [1] * (order - 1) if prune else None)
    lg = loggamma_tables(params)
    seqs = sample_sequences()
    want = reference(params, groups, seqs, lg)
    got = MknWalker(params, lg).log_proba(seqs, BOS, EOS)
    assert got.shape == want.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("float32", [True, False], ids=["float32", "float64"])
def test_walk_reads_a_loaded_folders_groups_as_stored(float32):
    """A loaded folder's groups (``params.LazyCSRs``: here uint16 columns, float32 or float64
    values, as a compact folder stores them) go into the walk's tables and the numpy route's
    searches as they are, never widened to SciPy CSRs (so ``lmkit score`` of an MKN folder
    imports no SciPy), and give the numbers of the walk over the widened CSRs, to the bit."""
    from lmkit.params import LazyCSRs, SparseParams, StoredCSR
    params, groups = fit(5)
    lg = loggamma_tables(params)

    def as_folder():
        stored = LazyCSRs([StoredCSR(S.data.astype(np.float32) if float32 else S.data,
                                     S.indices.astype(np.uint16), S.indptr, S.shape)
                           for S in params.S])
        return SparseParams(params.groups, params.q, stored, params.keys, params.lambdas,
                            {"loggamma": lg})
    folder, other = as_folder(), as_folder()
    widened = SparseParams(params.groups, params.q, list(other.S), params.keys, params.lambdas)
    seqs = sample_sequences()
    got = MknWalker(folder, loggamma_tables(folder)).log_proba(seqs, BOS, EOS)
    numpy_route = reference(folder, groups, seqs, lg)
    assert all(isinstance(x, StoredCSR) for x in folder.S._items)  # nothing was widened
    want = MknWalker(widened, lg).log_proba(seqs, BOS, EOS)
    assert np.array_equal(got, want)
    assert np.array_equal(numpy_route, reference(widened, groups, seqs, lg))
    np.testing.assert_allclose(got, numpy_route, rtol=1e-12, atol=0)
    if not float32:
        np.testing.assert_allclose(got, reference(params, groups, seqs, lg), rtol=1e-12, atol=0)


def test_huge_pages_or_not_the_same_tables(monkeypatch):
    """The tables on numpy's allocation (huge pages where Linux gives them) or on an anonymous
    mapping of their own (small pages) are the same arrays and give the same numbers; ``walker``
    asks for huge pages only for a job forecast at ``HUGE_PAGES_AFTER`` positions or more."""
    import mmap
    params, _ = fit(5)
    lg = loggamma_tables(params)
    small, huge = MknWalker(params, lg), MknWalker(params, lg, huge_pages=True)
    assert isinstance(small.ent.base.obj, mmap.mmap) and huge.ent.flags.owndata
    for name in ("map1", "keys", "koff", "cptr", "cbase", "rowi", "rbase", "h0", "ent",
                 "closed", "logq"):
        assert np.array_equal(getattr(small, name), getattr(huge, name)), name
    seqs = sample_sequences()
    assert np.array_equal(small.log_proba(seqs, BOS, EOS), huge.log_proba(seqs, BOS, EOS))
    monkeypatch.setattr(ngram_score, "BUILD_AFTER", 0.0)
    monkeypatch.setattr(ngram_score, "HUGE_PAGES_AFTER", 1000)
    for expected, want in [(999, False), (1000, True)]:
        p, _ = fit(3)
        assert walker(p, loggamma_tables(p), expected=expected).huge_pages is want


@pytest.mark.parametrize("order", [3, 5])
def test_patterns_not_nested(order):
    """Entries dropped at random from every order (an imported ARPA need not list the suffixes
    of its n-grams): the walk follows the same rule as mkn_log_proba, whatever the pattern."""
    params, groups = fit(order, seed=1)
    lg = loggamma_tables(params)
    rng = np.random.default_rng(5)
    S = []
    for m in params.S:
        m = m.tocoo()
        keep = rng.random(m.nnz) > 0.3
        S.append(sp.csr_matrix((m.data[keep], (m.row[keep], m.col[keep])), shape=m.shape))
    broken = type(params)(params.groups, params.q, S, params.keys, params.lambdas, params.info)
    seqs = sample_sequences()
    np.testing.assert_allclose(MknWalker(broken, lg).log_proba(seqs, BOS, EOS),
                               reference(broken, groups, seqs, lg), rtol=1e-12, atol=0)


def test_bad_ids_are_refused():
    params, _ = fit(3)
    w = MknWalker(params, loggamma_tables(params))
    for bad in ([3, 14], [-1, 3]):
        with pytest.raises(InputError, match="out of range"):
            w.log_proba([[3], bad], BOS, EOS)
    assert w.log_proba([], BOS, EOS).shape == (0,)


@pytest.fixture(scope="module", params=[2, 3, 5, 6])
def trained(request, tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    return train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file),
                 order=request.param)


def test_model_route_equals_numpy_route(trained, tiny_lines, monkeypatch):
    """``log_proba_ids`` of a pure MKN model walks the trie; with the compiled code switched
    off it takes the numpy route: same numbers, same sequence index."""
    seqs = trained.tokenizer.encode_batch(tiny_lines[:80] + ["Zebra quux 123 !!", ""])
    monkeypatch.setattr(ngram_score, "BUILD_AFTER", 0.0)
    assert walker(trained.params, trained._mkn_backoffs()) is not None
    got, idx = trained.log_proba_ids(seqs)
    monkeypatch.setattr(scoring, "USE_COMPILED", False)
    assert walker(trained.params, trained._mkn_backoffs()) is None
    want, want_idx = trained.log_proba_ids(seqs)
    assert np.array_equal(idx, want_idx)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_matches_kenlm_full_scores(trained, tiny_lines, tmp_path):
    kenlm = pytest.importorskip("kenlm")
    from lmkit.ngram.arpa import piece_words, write_arpa
    write_arpa(trained, tmp_path / "m.arpa", words="pieces")
    km = kenlm.Model(str(tmp_path / "m.arpa"))
    words = piece_words(trained.tokenizer)
    seqs = trained.tokenizer.encode_batch(tiny_lines[:60] + ["Zebra quux 123 !!"])
    ken = np.concatenate([[s[0] for s in km.full_scores(" ".join(words[x]), bos=True, eos=True)]
                          for x in seqs])
    mine = trained.log_proba_ids(seqs)[0] / math.log(10)
    assert np.abs(mine - ken).max() < 1e-5


def test_tables_are_built_once_enough_positions_were_scored(trained, tiny_lines, monkeypatch):
    """Small jobs take the numpy route (building the tables would cost more than it saves);
    past BUILD_AFTER x the stored entries the walk takes over: the numbers do not change."""
    m, params = trained, trained.params
    params.__dict__.pop("_mkn_walker", None)
    params.__dict__.pop("_mkn_positions", None)
    nnz = sum(S.nnz for S in params.S)
    seqs = m.tokenizer.encode_batch(tiny_lines[:20])
    n = sum(map(len, seqs)) + len(seqs)
    monkeypatch.setattr(ngram_score, "BUILD_AFTER", 2.5 * n / nnz)  # built by the 3rd call
    first, _ = m.log_proba_ids(seqs)
    m.log_proba_ids(seqs)
    assert "_mkn_walker" not in params.__dict__
    again, _ = m.log_proba_ids(seqs)
    assert "_mkn_walker" in params.__dict__
    np.testing.assert_allclose(again, first, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cached", [False, True], ids=["in-process", "object-cache"])
def test_native_kernels_equal_the_numpy_route_exactly(cached, monkeypatch, tmp_path):
    """The walk's three loops compiled by numba in this process (no cache), or written to the
    object cache, dropped and loaded back by llvmlite (``native.py``: what a fresh process
    runs, without numba): the same floats as the numpy route, bit for bit, on every order,
    pruned or not, and on patterns that are not nested."""
    from lmkit import native
    monkeypatch.setenv("LMKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_KERNELS", {})
    monkeypatch.setattr(native, "USE_CACHE", cached)
    cases = [fit(order, prune=[0] + [1] * (order - 1) if prune else None)
             for order in (2, 5, 6) for prune in (None, "prune")]
    params, groups = fit(4, seed=1)
    S = [m.multiply(sp.random(*m.shape, density=0.7, random_state=3, format="csr") > 0)
         for m in params.S]  # entries dropped at random: patterns not nested
    cases.append((type(params)(params.groups, params.q, [m.tocsr() for m in S], params.keys,
                               params.lambdas, params.info), groups))
    seqs = sample_sequences()

    def walk_all():
        return [MknWalker(p, loggamma_tables(p)).log_proba(seqs, BOS, EOS) for p, _ in cases]
    got = walk_all()
    files = sorted((tmp_path / "cache").glob("ngram.score.*.o"))
    assert len(files) == (3 if cached else 0)  # build, hash_level0, score
    if cached:
        monkeypatch.setattr(native, "_KERNELS", {})
        assert all(native.kernel("ngram.score", n).from_file  # from the file, not numba
                   for n in ("build", "hash_level0", "score"))
        got = walk_all()
    for g, (p, groups) in zip(got, cases):
        want = reference(p, groups, seqs, loggamma_tables(p))
        assert g.dtype == want.dtype and np.array_equal(g, want)
