"""The default (feature-rich) model's memory-saving build gives the same model.

``fit_rich(consume=True)`` frees the counts as the model takes their place, and the entry
buckets are kept in a small integer type: neither may change a single stored value.
"""
import numpy as np

from lmkit.counts import count_chunk
from lmkit.explicit import count_buckets, entry_counts
from lmkit.rich import _entry_buckets, base_groups, cluster_groups, fit_rich, merge_groups, \
    solve_rich

BOS, EOS = 1, 2


def corpus(n, seed, V=14):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.integers(3, V, size=3).tolist()
        for _ in range(rng.integers(2, 12)):
            s.append(3 + (s[-3] + s[-1]) % (V - 3) if rng.random() < 0.7 else int(rng.integers(3, V)))
        out.append(s)
    return out


def rich_counts(seqs, V=14):
    groups = base_groups(order=3, context=2, skips=((1, 1, 1),))
    counts = count_chunk(seqs, V, groups, BOS, EOS)
    return merge_groups(counts, count_chunk(seqs, V, cluster_groups(np.arange(V) % 4, ((3, 1),)),
                                            BOS, EOS))


def same_params(a, b) -> bool:
    return (a.groups == b.groups and np.array_equal(a.q, b.q)
            and np.array_equal(a.lambdas, b.lambdas)
            and all(x.shape == y.shape and np.array_equal(x.indptr, y.indptr)
                    and np.array_equal(x.indices, y.indices) and np.array_equal(x.data, y.data)
                    for x, y in zip(a.S, b.S))
            and all((x is None and y is None) or np.array_equal(x, y)
                    for x, y in zip(a.keys, b.keys))
            and a.info["entry_lambdas"] == b.info["entry_lambdas"])


def test_consume_gives_the_same_model_and_frees_the_counts():
    train, held, extra = corpus(300, 0), corpus(60, 1), corpus(40, 3)
    for refit in (None, rich_counts(extra)):
        kept = fit_rich(rich_counts(train), held, BOS, EOS, refit=refit)
        counts = rich_counts(train)
        n_tok = counts.n_tokens
        eaten = fit_rich(counts, held, BOS, EOS, refit=refit, consume=True)
        assert same_params(kept, eaten)
        assert all(F is None for F in counts.F) and counts.n_tokens == n_tok


def test_small_entry_buckets_equal_the_int64_ones():
    counts = rich_counts(corpus(300, 0))
    params = solve_rich(counts)
    eb, B = _entry_buckets(counts, params, (2, 3, 5, 10))
    ref = [count_buckets(c, (2, 3, 5, 10)) for c in entry_counts(counts, params)]
    assert B == 5 and all(e.dtype == np.int8 for e in eb)
    assert all(np.array_equal(e, r) for e, r in zip(eb, ref))
    eb2, B2 = _entry_buckets(counts, params, (2, 3), row_edges=(2, 8))
    assert B2 == 9 and max(int(e.max()) for e in eb2) < 9
