import numpy as np
import pytest

from lmkit.sparse import lookup_rows
from lmkit.counts import (count_chunk, count_cooccurrences, count_ngrams, empty_counts,
                          flat_buffer, pair_counts, suffix_counts, sum_counts)
from lmkit.errors import InputError
from lmkit.features import Suffix, Window, pad_sequences

V, BOS, EOS = 6, 1, 2
SEQS = [[3, 4, 3], [4]]  # padded: [1,1,3,4,3,2] [1,1,4,2]


def dense(m):
    return m.toarray().tolist()


def test_window_counts_hand_checked():
    c = count_chunk(SEQS, V, [Window(1), Window(2)], BOS, EOS)
    F1 = np.zeros((V, V), int)
    for i, j in [(1, 3), (3, 4), (4, 3), (3, 2), (1, 4), (4, 2)]:  # (token 1 back, target)
        F1[i, j] += 1
    F2 = np.zeros((V, V), int)
    for i, j in [(1, 3), (1, 4), (3, 3), (4, 2), (1, 4), (1, 2)]:  # (token 2 back, target)
        F2[i, j] += 1
    assert dense(c.F[0]) == F1.tolist()
    assert dense(c.F[1]) == F2.tolist()
    assert c.F[1][1, 4] == 2
    assert c.target.tolist() == [0, 0, 2, 2, 2, 0]
    assert (c.n_sequences, c.n_tokens) == (2, 6)
    assert c.keys == [None, None]
    assert c.F[0].dtype == np.int64


def test_suffix_counts_hand_checked():
    c = count_chunk(SEQS, V, [Suffix(1), Suffix(2)], BOS, EOS)
    assert c.keys[0].tolist() == [1, 3, 4]  # suffix1: the tokens seen as a history, rows 0, 1, 2
    # chained keys (row of tok[t-1] in suffix1) * 6 + tok[t-2]:
    # [BOS 3] = 1*6+1 = 7, [4 3] = 1*6+4 = 10, [BOS 4] = 2*6+1 = 13, [3 4] = 2*6+3 = 15
    assert c.keys[1].tolist() == [7, 10, 13, 15]
    expect = np.zeros((4, V), int)
    expect[0, 4] = 1  # [BOS 3] -> 4
    expect[1, 2] = 1  # [4 3] -> EOS
    expect[2, 2] = 1  # [BOS 4] -> EOS
    expect[3, 3] = 1  # [3 4] -> 3
    assert dense(c.F[1]) == expect.tolist()
    assert c.rows(1, np.array([13, 14, -1])).tolist() == [2, -1, -1]


def test_suffix_groups_must_be_nested():
    with pytest.raises(InputError, match="suffix1..suffixM in order"):
        count_chunk(SEQS, V, [Suffix(2)], BOS, EOS)


def test_suffix_counts_one_sort_docstring_example():
    F, keys, rows = suffix_counts(np.array([5, 5, 3, -1]), np.array([1, 1, 2, 0]), 4)
    assert keys.tolist() == [3, 5] and rows.tolist() == [1, 1, 0, -1]
    assert dense(F) == [[0, 0, 1, 0], [0, 2, 0, 0]]


@pytest.mark.parametrize("big", [False, True], ids=["packed", "argsort"])
def test_suffix_counts_from_a_near_order_equal_the_plain_sort(big):
    """A chain of orders counted from the previous order's sort (``near``), with unseen
    histories (-1) in it, gives the counts, keys and rows of plain sorts; ``order`` sorts the
    kept positions by key, stably; a random or wrong-length ``near`` changes nothing either.
    ``big``: keys too wide to pack a position beside them (the argsort route)."""
    rng = np.random.default_rng(7)
    n, Vb = 5000, 5
    toks = rng.integers(0, Vb, n + 4)
    targets = rng.integers(0, Vb, n)
    parent = near = None
    for m in range(1, 5):
        keys = toks[4 - m:4 - m + n].astype(np.int64)
        if parent is not None:
            keys = np.where(parent >= 0, parent * Vb + keys, -1)
        keys[rng.random(n) < 0.05 * (m - 1)] = -1  # some unseen histories, more with the order
        if big:
            keys = np.where(keys >= 0, keys + (1 << 55), -1)
        want = suffix_counts(keys, targets, Vb)
        for hint in (near, rng.permutation(n), near[:-1] if near is not None else None):
            got = suffix_counts(keys, targets, Vb, hint, with_order=True)
            assert np.array_equal(got[0].toarray(), want[0].toarray())
            assert all(np.array_equal(a, b) for a, b in zip(got[1:3], want[1:]))
            order = got[3]
            assert np.array_equal(np.sort(order), np.flatnonzero(keys >= 0))
            ks = keys[order]
            assert (np.diff(ks) >= 0).all() and (np.diff(order)[np.diff(ks) == 0] > 0).all()
        parent, near = want[2], got[3]


def _plain_counts(keys, targets, V):
    """Counts per distinct kept key (rows in key order) by a dictionary: the reference."""
    rows = sorted({int(k) for k in keys if k >= 0})
    out = np.zeros((len(rows), V), dtype=np.int64)
    at = {k: i for i, k in enumerate(rows)}
    for k, t in zip(keys, targets):
        if k >= 0:
            out[at[int(k)], t] += 1
    return out


@pytest.mark.parametrize("shift", [0, 40, 60], ids=["small", "wide", "too-wide"])
def test_pair_counts_equal_suffix_counts(shift):
    """One sort of key * V + target gives ``suffix_counts``'s counts and keys bit for bit
    (dtypes included), with unseen keys (-1), duplicates, an empty input, and keys too wide
    for the one sort (``shift`` 60: the fallback)."""
    rng = np.random.default_rng(3)
    for n, Vt in ((0, V), (1, V), (3000, V), (3000, 16)):  # 16: rows and columns by shifts
        keys = rng.integers(0, 50, n).astype(np.int64) + (np.int64(1) << shift)
        keys[rng.random(n) < 0.1] = -1
        targets = rng.integers(0, Vt, n).astype(np.int64)
        F, k = pair_counts(keys, targets, Vt)
        G, kw, _ = suffix_counts(keys, targets, Vt)
        assert np.array_equal(F.toarray(), _plain_counts(keys, targets, Vt))
        assert F.shape == G.shape and np.array_equal(k, kw) and k.dtype == kw.dtype
        for a in ("data", "indices", "indptr"):
            x, y = getattr(F, a), getattr(G, a)
            assert np.array_equal(x, y) and x.dtype == y.dtype, a
    F, k = pair_counts(np.array([5, -1, 5, 3]), np.array([1, 0, 1, 2]), 4)
    assert k.tolist() == [3, 5] and dense(F) == [[0, 0, 1, 0], [0, 2, 0, 0]]


def test_lookup_rows():
    keys = np.array([3, 7, 9])
    assert lookup_rows(keys, [7, 3, 10, 0, -1, 9]).tolist() == [1, 0, -1, -1, -1, 2]
    assert lookup_rows(None, [4, -1]).tolist() == [4, -1]
    assert lookup_rows(np.zeros(0, np.int64), [1]).tolist() == [-1]


def random_seqs(n, seed, vocab=V):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=rng.integers(0, 8)).tolist() for _ in range(n)]


@pytest.mark.parametrize("groups", [[Window(1), Window(3)], [Suffix(1), Suffix(2), Window(1)]])
def test_shard_additivity(groups):
    seqs = random_seqs(60, seed=1, vocab=9)
    whole = count_chunk(seqs, 9, groups, BOS, EOS)
    halves = count_chunk(seqs[:25], 9, groups, BOS, EOS) + count_chunk(seqs[25:], 9, groups, BOS, EOS)
    assert whole.equals(halves)
    streamed = count_cooccurrences([seqs[i:i + 7] for i in range(0, 60, 7)], 9, groups, BOS, EOS)
    assert whole.equals(streamed)
    assert whole.equals(whole + empty_counts(9, groups))
    assert not whole.equals(count_chunk(seqs[:59], 9, groups, BOS, EOS))


def test_sum_counts_order_free():
    groups = [Suffix(1), Suffix(2), Suffix(3), Window(2)]
    parts = [count_chunk(random_seqs(10, seed=s), V, groups, BOS, EOS) for s in range(5)]
    assert sum_counts(parts).equals(sum_counts(parts[::-1]))
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    assert sum_counts(parts).equals(total)
    assert total.n_sequences == 50


def test_empty_chunk():
    c = count_chunk([], V, [Window(1)], BOS, EOS)
    assert c.n_tokens == 0 and c.F[0].shape == (V, V) and c.F[0].nnz == 0


def test_flat_buffer_docstring_example():
    buf, pos, starts, n = flat_buffer([[[5, 6]], [[7]]], BOS, EOS, 1)
    assert buf.tolist() == [1, 5, 6, 2, 1, 7, 2] and n == 2
    assert pos.tolist() == [1, 2, 3, 5, 6] and starts.tolist() == [1, 1, 1, 5, 5]
    seqs = [[5, 6], [], [7, 3, 4]]
    for pad in (1, 3):  # the layout of pad_sequences, streamed
        got = flat_buffer([seqs[:2], [], seqs[2:]], BOS, EOS, pad)
        want = pad_sequences(seqs, pad, BOS, EOS)
        assert all(a.tolist() == b.tolist() for a, b in zip(got, want)) and got[3] == 3


@pytest.mark.parametrize("groups", [[Suffix(1), Suffix(2), Suffix(3)],
                                    [Suffix(1), Suffix(2), Window(1), Window(3)]])
def test_count_ngrams_one_pass_equals_chunked_sums(groups):
    seqs = random_seqs(80, seed=3, vocab=9) + [[]]
    chunks = [seqs[i:i + 9] for i in range(0, len(seqs), 9)] + [[]]
    assert count_ngrams(iter(chunks), 9, groups, BOS, EOS).equals(
        count_cooccurrences(chunks, 9, groups, BOS, EOS))
    assert count_ngrams([], 9, groups, BOS, EOS).equals(empty_counts(9, groups))
