"""The n-gram build on Dask equals the local build: the partition pieces without Dask, then the
whole build on a 2-worker LocalCluster (threads), orders 2-5."""
import numpy as np
import pytest

from lmkit.counts import count_ngrams, flat_buffer
from lmkit.errors import InputError, WorkerError
from lmkit.features import make_groups
from lmkit.model import LanguageModel
from lmkit.ngram.mkn import (_adjusted_counts, count_of_counts, order_discounts, solve_ngram,
                             solve_partition, stitch_partitions, unigram_level)
from lmkit.ngram.dask import count_windows, partition_windows, token_ranges


def local_counts(lines, tok, order):
    return count_ngrams([tok.encode_batch(lines)], tok.vocab_size, make_groups(0, order),
                        tok.bos_id, tok.eos_id)


def assert_same_model(a, b):
    """Same patterns and keys exactly, every value to 1e-12."""
    np.testing.assert_allclose(a.q, b.q, rtol=0, atol=1e-15)
    for Sa, Sb, ka, kb, ga, gb in zip(a.S, b.S, a.keys, b.keys, a.info["loggamma"],
                                      b.info["loggamma"]):
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_array_equal(Sa.indptr, Sb.indptr)
        np.testing.assert_array_equal(Sa.indices, Sb.indices)
        np.testing.assert_allclose(Sa.data, Sb.data, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-12)
    assert a.info["discounts"] == b.info["discounts"]


def test_token_ranges_balance_and_cover():
    assert token_ranges(np.array([0, 5, 5, 0, 10]), 2).tolist() == [0, 4, 5]
    assert token_ranges(np.array([0, 0, 5, 5, 0, 10]), 3).tolist() == [0, 3, 5, 6]
    assert token_ranges(np.array([7]), 4).tolist() == [0, 1]


def test_stitch_example():
    import scipy.sparse as sp
    V = 10
    part = lambda rows1, k2: ([sp.csr_matrix((rows1, V)), sp.csr_matrix((len(k2), V))],  # noqa: E731
                              [np.arange(rows1), np.array(k2)], [np.zeros(rows1), np.zeros(len(k2))])
    _, K, _ = stitch_partitions([part(2, [3, 14]), part(1, [2])], V)
    assert K[1].tolist() == [3, 14, 22]


def test_file_splits_tile_every_line_once(tmp_path):
    from lmkit.corpus import load_corpus
    from lmkit.ngram.dask import file_splits, split_lines
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffeins zwei\n\n  \ndrei é ü\r\nvier\nfünf fünf fünf fünf\nsechs".encode())
    want = list(load_corpus(input=[str(p)]))
    for size in (1, 2, 3, 5, 8, 13, 100):
        got = [x for f, a, b in file_splits([p], size) for x in split_lines(f, a, b)]
        assert got == want, size
    assert p.stat().st_size == 63
    assert [r[1:] for r in file_splits([p], 30)] == [(0, 30), (30, 60), (60, 63)]


def test_partition_windows_example():
    got = partition_windows(np.array([1, 5, 6, 2], dtype=np.int32), 1, np.array([0, 6, 9]), 2)
    assert [w.tolist() for w, _ in got] == [[[1, 5], [5, 6]], [[6, 2]]]
    assert [f.tolist() for _, f in got] == [[1, 0], [0]]
    empty = partition_windows(np.zeros(0, dtype=np.int32), 1, np.array([0, 6, 9]), 3)
    assert [w.shape for w, _ in empty] == [(0, 3), (0, 3)]


@pytest.mark.parametrize("order", [2, 3, 5])
def test_partitions_solved_apart_equal_solve_ngram(tiny_lines, tiny_tok, order):
    """windows per token range -> counted, adjusted and solved apart -> stitched == one solve,
    without Dask (the buffer is cut in two shards, as the client does)."""
    V, M, bos = tiny_tok.vocab_size, order - 1, tiny_tok.bos_id
    edges = np.array([0, 40, 41, 200, V])  # includes a one-token range
    shards = [flat_buffer([tiny_tok.encode_batch(x)], bos, tiny_tok.eos_id, 1)[0]
              for x in (tiny_lines[:100], tiny_lines[100:])]
    windows = [partition_windows(b, bos, edges, order) for b in shards]
    pieces = [count_windows([w[p] for w in windows], V, order) for p in range(len(edges) - 1)]
    c = local_counts(tiny_lines, tiny_tok, order)
    assert sum(p.n_tokens for p in pieces) == c.n_tokens
    assert np.array_equal(sum(p.target for p in pieces), c.target)
    adj = [[_adjusted_counts(p, m, M, bos) for m in range(M + 1)] for p in pieces]
    nk = np.zeros((M + 1, 4), dtype=np.int64)
    a1 = sum(x[0][0].toarray().ravel() for x in adj)
    nk[0] = count_of_counts(a1[a1 > 0])
    for x in adj:
        nk[1:] += [count_of_counts(x[m][0].data) for m in range(1, M + 1)]
    discounts, _ = order_discounts(nk)
    q = unigram_level(a1, discounts[0])
    parts = [solve_partition([a for a, _ in x], p.keys, [lk for _, lk in x], discounts, q, V)
             for x, p in zip(adj, pieces)]
    S, K, G = stitch_partitions(parts, V)
    ref = solve_ngram(c, bos_id=bos)
    assert ref.info["discounts"] == discounts
    np.testing.assert_array_equal(ref.q, q)
    for m in range(M):
        np.testing.assert_array_equal(K[m], ref.keys[m])
        np.testing.assert_allclose(S[m].toarray(), ref.S[m].toarray(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(G[m], ref.info["loggamma"][m], rtol=0, atol=1e-12)


# ---- on a LocalCluster ----------------------------------------------------------------------------
@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_dask_build_equals_local_build(tiny_lines, tiny_tok, order):
    pytest.importorskip("dask.distributed")
    from lmkit.ngram.dask import build_ngram_dask
    ref = solve_ngram(local_counts(tiny_lines, tiny_tok, order), bos_id=tiny_tok.bos_id)
    got, n_seq, n_tok = build_ngram_dask(iter(tiny_lines), tiny_tok, order, chunk_lines=70,
                                         partitions=3, n_workers=2, processes=False)
    assert n_seq == len(tiny_lines) and got.info["partitions"] == 3
    assert_same_model(got, ref)
    seqs = tiny_tok.encode_batch(tiny_lines[:40])
    lp_ref, _ = LanguageModel(tiny_tok, ref).log_proba_ids(seqs)
    lp, _ = LanguageModel(tiny_tok, got).log_proba_ids(seqs)
    assert np.max(np.abs(lp - lp_ref)) <= 1e-12


def test_dask_build_workers_read_the_files(tiny_lines, tiny_tok, tmp_path):
    """Workers read byte ranges of the files themselves: the same model as the local build."""
    pytest.importorskip("dask.distributed")
    from lmkit.ngram.dask import build_ngram_dask
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text("\n".join(tiny_lines[:120]) + "\n\n", encoding="utf-8")
    files[1].write_text("\n".join(tiny_lines[120:]), encoding="utf-8")
    ref = solve_ngram(local_counts(tiny_lines, tiny_tok, 4), bos_id=tiny_tok.bos_id)
    got, n_seq, n_tok = build_ngram_dask(None, tiny_tok, 4, files=files, split_bytes=2000,
                                         n_workers=2, processes=False)
    assert n_seq == len(tiny_lines)
    assert_same_model(got, ref)
    files[1].write_bytes("caf\xe9\n".encode("latin-1"))  # a worker's own InputError passes through
    with pytest.raises(InputError, match=r"b.txt: bytes at offset 3 are not valid UTF-8"):
        build_ngram_dask(None, tiny_tok, 4, files=files, n_workers=2, processes=False)


def test_dask_build_worker_error_is_one_line(tiny_lines, tiny_tok, monkeypatch):
    pytest.importorskip("dask.distributed")
    import lmkit.ngram.dask as nd

    def broken(*a):
        raise RuntimeError("disk gone\nsecond line")
    monkeypatch.setattr(nd, "_count_partition", broken)  # threads: workers see the patch
    with pytest.raises(WorkerError, match=r"^dask: counting a partition failed on a worker "
                                          r"\(RuntimeError: disk gone\); check"):
        nd.build_ngram_dask(iter(tiny_lines), tiny_tok, 3, chunk_lines=100, n_workers=2,
                            processes=False)


@pytest.mark.parametrize("workers_read", [None, False])
def test_train_engine_dask_builds_on_the_workers(tiny_corpus_file, tiny_tok_file, tiny_lines,
                                                 monkeypatch, workers_read):
    """``lmkit train --order 4 --engine dask`` takes the Dask build and gives the local model,
    with the workers reading the file (default on a LocalCluster) or receiving the text."""
    pytest.importorskip("dask.distributed")
    import importlib

    import lmkit
    from lmkit.ngram.dask import build_ngram_dask
    train_mod = importlib.import_module("lmkit.train")  # the module, not lmkit.train()
    seen = []

    def threads(*args, **kw):  # threads instead of processes: fast; records the input mode
        seen.append(kw["files"])
        return build_ngram_dask(*args, **kw, processes=False)
    monkeypatch.setattr(train_mod, "build_ngram_dask", threads)
    opts = dict(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=4, verbose=False)
    local = lmkit.train(**opts)
    dask = lmkit.train(**opts, engine="dask", workers=2, chunk_lines=60, workers_read=workers_read)
    assert seen == ([[tiny_corpus_file]] if workers_read is None else [None])
    assert dask.params.info["partitions"] >= 2 and dask.corpus == local.corpus
    assert_same_model(dask.params, local.params)
