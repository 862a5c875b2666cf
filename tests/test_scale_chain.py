"""The default model's suffix chain, counted and solved by the bucketed n-gram pipeline.

``rich_build._chain_task`` writes each target's window to the file of its previous token's
range (``ngram.disk.partition_positions``) and counts and solves every range on its own
(``ngram.build.solve_bucket_files``, the plain n-gram build's stages). Tested here against the
in-memory chain it replaces (the whole chain's counts, ``solve_ngram``, entry buckets and
folded weights per stored value): the same ``q``, ``S``, keys, entry buckets and info, bit for
bit, with many tiny buckets, with and without the second pass (carved held-out lines).
"""
import numpy as np
import pytest

from lmkit.counts import count_buffer, flat_buffer, flat_buffer_files
from lmkit.explicit import count_buckets
from lmkit.features import Suffix
from lmkit.ngram.mkn import solve_ngram

from test_rich import BOS, EOS, corpus

V = 40
EDGES = (2, 3, 5)
CHAIN = [Suffix(m) for m in range(1, 5)]  # an order-5 chain, as the default model's


def _texts():
    train = corpus(400, 0, V) + [[]] + [[7]] + corpus(50, 9, V)
    return train, corpus(60, 3, V)


def _counts(seqs, pad=3):
    buf, pos, starts, n = flat_buffer([seqs], BOS, EOS, pad)
    return count_buffer(buf, pos, starts, V, CHAIN, n)


def _reference(seqs, held=None, lam=None, discount=None):
    """Today's in-memory chain: the whole chain's counts (plus the held-out lines', as
    ``Counts.__add__``), ``solve_ngram``, then the int8 entry bucket of every stored value (its
    raw count), or with ``lam`` its weight folded in."""
    c = _counts(seqs) if held is None else _counts(seqs) + _counts(held)
    mkn = solve_ngram(c, discount=discount)
    out = []
    for g in range(len(CHAIN)):
        F = c.F[g].tocsr()
        F.sort_indices()
        b = count_buckets(F.data, EDGES).astype(np.int8)
        data = mkn.S[g].data if lam is None else mkn.S[g].data * lam[g][b]
        out.append((data, mkn.S[g], mkn.keys[g], None if lam is not None else b))
    return mkn.q, out, mkn.info, c.n_sequences, c.n_tokens


def _assert_same_chain(got, want):
    q, chain, info, n_seq, n_tok = got
    wq, wchain, winfo, wn_seq, wn_tok = want
    assert (n_seq, n_tok) == (wn_seq, wn_tok)
    assert np.array_equal(q, wq)
    for (S, k, b), (data, WS, wk, wb) in zip(chain, wchain, strict=True):
        assert S.shape == WS.shape
        assert np.array_equal(S.indptr, WS.indptr) and np.array_equal(S.indices, WS.indices)
        assert np.array_equal(S.data, data)  # bit for bit, not only to 1e-9
        assert np.array_equal(k, wk) and k.dtype == wk.dtype == np.int64
        assert (b is None and wb is None) or (b.dtype == np.int8 and np.array_equal(b, wb))
    assert {k: v for k, v in info.items() if k != "loggamma"} == \
        {k: v for k, v in winfo.items() if k != "loggamma"}
    assert all(np.array_equal(a, b) for a, b in zip(info["loggamma"], winfo["loggamma"],
                                                     strict=True))


@pytest.fixture
def tiny_buckets(monkeypatch):
    """Buckets of a few dozen positions under max_memory 1G (many partitions), and the number
    of buckets each chain task used."""
    from lmkit import rich_build
    from lmkit.ngram import build as ngram_build
    monkeypatch.setattr(ngram_build, "BYTES_PER_POSITION", (1 << 30) // 2 // 40)
    used = []
    real = rich_build.solve_bucket_files

    def spy(sources, *a, **k):
        used.append(len(sources))
        return real(sources, *a, **k)
    monkeypatch.setattr(rich_build, "solve_bucket_files", spy)
    return used


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("mapped", [False, True], ids=["in-memory", "max-memory"])
@pytest.mark.parametrize("discount", [None, 0.7])
def test_chain_in_buckets_equals_the_whole_chain(tmp_path, tiny_buckets, workers, mapped,
                                                discount):
    """First pass, then the second pass (the carved held-out lines' counts added to each
    bucket's training counts kept in the spill folder; or, without a spill folder as on a
    cluster at a scheduler address, both texts partitioned again): bit for bit the in-memory
    chain, in many buckets, counted by one or two processes, the arrays in memory or
    memory-mapped from the build's folder."""
    from lmkit.io.npyfile import mapped_base
    from lmkit.kinds import group_spec
    from lmkit.rich_build import _Job, _Spill, _Text, _chain_task
    train, held = _texts()
    spec = group_spec(CHAIN)
    folder = tmp_path / "build"
    folder.mkdir()
    text_dir = folder if mapped else None
    T = _Text([train[:200], train[200:]], V, BOS, EOS, 3, text_dir, "train")
    H = _Text([held], V, BOS, EOS, 3, text_dir, "held")
    scale = dict(workers=workers, max_memory=1 << 30, scratch=folder,
                 out=folder if mapped else None)
    lam = np.linspace(0.5, 1.5, len(CHAIN) * (len(EDGES) + 1)).reshape(len(CHAIN), -1)
    want1 = _reference(train, discount=discount)
    want2 = _reference(train, held, lam, discount)
    for spill in (_Spill(folder), None):
        got1 = _chain_task(_Job(T, None, spill, EDGES, **scale), spec, discount)
        _assert_same_chain(got1, want1)
        assert tiny_buckets[-1] > 10
        assert all((mapped_base(S.data) is not None) == mapped for S, _, _ in got1[1])
        if spill is not None:  # each bucket's training counts wait for the second pass
            kept = sorted(p.name for p in (folder / "chain-counts").glob("counts*.npz"))
            assert len(kept) == tiny_buckets[-1] and kept[0] == "counts00000.npz"
        got2 = _chain_task(_Job(None if spill else T, H, spill, EDGES, lam, **scale), spec,
                           discount)
        _assert_same_chain(got2, want2)
        assert not list(folder.glob("lmkit-chain-*"))  # the chain's scratch went
        assert not list(folder.glob("**/*.bin"))  # counted windows are removed


def test_partition_positions_counts_like_the_buffers(tmp_path, monkeypatch):
    """Windows of two padded, memory-mapped buffers appended to the same bucket files, read a
    few positions at a time: the buckets' counts add up to the two texts' counts."""
    from lmkit.ngram import disk
    from lmkit.ngram.disk import load_windows, partition_positions, previous_token_histogram
    from lmkit.ngram.build import edges_from_histogram
    monkeypatch.setattr(disk, "CHUNK_TOKENS", 7)
    train, held = _texts()
    texts = [flat_buffer_files([s], BOS, EOS, 3, tmp_path, name)
             for s, name in ((train, "t"), (held, "h"))]
    hist = previous_token_histogram(*texts[0][:2], V)
    assert hist.sum() == len(texts[0][1]) and hist[BOS] == len(train)
    edges = edges_from_histogram(hist, 6)
    paths = [tmp_path / f"w{b}.bin" for b in range(len(edges) - 1)]
    for buf, pos, starts, _ in texts:
        partition_positions(buf, pos, starts, 5, edges, paths, V)
    parts = [count_buffer(*load_windows(p, 5, V), V, CHAIN, 0) for p in paths]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    total.n_sequences = len(train) + len(held)
    assert len(paths) == 6 and total.equals(_counts(train) + _counts(held))
    # a bucket's rows: previous tokens in its range, history lengths within the order
    rows = load_windows(paths[2], 5, V)[0].reshape(-1, 5)
    assert ((rows[:, 3] >= edges[2]) & (rows[:, 3] < edges[3])).all()


def test_whole_build_with_tiny_chain_buckets_gives_the_same_model(tiny_buckets, tmp_path):
    """The default build under max_memory with the chain in many buckets (and 2 workers
    counting them): the same model as the in-memory build, nothing left in spill_dir."""
    from test_scale_rich import _build, _same_build
    extra = corpus(40, 3)
    for refit in (None, extra):
        one = _build(refit)
        _same_build(one, _build(refit, max_memory="1G", spill_dir=str(tmp_path)))
        assert tiny_buckets[-1] > 5
        _same_build(one, _build(refit, max_memory="1G", workers=2), tol=1e-9)
        assert list(tmp_path.iterdir()) == []


def test_failure_in_a_chain_bucket_leaves_nothing(tmp_path, monkeypatch):
    """An error while a bucket of the chain is solved: the error goes up, the windows, spills
    and arrays of the chain are gone with the build's folder."""
    import tempfile
    from lmkit.ngram import build as ngram_build
    from test_scale_rich import _build
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ngram_build, "BYTES_PER_POSITION", (1 << 30) // 2 // 40)
    calls = []
    real = ngram_build._solve_order

    def boom(*a, **k):
        calls.append(1)
        if len(calls) > 9:
            raise RuntimeError("disk full")
        return real(*a, **k)
    monkeypatch.setattr(ngram_build, "_solve_order", boom)
    for scale in (dict(max_memory="1G"), dict(max_memory="1G", workers=2)):
        calls.clear()
        with pytest.raises(RuntimeError, match="disk full"):
            _build(corpus(40, 3), **scale)
        assert list(tmp_path.iterdir()) == []


def test_chain_buckets_follow_parts_workers_and_the_limit():
    from lmkit.counts import PART_POSITIONS
    from lmkit.rich_build import chain_buckets
    assert chain_buckets(10 ** 7) == 3 == -(-10 ** 7 // PART_POSITIONS)
    assert chain_buckets(1000) == 1 and chain_buckets(1000, workers=4) == 4
    assert chain_buckets(10 ** 6, max_memory=10 ** 8) == 4  # 200 bytes a position, half each
    assert chain_buckets(10 ** 6, workers=2, max_memory=10 ** 8) == 8  # two buckets at once
