import numpy as np
import pytest
import scipy.sparse as sp

from lmkit.counts import count_chunk
from lmkit.errors import InputError
from lmkit.features import Skip, Window, pad_sequences
from lmkit.kinds import from_name
from lmkit.skipgram import solve_skip

BOS, EOS = 1, 2


def test_skip_keys_hand_checked():
    buf = np.array([1, 7, 8, 9], dtype=np.int32)
    # Skip(1, 1, 1): offsets (1, 3) at pos 3 -> tokens 8 (adjacent) and 1 (remote): 8 + 1 * 10
    assert Skip(1, 1, 1).offsets == (1, 3)
    assert Skip(1, 1, 1).row_keys(buf, np.array([3]), np.array([1]), 10).tolist() == [18]
    # remote token would be the 2nd BOS before a sequence starting at 2: no feature
    assert Skip(1, 1, 1).row_keys(buf, np.array([3]), np.array([2]), 10).tolist() == [-1]
    assert Skip(2, 1, 2).offsets == (1, 2, 4, 5)
    assert from_name("skip2_1_2") == Skip(2, 1, 2) and Skip(2, 1, 2).name == "skip2_1_2"


def test_skip_refuses_bad_shapes_and_overflow():
    with pytest.raises(InputError, match="skip-gram needs r >= 1"):
        Skip(0, 1, 1)
    buf, pos, starts = pad_sequences([[3, 4, 5, 6, 7, 8]], 6, BOS, EOS)
    with pytest.raises(InputError, match=r"skip3_0_3 keys need vocab_size\*\*6 < 2\*\*63"):
        Skip(3, 0, 3).row_keys(buf, pos, starts, 2 ** 11)


def dense_skip_counts(seqs, V, r, s, a):
    """Reference: loop over positions, context = tuple of the tokens at the offsets."""
    offs = list(range(1, a + 1)) + list(range(a + s + 1, a + s + r + 1))
    out = {}
    for seq in seqs:
        x = [BOS] * (a + s + r) + list(seq) + [EOS]
        start = a + s + r
        for t in range(start, len(x)):
            if t - max(offs) < start - 1:
                continue
            ctx = tuple(x[t - o] for o in offs)
            out.setdefault(ctx, np.zeros(V, np.int64))[x[t]] += 1
    return out


def test_skip_counts_match_dense_reference():
    V, seqs = 9, [[3, 4, 5, 3, 4, 6, 7], [5, 5, 8, 3], [4]]
    g = Skip(1, 1, 1)
    c = count_chunk(seqs, V, [g, Window(2)], BOS, EOS)
    ref = dense_skip_counts(seqs, V, 1, 1, 1)
    assert len(c.keys[0]) == len(ref)
    for (adj, remote), row in ref.items():
        i = c.rows(0, np.array([adj + V * remote]))[0]
        assert i >= 0 and c.F[0][i].toarray().ravel().tolist() == row.tolist()
    # Skip(1, 1, 0) is the token 2 back alone: the Window(2) counts with keyed rows, except that
    # a window also counts the first token of each sequence (2 BOS back), a skip-gram does not
    c2 = count_chunk(seqs, V, [Skip(1, 1, 0), Window(2)], BOS, EOS)
    diff = (c2.F[1][c2.keys[0]] - c2.F[0]).toarray()
    assert (diff[c2.keys[0] != BOS] == 0).all()
    assert diff[c2.keys[0] == BOS].sum() == len(seqs)


def test_solve_skip_matches_dense_formula():
    V, seqs = 9, [[3, 4, 5, 3, 4, 6, 7], [5, 5, 8, 3], [4, 3, 4, 5], [6, 3, 4, 6]]
    c = count_chunk(seqs, V, [Skip(1, 1, 1)], BOS, EOS)
    q = np.full(V, 1.0 / V)
    d = 0.6
    S = solve_skip(c.F[0], c.keys[0], 1, q, d).toarray()
    F = c.F[0].toarray().astype(float)
    adj = c.keys[0] % V
    for i in range(F.shape[0]):
        M = F[adj == adj[i]].sum(axis=0)  # the adjacent token alone, over every remote token
        p_adj = np.maximum(M - d, 0) / M.sum() + d * (M > 0).sum() / M.sum() * q
        expect = np.where(F[i] > 0, np.log1p(np.maximum(F[i] - d, 0) / (d * (F[i] > 0).sum() * p_adj)), 0)
        assert np.allclose(S[i], expect)
    # a = 0: no adjacent part, the back-off is q (explicit.solve_group's formula)
    c0 = count_chunk(seqs, V, [Skip(1, 1, 0)], BOS, EOS)
    F0 = c0.F[0].toarray().astype(float)
    S0 = solve_skip(c0.F[0], c0.keys[0], 0, q, d).toarray()
    n1 = (F0 > 0).sum(axis=1, keepdims=True)
    assert np.allclose(S0, np.where(F0 > 0, np.log1p(np.maximum(F0 - d, 0) / (d * n1 * q)), 0))


@pytest.mark.parametrize("a", [0, 1, 2])
def test_solve_skip_in_row_blocks_is_the_same_matrix(a):
    """Blocks of whole rows (a few entries each, uneven rows, empty rows) give the same bits
    as one block."""
    rng = np.random.default_rng(a)
    V = 7
    seqs = [list(rng.integers(3, V, size=int(rng.integers(2, 12)))) for _ in range(60)]
    c = count_chunk(seqs, V, [Skip(1, 1, a)], BOS, EOS)
    q = np.full(V, 1.0 / V)
    whole = solve_skip(c.F[0], c.keys[0], a, q, 0.6, block=1 << 30)
    for block in (1, 2, 5, 17):
        S = solve_skip(c.F[0], c.keys[0], a, q, 0.6, block=block)
        for x, y in ((S.data, whole.data), (S.indices, whole.indices), (S.indptr, whole.indptr)):
            np.testing.assert_array_equal(x, y)
    assert whole.nnz > 17


def _marginal_reference(F, keys, a, V):
    """``adjacent_marginal`` as written before (commit 02e0953): ``np.unique`` and a float64
    COO indicator matrix."""
    adj = keys % (V ** a)
    uniq, parent = np.unique(adj, return_inverse=True)
    P = sp.csr_matrix((np.ones(len(keys)), (parent, np.arange(len(keys)))),
                      shape=(len(uniq), len(keys)))
    M = (P @ F).tocsr()
    M.sort_indices()
    return M, parent


@pytest.mark.parametrize("a", [1, 2])
def test_adjacent_marginal_sums_integers_to_the_same_matrix_and_model(a, monkeypatch):
    """The marginal built straight in CSR, in the counts' integer dtype: the same pattern,
    sums and parents as the float64 ``np.unique`` + COO version, and the same skip-gram
    weights bit for bit (also on no contexts at all)."""
    from lmkit import skipgram
    rng = np.random.default_rng(a)
    V = 7
    seqs = [list(rng.integers(3, V, size=int(rng.integers(2, 12)))) for _ in range(80)]
    c = count_chunk(seqs, V, [Skip(1, 1, a)], BOS, EOS)
    F, keys = c.F[0], c.keys[0]
    M, parent = skipgram.adjacent_marginal(F, keys, a, V)
    M0, parent0 = _marginal_reference(F, keys, a, V)
    assert M.dtype == F.dtype == np.int64
    np.testing.assert_array_equal(parent, parent0)
    for x, y in ((M.indices, M0.indices), (M.indptr, M0.indptr), (M.data, M0.data)):
        np.testing.assert_array_equal(x, y)
    q = rng.dirichlet(np.ones(V))
    S = solve_skip(F, keys, a, q, 0.6)
    monkeypatch.setattr(skipgram, "adjacent_marginal", _marginal_reference)
    S0 = solve_skip(F, keys, a, q, 0.6)
    for x, y in ((S.data, S0.data), (S.indices, S0.indices), (S.indptr, S0.indptr)):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    empty = sp.csr_matrix((0, V), dtype=np.int64)
    M, parent = skipgram.adjacent_marginal(empty, np.zeros(0, dtype=np.int64), a, V)
    assert M.shape == (0, V) and len(parent) == 0
