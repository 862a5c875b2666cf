"""experiments/rich_weights.py: the feature-rich model's research weightings (per group, per
history-count bucket, entry x history buckets) beside rich.fit_rich's entry-count buckets."""
import numpy as np

from lmkit.counts import count_chunk
from lmkit.experiments.rich_weights import entry_row_buckets, fit_rich_weighted
from lmkit.rich import _entry_buckets, base_groups, cluster_groups, fit_rich, merge_groups, solve_rich
from lmkit.scoring import context_rows, sparse_log_proba, sparse_next_logp, next_rows

from test_rich import BOS, EOS, corpus


def _counts(train, V=14):
    counts = count_chunk(train, V, base_groups(order=3, context=2, skips=((1, 1, 1),)), BOS, EOS)
    table = np.arange(V) % 4
    return merge_groups(counts, count_chunk(train, V, cluster_groups(table, ((3, 1),)), BOS, EOS))


def _same(a, b) -> bool:
    return (np.array_equal(a.q, b.q) and np.array_equal(a.lambdas, b.lambdas)
            and all((x != y).nnz == 0 for x, y in zip(a.S, b.S)))


def test_each_weighting_folds_its_weights_and_normalises():
    V = 14
    train, held, test = corpus(400, 0, V), corpus(80, 1, V), corpus(80, 2, V)
    counts = _counts(train, V)
    plain = fit_rich_weighted(counts, held, BOS, EOS)
    assert len(plain.lambdas) == 6 and "entry_lambdas" not in plain.info
    bucketed = fit_rich_weighted(counts, held, BOS, EOS, bucket_edges=(2, 8))
    assert np.array(bucketed.info["bucket_lambdas"]).shape == (6, 3)
    assert np.allclose(bucketed.lambdas, 1.0)
    both = fit_rich_weighted(counts, held, BOS, EOS, entry_edges=(2, 3), bucket_edges=(2, 8))
    assert np.array(both.info["entry_lambdas"]).shape == (6, 9)
    for params in (plain, bucketed, both):
        p = np.exp(sparse_next_logp(params, next_rows(params.groups, params.keys, [3, 4, 5], V,
                                                      BOS)))
        assert abs(p.sum() - 1) < 1e-9
        rows, targets, _ = context_rows(params.groups, params.keys, test, V, BOS, EOS)
        assert np.isfinite(sparse_log_proba(params, rows, targets)).all()


def test_entry_buckets_alone_are_fit_rich():
    counts = _counts(corpus(300, 0))
    held = corpus(60, 1)
    assert _same(fit_rich_weighted(counts, held, BOS, EOS, entry_edges=(2, 3, 5, 10)),
                 fit_rich(counts, held, BOS, EOS))


def test_entry_row_buckets_are_entry_times_history_buckets():
    counts = _counts(corpus(300, 0))
    params = solve_rich(counts)
    eb, B = _entry_buckets(counts, params, (2, 3))
    both, B2 = entry_row_buckets(counts, params, (2, 3), (2, 8))
    assert B == 3 and B2 == 9 and max(int(e.max()) for e in both) < 9
    assert all(np.array_equal(b // 3, e) for b, e in zip(both, eb))  # entry bucket first
