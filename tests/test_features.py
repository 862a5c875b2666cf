import pytest

from lmkit.errors import InputError
import numpy as np

from lmkit.features import (Suffix, Window, decode_histories, decode_suffix_key, encode_histories,
                            find_sorted, group_rows, lookup_keys, make_groups, sort_values,
                            pad_sequences)

from lmkit.kinds import from_name

V, BOS, EOS = 6, 1, 2


def test_pad_sequences_docstring_example():
    buf, pos, starts = pad_sequences([[5, 6]], 2, 1, 2)
    assert buf.tolist() == [1, 1, 5, 6, 2]
    assert pos.tolist() == [2, 3, 4]
    assert starts.tolist() == [2, 2, 2]


def test_pad_sequences_two_sequences_and_empty():
    buf, pos, starts = pad_sequences([[3, 4, 3], [], [4]], 2, BOS, EOS)
    assert buf.tolist() == [1, 1, 3, 4, 3, 2, 1, 1, 2, 1, 1, 4, 2]
    assert pos.tolist() == [2, 3, 4, 5, 8, 11, 12]
    assert starts.tolist() == [2, 2, 2, 2, 8, 11, 11]
    assert buf[pos].tolist() == [3, 4, 3, 2, 2, 4, 2]  # ids then EOS; BOS is never a target


def test_window_and_suffix_keys_hand_checked():
    buf, pos, starts = pad_sequences([[3, 4, 3], [4]], 2, BOS, EOS)
    # buf = [1,1,3,4,3,2, 1,1,4,2]; targets at 2,3,4,5,8,9
    assert Window(1).row_keys(buf, pos, starts, V).tolist() == [1, 3, 4, 3, 1, 4]
    assert Window(2).row_keys(buf, pos, starts, V).tolist() == [1, 1, 3, 4, 1, 1]
    assert Suffix(1).row_keys(buf, pos, starts, V).tolist() == [1, 3, 4, 3, 1, 4]
    # chained: key = row of tok[t-1] in suffix1 * V + tok[t-2]; here suffix1 rows = [1, 3, 4]
    parent = np.array([0, 1, 2, 1, 0, 2])
    # a history may hold one BOS but not two
    assert Suffix(2).row_keys(buf, pos, starts, V, parent).tolist() == [-1, 1 * 6 + 1, 2 * 6 + 3,
                                                                        1 * 6 + 4, -1, 2 * 6 + 1]
    parent[3] = -1  # an unseen parent history has no longer history either
    assert Suffix(2).row_keys(buf, pos, starts, V, parent)[3] == -1
    with pytest.raises(InputError, match="suffix1..suffixM in order"):
        Suffix(2).row_keys(buf, pos, starts, V)


def test_decode_and_encode_histories_docstring_examples():
    keys = [np.array([3, 4]), np.array([17])]
    assert decode_suffix_key(17, 2, 10, keys) == [7, 4]
    assert decode_histories(keys, 2, 10).tolist() == [[7, 4]]
    assert encode_histories(keys, np.array([[7, 4], [7, 3], [8, 4]]), 10).tolist() == [0, -1, -1]


def test_any_order_at_large_vocabulary_keys_stay_small():
    """Order 12 at V = 32000: packed keys would need V**11 ~ 2**164; chained ones stay < R * V."""
    V = 32000
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, V, size=30).tolist() for _ in range(5)] + [[5, 6, 7] * 10]
    groups = make_groups(0, 12)
    buf, pos, starts = pad_sequences(seqs, 11, BOS, EOS)
    keys = [np.unique(g.row_keys(buf, pos, starts, V, None)) for g in groups[:1]]
    rows = group_rows(groups[:1], keys, buf, pos, starts, V)
    for g in groups[1:]:
        k = g.row_keys(buf, pos, starts, V, rows[-1])
        keys.append(np.unique(k[k >= 0]))
        rows = group_rows(groups[:len(keys)], keys, buf, pos, starts, V)
    for m in range(1, 12):
        assert 0 <= keys[m - 1].max() < len(keys[m - 2] if m > 1 else [0]) * V
        hist = decode_histories(keys, m, V)
        assert (encode_histories(keys, hist, V) == np.arange(len(hist))).all()
    # position 20 of sequence 0 has its full 11-token history
    h = decode_histories(keys, 11, V)[rows[10][20]]
    assert h.tolist() == seqs[0][9:20]


def test_make_groups():
    assert make_groups(2, 3) == [Suffix(1), Suffix(2), Window(1), Window(2)]
    assert make_groups(3) == [Window(1), Window(2), Window(3)]
    assert make_groups(0, 3) == [Suffix(1), Suffix(2)]


@pytest.mark.parametrize("context, order, match", [
    (0, None, r"context must be >= 1 \(or give order N\)"),
    (-1, None, r"context must be >= 0, got -1"),
    (-1, 3, r"context must be >= 0, got -1"),
    (2, 1, r"order must be >= 2, got 1"),
])
def test_make_groups_refuses(context, order, match):
    with pytest.raises(InputError, match=match):
        make_groups(context, order)


def test_group_names_round_trip():
    for g in [Window(1), Window(12), Suffix(3)]:
        assert from_name(g.name) == g
    for bad in ("bigram", "window0", "suffix0", "window٣"):  # ٣: an Arabic-Indic 3
        with pytest.raises(ValueError, match="unknown feature group|needs a number >= 1"):
            from_name(bad)


def test_find_sorted_and_lookup_keys_match_searchsorted():
    rng = np.random.default_rng(0)
    table = np.unique(rng.integers(0, 10**9, 70_000))  # big enough for the sorted-query path
    q = np.concatenate([rng.choice(table, 3000), rng.integers(-1, 10**9, 3000)])
    assert np.array_equal(find_sorted(table, q), np.searchsorted(table, q))
    # every route of the sorted search: packed (non-negative ints), too wide to pack, negative,
    # unsigned and float queries
    for x in (np.abs(q), np.abs(q) << 30, q, np.abs(q).astype(np.uint64), q.astype(float)):
        assert np.array_equal(find_sorted(table, x), np.searchsorted(table, x))
    want = np.where(np.isin(q, table) & (q >= 0), np.searchsorted(table, q), -1)
    assert np.array_equal(lookup_keys(table, q), want)
    assert lookup_keys(None, q[:3]).tolist() == q[:3].tolist()


@pytest.mark.parametrize("M", [1, 2, 4, 18])  # 12**18 > 2**63: the history in two int64 keys
def test_rows_found_under_the_history_order_equal_a_plain_search(M):
    """group_rows searches every order's keys under one sort of the positions (history_order):
    the rows must be those of an independent sort per order."""
    import lmkit.features as F
    from lmkit.counts import count_ngrams
    from lmkit.ngram.mkn import solve_ngram
    rng = np.random.default_rng(M)
    Vb = 12
    train = [list(rng.integers(3, Vb, rng.integers(1, 30))) for _ in range(400)]
    test = [list(rng.integers(3, Vb, rng.integers(0, 30))) for _ in range(300)] + train[:300]
    groups = make_groups(context=0, order=M + 1)
    params = solve_ngram(count_ngrams([train], Vb, groups, BOS, EOS), bos_id=BOS)
    buf, pos, starts = pad_sequences(test, M, BOS, EOS)
    assert len(pos) >= 1 << 12  # long enough for history_order to be used
    order = F.history_order(buf, pos, M, Vb)
    assert order is not None  # enough positions (any V**M: packed into several keys)
    fast = group_rows(groups, params.keys, buf, pos, starts, Vb, order)
    slow = group_rows(groups, params.keys, buf, pos, starts, Vb)
    for f, s in zip(fast, slow):
        assert np.array_equal(f, s)
    assert all((r >= 0).any() for r in fast)


@pytest.mark.parametrize("V,reach", [(12, 3), (12, 20), (70_000, 4), (2**31 - 1, 7)])
def test_history_order_sorts_whole_histories_newest_first(V, reach):
    """The order sorts the ``reach`` previous tokens lexicographically, newest first, also when
    ``V**reach`` does not fit in one int64 (the history then spans several packed keys)."""
    import lmkit.features as F
    rng = np.random.default_rng(reach)
    n = 5000
    buf = rng.integers(0, min(V, 3), n + reach).astype(np.int64)  # few values: many ties
    buf[rng.random(len(buf)) < 0.05] = V - 1
    pos = np.arange(reach, n + reach)
    order = F.history_order(buf, pos, reach, V)
    hist = np.stack([buf[pos - j] for j in range(1, reach + 1)], axis=1)[order]
    assert sorted(order.tolist()) == list(range(n))
    diff = hist[1:] != hist[:-1]
    first = np.where(diff.any(axis=1), diff.argmax(axis=1), 0)  # first column that differs
    rows = np.arange(n - 1)
    assert (hist[1:][rows, first] >= hist[:-1][rows, first]).all()
    assert F.history_order(buf, pos[:100], reach, V) is None  # too few positions to pay


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def key_path(request, monkeypatch):
    """lookup_keys on the compiled search (fastkeys, forced for any size) and on numpy's."""
    import lmkit.features as F
    if request.param and F._compiled_keys() is None:
        pytest.skip("numba is not installed: only the numpy path exists")
    monkeypatch.setattr(F, "USE_COMPILED", request.param)
    monkeypatch.setattr(F, "COMPILED_MIN_QUERIES", 1)
    return request.param


@pytest.mark.parametrize("span", [10**3, 10**9, 2**62])  # 1 to 6 radix passes
def test_lookup_keys_compiled_equals_numpy(key_path, span):
    """Present, absent and -1 queries, repeats, keys below and above the whole table, and
    under a given order (the history order's contract: the valid keys come out ascending)."""
    rng = np.random.default_rng(span % 1000)
    table = np.unique(rng.integers(0, span, 5_000))
    q = np.concatenate([rng.choice(table, 4000), rng.integers(-1, span, 4000),
                        [-1, 0, span - 1, table[0], table[-1], table[-1] + 1]])
    q = q[rng.permutation(len(q))]
    want = np.where(np.isin(q, table) & (q >= 0), np.searchsorted(table, q), -1)
    assert np.array_equal(lookup_keys(table, q), want)
    order = np.argsort(q, kind="stable")
    assert np.array_equal(lookup_keys(table, q, order), want)
    assert np.array_equal(lookup_keys(table[:0], q), np.full(len(q), -1))
    assert np.array_equal(lookup_keys(table, q[:0]), q[:0])


@pytest.mark.parametrize("span", [10**6, 10**12, 2**62 - 1])  # 2 to 6 radix passes
def test_find_sorted_and_sort_values_compiled_equal_numpy(key_path, span, monkeypatch):
    """The training's search (``find_sorted(compiled=True)``: fastkeys.search_sorted) gives
    numpy's insertion points for present and absent queries, repeats, and queries below and
    above the whole table; ``sort_values`` sorts as numpy does, negative values included
    (those take numpy's sort). The search goes a slice of queries at a time (its scratch)."""
    rng = np.random.default_rng(span % 997)
    table = np.unique(rng.integers(0, span, 80_000))
    assert len(table) >= 1 << 16  # big enough for the sorted-query paths
    q = np.concatenate([rng.choice(table, 9000), rng.integers(0, span, 9000),
                        [0, span - 1, table[0], table[-1], table[-1] + 1, max(table[0] - 1, 0)]])
    q = q[rng.permutation(len(q))]
    assert np.array_equal(find_sorted(table, q, compiled=True), np.searchsorted(table, q))
    import lmkit.features as F
    monkeypatch.setattr(F, "SEARCH_SLICE", 1000)  # slices of queries, the last one short
    assert np.array_equal(find_sorted(table, q, compiled=True), np.searchsorted(table, q))
    for a in (q.copy(), np.repeat(q[:50], 400), np.zeros(20_000, np.int64),
              np.concatenate([q, -q[:10]])):
        got = a.copy()
        sort_values(got)
        assert np.array_equal(got, np.sort(a))


def test_suffix_searches_never_load_the_compiled_search(monkeypatch):
    """A pure n-gram model's rows never import numba through fastkeys (its short jobs stay on
    the numpy route); the suffix searches use fastkeys only once a keyed group has loaded it."""
    import lmkit.features as F
    monkeypatch.setattr(F, "_FAST", F._UNSET)
    monkeypatch.setattr(F, "COMPILED_MIN_QUERIES", 1)
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(3, 12, rng.integers(1, 30))) for _ in range(400)]
    buf, pos, starts = pad_sequences(seqs, 2, BOS, EOS)
    keys = [np.arange(3, 12), np.unique(rng.integers(0, 12 * 9, 40))]
    rows = group_rows(make_groups(context=0, order=3), keys, buf, pos, starts, 12,
                      F.history_order(buf, pos, 2, 12))
    assert F._FAST is F._UNSET and (rows[1] >= 0).any()
