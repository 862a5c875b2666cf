import numpy as np
import pytest
import scipy.sparse as sp

from lmkit import kinds
from lmkit.clusters import ClusterHistory, cluster_tokens
from lmkit.counts import count_chunk
from lmkit.errors import InputError

BOS, EOS = 1, 2


def test_cluster_history_keys_hand_checked():
    table = (0, 1, 1, 0, 2, 2, 1, 0, 0, 1)  # V = 10, C = 3
    g = ClusterHistory(3, 1, table)
    buf = np.array([1, 4, 5, 6, 9], dtype=np.int32)
    # pos 4: token 6 exact (offset 1), clusters of 5 -> 2 and 4 -> 2: 6 + 10 * (2 + 3 * 2)
    assert g.row_keys(buf, np.array([4]), np.array([1]), 10).tolist() == [6 + 10 * 8]
    assert g.row_keys(buf, np.array([4]), np.array([3]), 10).tolist() == [-1]  # past one BOS
    assert g.name == "cluster3_1_3" and g.reach == 3
    assert kinds.from_name(g.name, {"clusters3": np.array(table)}) == g
    with pytest.raises(ValueError, match="not a cluster-history group of a 4-cluster table"):
        kinds.from_name(g.name, {"clusters3": table[:-1] + (3,)})
    with pytest.raises(InputError, match="cluster3_1_3 keys need"):
        g.row_keys(buf, np.array([4]), np.array([1]), 2 ** 62)


def test_cluster_history_counts_match_hand_count():
    table = tuple([0, 0, 0] + [1, 1, 2, 2])  # tokens 3, 4 -> cluster 1; 5, 6 -> cluster 2
    g = ClusterHistory(2, 0, table)
    c = count_chunk([[3, 5, 4, 6]], 7, [g], BOS, EOS)
    # contexts (t-1, t-2) as clusters: (BOS,BOS) not allowed; targets 5,4,6,EOS
    # 5: (c3=1, BOS=0) -> 1 + 3*0; 4: (c5=2, c3=1) -> 2+3; 6: (c4=1, c5=2) -> 1+6; EOS: (2, 1) -> 5
    assert c.keys[0].tolist() == [1, 5, 7]
    assert c.F[0].toarray()[:, [2, 4, 5, 6]].tolist() == [[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]]


def test_cluster_tokens_separates_two_blocks_deterministically():
    rng = np.random.default_rng(0)
    V = 12  # tokens 0..5 are followed by 6..11 and vice versa
    F = np.zeros((V, V))
    F[:6, 6:] = rng.integers(5, 10, (6, 6))
    F[6:, :6] = rng.integers(5, 10, (6, 6))
    a = cluster_tokens(sp.csr_matrix(F), 2, seed=3)
    assert len(set(a[:6])) == 1 and len(set(a[6:])) == 1 and a[0] != a[6]
    assert np.array_equal(a, cluster_tokens(sp.csr_matrix(F), 2, seed=3))
    with pytest.raises(InputError, match="n_clusters must be in"):
        cluster_tokens(sp.csr_matrix(F), 0)


def test_cluster_tokens_of_a_few_lines_same_every_run(tiny_tok, tiny_lines):
    """A few lines leave fewer independent neighbour patterns than SVD dimensions, twin tokens
    and repeated singular values: the clusters must not hang on rounding (they changed between
    identical `lmkit train --input five_lines.txt` runs: 28, 29 or 188 clusters)."""
    from lmkit.clusters import bigram_embedding
    r, c = [], []
    for line in tiny_lines[:5]:
        ids = [tiny_tok.bos_id] + list(tiny_tok.encode(line)) + [tiny_tok.eos_id]
        r += ids[:-1]
        c += ids[1:]
    V = tiny_tok.vocab_size
    F1 = sp.csr_matrix((np.ones(len(r), dtype=np.int64), (r, c)), shape=(V, V))
    F1.sum_duplicates()
    Y = bigram_embedding(F1, 32, seed=0)
    X = sp.hstack([F1, F1.T]).toarray().astype(float)
    rank = np.linalg.matrix_rank(np.sqrt(X / np.maximum(X.sum(1, keepdims=True), 1)))
    # the dimensions beyond the text's rank are exactly zero, not ARPACK's arbitrary vectors
    assert (np.abs(Y).sum(0) > 0).sum() <= rank < 32
    labels = cluster_tokens(F1, 256, seed=0, embedding=Y)
    # any rotation (what a repeated singular value's vectors do run to run) + rounding noise
    rng = np.random.default_rng(1)
    for _ in range(5):
        Q, _ = np.linalg.qr(rng.standard_normal((Y.shape[1], Y.shape[1])))
        Y2 = Y @ Q + 1e-15 * rng.standard_normal(Y.shape)
        assert np.array_equal(cluster_tokens(F1, 256, seed=0, embedding=Y2), labels)
