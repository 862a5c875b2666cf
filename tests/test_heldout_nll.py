"""The weight search's objective summed over pieces of held-out positions: bounded by a byte
budget (chunks cut into pieces, only some kept) and computed by worker processes, with the
same weights as the one-process, unbounded search (up to summation order)."""
import numpy as np
import pytest

from lmkit import heldout_nll
from lmkit.errors import MemoryLimitError
from lmkit.explicit import choose_lambdas
from lmkit.heldout_nll import HeldoutPlan, _cut, search_bounds, share_pieces
from lmkit.rich import _entry_buckets, solve_rich
from lmkit.scoring import context_rows

from test_rich import BOS, EOS, corpus
from test_scale_rich import rich_counts


@pytest.fixture(scope="module")
def search():
    """A feature-rich model's weight search: rows, targets and int8 entry buckets (5 per
    group), with the default model's sampled Hessian (every 8th chunk) and 32-position chunks
    (so there are many chunks)."""
    counts = rich_counts(corpus(300, 0))
    params = solve_rich(counts)
    eb, B = _entry_buckets(counts, params, (2, 3, 5, 10))
    rows, targets, _ = context_rows(params.groups, params.keys, corpus(80, 1), 14, BOS, EOS)
    kw = dict(init=np.repeat(params.info["lambda_init"], B), entry_buckets=eb, n_buckets=B,
              hessian_every=8, chunk=32, tol=1e-9)
    return params, rows, targets, kw


def test_cut_runs_of_positions_by_touched_entries():
    assert _cut(np.array([3, 3, 3]), 6) == [(0, 2), (2, 3)]
    assert _cut(np.array([3, 3, 3]), None) == [(0, 3)]
    assert _cut(np.array([3, 3, 3]), 9) == [(0, 3)]
    assert _cut(np.array([5, 1, 7, 1]), 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # >= 1 each


def test_pieces_cover_every_position_once_and_split_the_hessian_sample(search):
    from lmkit.explicit import _position_buckets
    params, rows, targets, kw = search
    eb, B = kw["entry_buckets"], kw["n_buckets"]
    bk = _position_buckets(rows, None, eb, B, len(targets))
    whole = HeldoutPlan(params, rows, targets, bk, eb, B, 32, 8, None)
    cut = HeldoutPlan(params, rows, targets, bk, eb, B, 32, 8, None, max_entries=200)
    assert len(whole.pieces) == whole.n_chunks and len(cut.pieces) > 2 * whole.n_chunks
    assert sum(cut.entries) == sum(whole.entries) and max(cut.entries) <= max(200, cut.densest)
    for i in range(whole.n_chunks):  # the pieces of chunk i tile its positions and its sample
        mine = [p for p in cut.pieces if p[0] == i]
        assert mine[0][1] == 0 and all(a[2] == b[1] for a, b in zip(mine, mine[1:]))
        assert mine[-1][2] == whole.pieces[i][2]
        assert sum(p[3] for p in mine) == whole.pieces[i][3]
        assert whole.pieces[i][3] == (whole.pieces[i][2] if i % 8 == 0 else 0)
    owners = share_pieces(cut, 3)
    assert sorted(k for o in owners for k in o) == list(range(len(cut.pieces)))


def test_bounded_search_equals_the_unbounded_one(search, monkeypatch):
    """A budget that cuts every chunk into pieces of a few positions and keeps only a few of
    them (the rest built again at each evaluation): the same weights to 1e-9."""
    params, rows, targets, kw = search
    want, wtrace = choose_lambdas(params, rows, targets, **kw)
    built = []
    real = HeldoutPlan.build
    monkeypatch.setattr(HeldoutPlan, "build", lambda self, k: built.append(k) or real(self, k))
    plans = []
    real_init = HeldoutPlan.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        plans.append(self)
    monkeypatch.setattr(HeldoutPlan, "__init__", spy)
    budget = 300 * heldout_nll.BUILD_BYTES * 2  # pieces of <= 300 entries, 600 entries kept
    got, trace = choose_lambdas(params, rows, targets, max_bytes=budget, **kw)
    plan = plans[-1]
    assert len(plan.pieces) > 2 * plan.n_chunks  # chunks were cut
    assert len(built) > len(plan.pieces) * 2  # pieces not kept were built again
    assert np.abs(got - want).max() <= 1e-9
    assert len(trace) == len(wtrace) and abs(trace[-1][1] - wtrace[-1][1]) <= 1e-12


def test_worker_processes_give_the_very_same_weights(search):
    """workers 2 and 3: each builds and keeps its pieces; the terms are added in piece order,
    so the weights and the trace are bit for bit those of one process (bounded or not)."""
    params, rows, targets, kw = search
    one, trace = choose_lambdas(params, rows, targets, **kw)
    for workers in (2, 3):
        got, gtrace = choose_lambdas(params, rows, targets, workers=workers, **kw)
        assert np.array_equal(got, one) and gtrace == trace
    budget = 300 * heldout_nll.BUILD_BYTES * 2 * 2
    bounded, _ = choose_lambdas(params, rows, targets, max_bytes=budget, **kw)
    bounded2, _ = choose_lambdas(params, rows, targets, max_bytes=budget, workers=2, **kw)
    assert np.abs(bounded2 - one).max() <= 1e-9 and np.abs(bounded - one).max() <= 1e-9


def test_exact_hessian_fallback_in_workers(search):
    """A weight with no curvature in the Hessian sample gets the exact Hessian: computed by
    the workers (and, bounded, without keeping it), the same weights."""
    params, rows, targets, kw = search
    kw = {**kw, "hessian_every": 100, "chunk": 16}
    one, _ = choose_lambdas(params, rows, targets, **kw)
    two, _ = choose_lambdas(params, rows, targets, workers=2, **kw)
    assert np.array_equal(one, two)
    bounded, _ = choose_lambdas(params, rows, targets, workers=2,
                                max_bytes=200 * heldout_nll.BUILD_BYTES * 2 * 2, **kw)
    assert np.abs(bounded - one).max() <= 1e-9


def test_a_budget_below_one_position_is_refused():
    assert search_bounds(100, None, 2) == (None, None)
    assert search_bounds(100, 100 * heldout_nll.BUILD_BYTES * 4, 2) == (
        100, 100 * heldout_nll.BUILD_BYTES)
    with pytest.raises(MemoryLimitError, match=r"one held-out position in each of 2 processes "
                       r".* raise max_memory or use fewer workers"):
        search_bounds(100, 100 * heldout_nll.BUILD_BYTES, 2)


def test_compiled_hessian_equals_the_sparse_products(search, monkeypatch):
    """The Hessian by the compiled kernel (fastnll, no transposed copy of X) equals scipy's two
    sparse products on the same piece, for a sampled part and for every position, and the
    weight search through either gives the same weights."""
    pytest.importorskip("numba")
    from lmkit.explicit import _position_buckets
    params, rows, targets, kw = search
    eb, B = kw["entry_buckets"], kw["n_buckets"]
    bk = _position_buckets(rows, None, eb, B, len(targets))
    plan = HeldoutPlan(params, rows, targets, bk, eb, B, 32, 8, 20)
    lam = np.random.default_rng(0).uniform(0, 1.2, plan.P)
    assert heldout_nll._native() is not None
    fast = plan.build(0)
    assert fast.hess.XT is None and 0 < fast.hess.h < fast.n
    full = heldout_nll.dataclasses.replace(fast, hess=heldout_nll._hessian_part(fast.X, fast.pos,
                                                                                fast.n))
    compiled = [heldout_nll._chunk_terms(c, lam, True) for c in (fast, full)]
    want, wtrace = choose_lambdas(params, rows, targets, **kw)
    monkeypatch.setattr(heldout_nll, "_native", lambda: None)
    slow = plan.build(0)
    assert slow.hess.XT is not None
    slow_full = heldout_nll.dataclasses.replace(
        slow, hess=heldout_nll._hessian_part(slow.X, slow.pos, slow.n))
    for got, c in zip(compiled, (slow, slow_full)):
        ref = heldout_nll._chunk_terms(c, lam, True)
        assert got[0] == ref[0] and np.array_equal(got[1], ref[1])
        assert np.abs(got[2] - ref[2]).max() <= 1e-12 * np.abs(ref[2]).max()
        assert np.abs(ref[2]).max() > 0
    got, trace = choose_lambdas(params, rows, targets, **kw)
    assert np.abs(got - want).max() <= 1e-9
