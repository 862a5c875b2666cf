"""The default (feature-rich) model's memory-saving build gives the same model.

``fit_rich(consume=True)`` frees the counts as the model takes their place, and the entry
buckets are kept in a small integer type: neither may change a single stored value.
"""
import numpy as np
import pytest

from lmkit.counts import count_chunk
from lmkit.explicit import count_buckets, entry_counts
from lmkit.rich import _entry_buckets, base_groups, cluster_groups, fit_rich, merge_groups, \
    solve_rich

from test_rich import BOS, EOS, corpus  # the same skip-gram-shaped tiny corpus


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


def _seqs_chunks(seqs, n=3):
    k = -(-len(seqs) // n)
    return [seqs[i:i + k] for i in range(0, len(seqs), k)]


@pytest.mark.parametrize("part", [None, 150])
def test_group_at_a_time_build_equals_count_rich_then_fit_rich(monkeypatch, part):
    """rich_build.build_rich (one group's counts at a time, counted in parts of ``part``
    positions) == count_rich + fit_rich, value for value, with and without carved held-out
    counts added back, with cluster tables and line positions."""
    from lmkit import counts as counts_mod
    from lmkit.rich import count_rich
    if part:
        monkeypatch.setattr(counts_mod, "PART_POSITIONS", part)
    from lmkit.rich_build import build_rich
    V = 14
    train, held, carved = corpus(300, 0, V), corpus(60, 1, V), corpus(40, 3, V)
    pb = np.arange(V) % 3 + 1  # bytes per token
    kw = dict(order=3, context=3, skips=((1, 1, 1), (1, 2, 1)),
              clusterings=((6, ((2, 0), (3, 1))), (3, ((2, 0),)), (6, ((2, 0),))),
              piece_bytes=pb, line_positions=((1, 2, 3, None), (0, 3, 2, 3)), seed=5)
    counts, tables = count_rich(_seqs_chunks(train), V, BOS, EOS, **kw)
    for refit in (None, carved):
        rc = None if refit is None else count_rich([refit], V, BOS, EOS, tables=tables, **kw)[0]
        want = fit_rich(rich_counts_copy(counts), held, BOS, EOS, refit=rc)
        got, got_tables, n_seq, n_tok = build_rich(
            _seqs_chunks(train), V, BOS, EOS, held,
            refit_chunks=None if refit is None else [refit], **kw)
        assert len(tables) == len(got_tables) == 3 and tables[2] is None and got_tables[2] is None
        assert all(np.array_equal(a, b) for a, b in zip(tables[:2], got_tables[:2]))
        assert [g.name for g in got.groups] == [g.name for g in want.groups]
        assert any(g.name.startswith("linepos0") for g in got.groups)
        assert same_params(got, want)
        assert got.info == want.info
        extra = 0 if refit is None else len(carved)
        assert n_seq == len(train) + extra


def rich_counts_copy(counts):
    from lmkit.counts import Counts
    return Counts(counts.vocab_size, list(counts.groups), list(counts.F), list(counts.keys),
                  counts.target, counts.n_sequences, counts.n_tokens)


@pytest.mark.parametrize("key_chunk", [None, 37])
def test_count_in_parts_equals_count_buffer_for_every_kind(key_chunk, monkeypatch):
    """Counting a few thousand positions at a time, by token range (suffix chain, windows) or
    row-key range (every other kind): the very same arrays and dtypes as one pass; also with
    the row keys computed 37 positions at a time (chunks cut lines: line positions read the
    buffer back to their line's start)."""
    from lmkit import counts
    if key_chunk:
        monkeypatch.setattr(counts, "KEY_CHUNK", key_chunk)
    from lmkit.clusters import ClusterHistory
    from lmkit.counts import count_buffer, count_in_parts, flat_buffer
    from lmkit.features import Skip, Suffix, Window
    from lmkit.linepos import LinePosition
    V = 14
    seqs = corpus(500, 4, V) + [[]]
    buf, pos, starts, n_seq = flat_buffer([seqs[:200], seqs[200:]], BOS, EOS, 3)
    table = tuple(int(x) for x in np.arange(V) % 4)
    pb = tuple(int(x) for x in np.arange(V) % 3 + 1)
    cases = [[Suffix(m) for m in range(1, 5)], [Window(2)], [Window(3)], [Skip(1, 1, 1)],
             [Skip(1, 1, 2)], [ClusterHistory(3, 1, table)], [ClusterHistory(2, 0, table)],
             [LinePosition(1, 2, 3, pb, None)], [LinePosition(0, 3, 2, pb, table)]]
    for groups in cases:
        want = count_buffer(buf, pos, starts, V, groups, n_seq)
        seen = []

        def mapper(fn, parts):  # as the worker processes: any order of work, results in order
            parts = list(parts)
            seen.append(len(parts))
            return [r for _, r in sorted((p, fn(p)) for p in reversed(parts))]
        for part, kw in ((97, {}), (1000, {}), (10 ** 9, dict(min_parts=3, mapper=mapper))):
            got = count_in_parts(buf, pos, starts, V, groups, n_seq, part_positions=part, **kw)
            assert got.equals(want), groups
            for a, b, ka, kb in zip(got.F, want.F, got.keys, want.keys):
                for x, y in ((a.data, b.data), (a.indices, b.indices), (a.indptr, b.indptr)):
                    assert x.dtype == y.dtype and np.array_equal(x, y), groups
                assert (ka is None and kb is None) or (ka.dtype == kb.dtype
                                                       and np.array_equal(ka, kb))
        assert seen and seen[0] >= 2  # min_parts split it, the mapper counted the parts


def test_a_part_bigger_than_it_may_be_is_counted_in_runs(monkeypatch):
    """A part holding more positions than are counted at once (one frequent row: here one
    token, so the cuts collapse into one or two parts) is counted in runs of ``at_once``
    positions whose counts add up: the same arrays and dtypes as one pass, for the chain, a
    window and a keyed kind; and no run holds more than ``at_once`` positions."""
    from lmkit import counts
    from lmkit.counts import RowParts, count_buffer, count_in_parts, flat_buffer
    from lmkit.features import Skip, Suffix, Window
    V, at_once = 9, 50
    rng = np.random.default_rng(5)
    seqs = [[4] * int(n) for n in rng.integers(0, 30, 60)] + [[5, 4, 6] * 20]
    buf, pos, starts, n_seq = flat_buffer([seqs], BOS, EOS, 3)
    sizes = []
    run = RowParts._count_run
    monkeypatch.setattr(RowParts, "_count_run",
                        lambda self, got: sizes.append(sum(len(x) for x, _ in got)) or run(self, got))
    for groups in ([Suffix(1), Suffix(2)], [Window(2)], [Skip(1, 1, 1)]):
        want = count_buffer(buf, pos, starts, V, groups, n_seq)
        got = count_in_parts(buf, pos, starts, V, groups, n_seq, part_positions=at_once)
        assert got.equals(want), groups
        for a, b in zip(got.F, want.F):
            for x, y in ((a.data, b.data), (a.indices, b.indices), (a.indptr, b.indptr)):
                assert x.dtype == y.dtype and np.array_equal(x, y), groups
        parts = RowParts(buf, pos, starts, V, groups, part_positions=at_once)
        sizes.clear()
        for p in range(parts.n_parts):
            parts.count(p)
        assert len(sizes) > parts.n_parts and max(sizes) <= at_once, groups
    assert len(pos) > 10 * at_once and counts.PART_POSITIONS > at_once


@pytest.mark.parametrize("key_chunk", [None, 37])
def test_part_keys_kept_between_cutting_and_counting_give_the_same_counts(key_chunk,
                                                                         monkeypatch):
    """``RowParts(keep_keys=True)`` keeps every position's part key from cutting the parts
    (computed once) and counts each part from them: the same arrays as computing them again,
    for every keyed kind (the chain and windows find their rows by token: nothing kept)."""
    from lmkit import counts
    if key_chunk:
        monkeypatch.setattr(counts, "KEY_CHUNK", key_chunk)
    from lmkit.clusters import ClusterHistory
    from lmkit.counts import RowParts, flat_buffer
    from lmkit.features import Skip, Suffix, Window
    from lmkit.linepos import LinePosition
    V = 14
    buf, pos, starts, _ = flat_buffer([corpus(300, 4, V)], BOS, EOS, 3)
    table = tuple(int(x) for x in np.arange(V) % 4)
    pb = tuple(int(x) for x in np.arange(V) % 3 + 1)
    for g in (Skip(1, 1, 1), ClusterHistory(3, 1, table), LinePosition(0, 3, 2, pb, table),
              Window(2), Suffix(1)):
        plain = RowParts(buf, pos, starts, V, [g], part_positions=97)
        kept = RowParts(buf, pos, starts, V, [g], part_positions=97, keep_keys=True)
        assert (kept._keys is not None) == (not isinstance(g, (Window, Suffix)))
        assert plain.n_parts == kept.n_parts > 3
        for p in range(plain.n_parts):
            for (F, k), (G, kg) in zip(plain.count(p), kept.count(p)):
                assert (F != G).nnz == 0 and F.shape == G.shape
                assert (k is None and kg is None) or np.array_equal(k, kg)


def test_a_group_task_run_again_keeps_only_its_own_blocks(tmp_path):
    """Dask runs a task again when its worker is lost: the first pass's blocks kept in the
    spill folder are those of the last run, not the lost run's followed by its (which gave
    unsorted row keys: a model refused when it was read back)."""
    from lmkit.features import Skip
    from lmkit.rich_build import _Job, _Spill, _Text
    text = _Text([corpus(300, 0)], 14, BOS, EOS, 3)
    job = _Job(text, None, _Spill(tmp_path), (2, 3))
    job.blocks(Skip(1, 1, 1), 4)
    first = sorted(p.name for p in (tmp_path / "g4").iterdir())
    kept = job.blocks(Skip(1, 1, 1), 4)
    assert sorted(p.name for p in (tmp_path / "g4").iterdir()) == first
    keys = np.concatenate([k for _, k in kept])
    assert len(kept) >= 1 and (np.diff(keys) > 0).all()


def test_flat_buffer_files_equal_flat_buffer(tmp_path, monkeypatch):
    """The token buffer written a chunk at a time and memory-mapped: the values of
    ``flat_buffer``, indices in int32 (as rich_build keeps them in memory), or in int64 when
    the buffer outgrows int32 (the limit lowered here: the written part is widened)."""
    from lmkit import counts as counts_mod
    from lmkit.counts import flat_buffer, flat_buffer_files
    from lmkit.io.npyfile import mapped_base
    seqs = corpus(200, 4) + [[]]
    chunks = [seqs[:70], [], seqs[70:150], seqs[150:]]
    want = flat_buffer(chunks, BOS, EOS, 3)
    got = flat_buffer_files(chunks, BOS, EOS, 3, tmp_path, "t")
    assert got[3] == want[3] and got[0].dtype == np.int32
    for a, b in zip(got[:3], want[:3]):
        assert mapped_base(a) is not None and np.array_equal(a, b)
    assert got[1].dtype == got[2].dtype == np.int32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.buf.npy", "t.pos.npy", "t.starts.npy"]
    monkeypatch.setattr(counts_mod, "INDEX32", len(want[0]) // 2)  # crossed in the 3rd chunk
    wide = flat_buffer_files(chunks, BOS, EOS, 3, tmp_path, "w")
    assert wide[1].dtype == wide[2].dtype == np.int64
    assert all(np.array_equal(a, b) for a, b in zip(wide[:3], want[:3]))
    assert not list(tmp_path.glob("*.wide.npy"))


def test_spilled_training_counts_are_removed_on_success_and_on_failure(tmp_path, monkeypatch):
    """With carved held-out lines the first pass keeps each group's training counts on disk
    for the second; the folder goes when the build ends, also when it fails half-way."""
    import tempfile
    from lmkit import rich_build
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    kw = dict(order=3, context=3, skips=((1, 1, 1),), clusterings=((6, ((2, 0),)),))
    seen = []
    real_blocks = rich_build._Spill.blocks

    def spy(self, g, **kw):
        kept = real_blocks(self, g, **kw)
        if len(kept):  # the second pass, reading what the first kept
            seen.append(sorted(p.name for p in self.folder.iterdir()))
        return kept
    monkeypatch.setattr(rich_build._Spill, "blocks", spy)
    rich_build.build_rich([corpus(200, 0)], 14, BOS, EOS, corpus(40, 1),
                          refit_chunks=[corpus(30, 3)], **kw)
    # it did spill: the groups' counts, and the suffix chain's counts (tests/test_scale_chain.py)
    assert seen and "chain-counts" in seen[0] and any(n.startswith("g") for n in seen[0])
    assert list(tmp_path.iterdir()) == []

    def boom(*a, **k):
        raise RuntimeError("worker lost")
    monkeypatch.setattr(rich_build, "closed_form", boom)
    with pytest.raises(RuntimeError, match="worker lost"):
        rich_build.build_rich([corpus(200, 0)], 14, BOS, EOS, corpus(40, 1),
                              refit_chunks=[corpus(30, 3)], **kw)
    assert list(tmp_path.iterdir()) == []


# ---- the same model on every route: worker processes, Dask, under max_memory ---------------
RICH_KW = dict(order=3, context=3, skips=((1, 1, 1), (1, 2, 1)),
               clusterings=((6, ((2, 0), (3, 1))), (3, ((2, 0),))),
               piece_bytes=np.arange(14) % 3 + 1, line_positions=((1, 2, 3, None), (0, 3, 2, 3)),
               seed=5)


def _build(refit, **scale):
    from lmkit.rich_build import build_rich
    train, held = corpus(300, 0), corpus(60, 1)
    return build_rich(_seqs_chunks(train), 14, BOS, EOS, held,
                      refit_chunks=None if refit is None else [refit], **RICH_KW, **scale)


def _same_build(a, b, tol=0.0):
    """The same build: value for value, or (``tol`` > 0) the same tables, keys, patterns and
    info with the weights and the stored values equal to ``tol`` (relative): the weight
    search's terms added in another order."""
    (pa, ta, sa, na), (pb, tb, sb, nb) = a, b
    assert (sa, na) == (sb, nb)
    assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(ta, tb))
    if not tol:
        assert same_params(pa, pb) and pa.info == pb.info
        return
    assert pa.groups == pb.groups and np.array_equal(pa.q, pb.q)
    for x, y in zip(pa.S, pb.S):
        assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
        assert np.allclose(x.data, y.data, rtol=tol, atol=0)
    assert np.allclose(pa.info["entry_lambdas"], pb.info["entry_lambdas"], rtol=0, atol=tol)
    skip = ("entry_lambdas", "lambda_trace")
    assert {k: v for k, v in pa.info.items() if k not in skip} == \
        {k: v for k, v in pb.info.items() if k not in skip}


@pytest.mark.parametrize("refit", [False, True], ids=["own-valid", "carved-refit"])
def test_worker_processes_build_the_same_model(refit):
    """--workers 2 (each group counted and solved in a worker process, rebuilt there through
    the kinds registry, the weight search's pieces there too): every stored value equal to
    the one-process build (to 1e-9: see below), with and without the carved held-out lines'
    second pass."""
    extra = corpus(40, 3) if refit else None
    one = _build(extra)
    assert any(g.name.startswith("linepos") for g in one[0].groups)
    assert any(g.name.startswith("cluster") for g in one[0].groups)
    # the tiny held-out text is one chunk of the weight search: it is cut into pieces for the
    # workers, whose terms are added in another order (more chunks than workers: bit for bit,
    # tests/test_heldout_nll.py)
    _same_build(one, _build(extra, workers=2), tol=1e-9)
    _same_build(one, _build(extra, workers=3), tol=1e-9)


@pytest.mark.parametrize("refit", [False, True], ids=["own-valid", "carved-refit"])
def test_max_memory_build_maps_the_model_and_gives_the_same_model(refit, tmp_path,
                                                                   monkeypatch):
    """max_memory: the token buffers are written to .npy and memory-mapped, and so are the
    model's arrays as each group is solved; same values; the spill folder (in spill_dir) is
    gone afterwards."""
    from lmkit.io.npyfile import mapped_base
    extra = corpus(40, 3) if refit else None
    one = _build(extra)
    from lmkit import rich_build
    texts = []
    real_text = rich_build._Text.__init__

    def spy(self, *a, **k):
        real_text(self, *a, **k)
        texts.append(self)
    monkeypatch.setattr(rich_build._Text, "__init__", spy)
    got = _build(extra, max_memory="1G", spill_dir=str(tmp_path))
    _same_build(one, got)
    assert all(mapped_base(S.data) is not None for S in got[0].S)
    # the token buffers (training text, and the carved lines' for the second pass) were
    # memory-mapped from the spill folder
    assert len(texts) == (2 if refit else 1)
    assert all(mapped_base(t.buf) is not None and mapped_base(t.pos) is not None
               and t.resident_nbytes() == 0 for t in texts)
    assert list(tmp_path.iterdir()) == []
    got2 = _build(extra, max_memory="1G", workers=2)
    _same_build(one, got2, tol=1e-9)


@pytest.mark.parametrize("refit", [False, True], ids=["own-valid", "carved-refit"])
def test_groups_solved_a_block_of_rows_at_a_time_give_the_same_model(refit, tmp_path,
                                                                     monkeypatch):
    """Each group is counted and solved a block of rows at a time (``counts.RowParts``): with
    parts of 40 positions (dozens of blocks, the skip-like groups' marginal summed over
    them, the carved lines cut into the training text's blocks) the model is the one-block
    build's, value for value, in memory and under max_memory (blocks and solved arrays on
    disk, mapped); on worker processes to 1e-9 (the weight search's sums)."""
    from lmkit import counts, rich_build
    from lmkit.io.npyfile import mapped_base
    extra = corpus(40, 3) if refit else None
    one = _build(extra)
    seen = []
    real_put = rich_build._Solved.add

    def spy(self, *a):
        seen.append(self.folder is not None)
        return real_put(self, *a)
    monkeypatch.setattr(rich_build._Solved, "add", spy)
    monkeypatch.setattr(counts, "PART_POSITIONS", 40)
    n_groups = len(one[0].groups) - sum(g.name.startswith("suffix") for g in one[0].groups)
    _same_build(one, _build(extra))
    assert len(seen) > 5 * n_groups * (2 if refit else 1)  # many blocks a group
    seen.clear()
    got = _build(extra, max_memory="1G", spill_dir=str(tmp_path))
    _same_build(one, got)
    assert seen and all(seen)  # written to disk block by block
    assert all(mapped_base(S.data) is not None for S in got[0].S)
    assert list(tmp_path.iterdir()) == []
    _same_build(one, _build(extra, max_memory="1G", workers=2), tol=1e-9)


def test_first_pass_solves_only_the_held_out_rows_and_gives_the_same_model(monkeypatch,
                                                                           tmp_path):
    """With a second pass to come, the first pass solves only the rows the weight search reads
    (``heldout_keys``): value for value the model of a first pass that solves every row, also
    a block of rows at a time and under max_memory; fewer values solved; the memory check and
    the log still count the whole model."""
    from lmkit import counts, rich_build
    extra = corpus(40, 3)
    solved = []
    real = rich_build._solve_blocks

    def spy(job, q, g, group, blocks):
        out = real(job, q, g, group, blocks)
        solved.append((job.held is None, _opened(out)[0].nnz))
        return out
    _opened = rich_build._opened
    monkeypatch.setattr(rich_build, "_solve_blocks", spy)
    lines = []
    got = rich_build.build_rich(_seqs_chunks(corpus(300, 0)), 14, BOS, EOS, corpus(60, 1),
                                refit_chunks=[extra], log=lines.append, **RICH_KW)
    first_few = sum(n for first, n in solved if first)
    monkeypatch.setattr(rich_build, "heldout_keys", lambda *a: None)  # every row, both passes
    solved.clear()
    lines_all = []
    want = rich_build.build_rich(_seqs_chunks(corpus(300, 0)), 14, BOS, EOS, corpus(60, 1),
                                 refit_chunks=[extra], log=lines_all.append, **RICH_KW)
    _same_build(got, want)
    assert first_few < sum(n for first, n in solved if first)
    stored = [x for x in lines if "stored values" in x]
    assert stored and stored == [x for x in lines_all if "stored values" in x]
    monkeypatch.undo()
    monkeypatch.setattr(counts, "PART_POSITIONS", 40)  # many blocks: rows keyed and by token
    _same_build(want, _build(extra))
    _same_build(want, _build(extra, max_memory="1G", spill_dir=str(tmp_path)))


def test_rows_in_keeps_the_wanted_rows():
    """A keyed block keeps the rows of the wanted keys; a block of rows keyed by token keeps
    its shape, the other rows emptied."""
    import scipy.sparse as sp
    from lmkit.rich_build import _rows_in
    F = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0], [4, 0, 0], [0, 0, 5]]))
    G, k, nxt = _rows_in(F, np.array([2, 5, 9, 11]), np.array([5, 11, 12]), 0)
    assert k.tolist() == [5, 11] and G.toarray().tolist() == [[0, 3, 0], [0, 0, 5]]
    G, k, nxt = _rows_in(F, None, np.array([5, 7, 12]), 4)  # rows 4..7 of the group
    assert k is None and nxt == 8 and G.shape == F.shape
    assert G.toarray().tolist() == [[0, 0, 0], [0, 3, 0], [0, 0, 0], [0, 0, 5]]
    G, k, _ = _rows_in(F, np.array([2, 5, 9, 11]), np.array([], dtype=np.int64), 0)
    assert G.shape == (0, 3) and len(k) == 0


def test_a_marginal_summed_over_blocks_solves_each_block_as_the_whole_group():
    """``skipgram.Marginal``: the sum of the blocks' marginals is the whole group's, and a
    block solved with it equals that block of the whole group's solution, bit for bit; a
    marginal that misses a block's adjacent part is refused."""
    from lmkit.counts import count_buffer, flat_buffer
    from lmkit.features import Skip
    from lmkit.skipgram import Marginal, solve_skip
    V = 14
    buf, pos, starts, n_seq = flat_buffer([corpus(300, 0)], BOS, EOS, 3)
    c = count_buffer(buf, pos, starts, V, [Skip(1, 2, 1)], n_seq)
    F, k = c.F[0], c.keys[0]
    assert F.shape[0] > 20
    q = np.full(V, 1.0 / V)
    whole = solve_skip(F, k, 1, q, 0.6)
    cut = [0, 7, 20, F.shape[0]]
    blocks = [(F[a:b], k[a:b]) for a, b in zip(cut, cut[1:])]
    total = Marginal.of(*blocks[0], 1, V) + Marginal.of(*blocks[1], 1, V) \
        + Marginal.of(*blocks[2], 1, V)
    ref = Marginal.of(F, k, 1, V)
    assert np.array_equal(total.keys, ref.keys) and (total.M != ref.M).nnz == 0
    for (Fb, kb), a, b in zip(blocks, cut, cut[1:]):
        got = solve_skip(Fb, kb, 1, q, 0.6, marginal=total)
        assert np.array_equal(got.data, whole.data[whole.indptr[a]:whole.indptr[b]])
    part = Marginal.of(*blocks[0], 1, V)
    with pytest.raises(ValueError, match="does not cover"):
        solve_skip(F, k, 1, q, 0.6, marginal=part)


def test_the_model_does_not_depend_on_the_free_memory(monkeypatch):
    """The weight search uses every held-out position whatever memory is free: with almost
    none (``solve.fit_heldout`` would have kept every 100th position or so) the model is the
    same, value for value."""
    from lmkit import solve
    one = _build(corpus(40, 3))
    monkeypatch.setattr(solve, "default_limit", lambda: 1000)  # what fit_heldout thinned by
    _same_build(one, _build(corpus(40, 3)))


def test_max_memory_too_small_is_refused_before_counting():
    from lmkit.errors import MemoryLimitError
    with pytest.raises(MemoryLimitError, match=r"buffer of ids and counting\) needs .* raise max_memory"):
        _build(None, max_memory="1K")


def _heldout_logp(params, held):
    from lmkit.scoring import context_rows, sparse_log_proba
    rows, targets, _ = context_rows(params.groups, params.keys, held, 14, BOS, EOS)
    return sparse_log_proba(params, rows, targets)


@pytest.mark.parametrize("workers", [1, 2])
def test_bounded_weight_search_in_tiny_pieces_gives_the_same_model(monkeypatch, workers):
    """max_memory with the search's bytes per entry raised so that its pieces hold a few
    hundred entries and only a few are kept (the others built again at every evaluation):
    the whole default build equals the in-memory one to 1e-9 in log p, the weights to 1e-9;
    with 2 workers the pieces are built and evaluated in the worker processes."""
    from lmkit import heldout_nll
    from lmkit.heldout_nll import HeldoutPlan
    extra = corpus(40, 3)
    one = _build(extra)
    plans = []
    real_init = HeldoutPlan.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        plans.append(self)
    monkeypatch.setattr(HeldoutPlan, "__init__", spy)
    per_entry = (1 << 30) // 2 // 400  # "1G" leaves pieces of ~400 entries (and a cache of as many)
    monkeypatch.setattr(heldout_nll, "BUILD_BYTES", per_entry)
    monkeypatch.setattr(heldout_nll, "HELD_BYTES", per_entry)
    got = _build(extra, max_memory="1G", workers=workers)
    plan = plans[-1]
    assert len(plan.pieces) > 3 * plan.n_chunks  # the search really was cut into pieces
    held = corpus(60, 1)
    assert np.abs(_heldout_logp(got[0], held) - _heldout_logp(one[0], held)).max() <= 1e-9
    assert np.abs(np.array(got[0].info["entry_lambdas"])
                  - np.array(one[0].info["entry_lambdas"])).max() <= 1e-9


@pytest.mark.parametrize("refit", [False, True], ids=["own-valid", "carved-refit"])
def test_dask_builds_the_same_model(refit, monkeypatch):
    """engine dask (a LocalCluster of threads, as the other Dask tests): the same model; with
    the refit pass, the first pass's training counts are kept in the spill folder (this
    machine's disk), so the training text is cut into parts once per group, not twice."""
    pytest.importorskip("dask.distributed")
    from lmkit import rich_build
    extra = corpus(40, 3) if refit else None
    one = _build(extra)
    calls = []
    parts = rich_build._Text.parts
    monkeypatch.setattr(rich_build._Text, "parts",
                        lambda self, group, cuts=None, **kw: calls.append(cuts is None)
                        or parts(self, group, cuts, **kw))
    _same_build(one, _build(extra, engine="dask", workers=2, dask_processes=False))
    if refit:  # the training text's parts (no cuts given) once, the held-out lines' once
        assert calls and calls.count(True) == calls.count(False)


# ---- lmkit train on the default route: the same model whatever the scale options -----------
def _logp(model, lines):
    return model.log_proba_ids(model.encode_lines(lines))[0]


@pytest.mark.parametrize("scale", [dict(workers=2), dict(max_memory="1G"),
                                   dict(workers=2, max_memory="1G"),
                                   dict(engine="dask", workers=2),
                                   dict(engine="dask", workers=2, max_memory="1G")],
                         ids=["workers2", "max-memory", "workers2+max-memory", "dask",
                              "dask+max-memory"])
def test_train_default_route_same_model_on_every_scale_route(tiny_corpus_file, tiny_tok_file,
                                                             tiny_lines, tmp_path, scale):
    """``lmkit.train`` on own files (held-out lines carved, so the refit pass runs): max |d log
    p| <= 1e-9 on test lines against the one-process build; the manifest records the options."""
    import lmkit
    if scale.get("engine") == "dask":
        pytest.importorskip("dask.distributed")
    opts = dict(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), verbose=False)
    one = lmkit.train(**opts)
    if scale.get("max_memory") and scale.get("engine") != "dask":
        scale = {**scale, "spill_dir": str(tmp_path)}
    got = lmkit.train(**opts, **scale)
    test = tiny_lines[::7][:40]
    assert np.max(np.abs(_logp(one, test) - _logp(got, test))) <= 1e-9
    assert {k: got.config[k] for k in scale} == scale
    assert one.config.get("workers") in (None, 1) and one.config.get("max_memory") is None
    assert list(tmp_path.iterdir()) == []  # the spill folder went


def test_a_mapped_text_travels_as_its_files_paths(tmp_path):
    """Under max_memory on a LocalCluster the token buffers are mapped from the build's folder
    and a task's text is pickled as their paths (mapped again by the worker: one copy of the
    text on the machine, not one per worker); a text in memory travels as it is; a file that
    changed size since is refused."""
    import pickle

    from lmkit.rich_build import _Text
    seqs = corpus(2000, 0)
    mapped = _Text([seqs], 14, BOS, EOS, 3, folder=tmp_path)
    held = _Text([seqs], 14, BOS, EOS, 3)
    blob = pickle.dumps(mapped)
    assert len(blob) < 2000 < mapped.nbytes() and len(pickle.dumps(held)) > mapped.nbytes()
    back = pickle.loads(blob)
    for name in ("buf", "pos", "starts"):
        a, b = getattr(back, name), getattr(mapped, name)
        assert isinstance(a, np.memmap) and a.dtype == b.dtype and np.array_equal(a, b)
    assert (back.n_seq, back.V) == (mapped.n_seq, mapped.V)
    np.save(tmp_path / "text.buf.npy", np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match="changed since it was written"):
        pickle.loads(blob)


def test_a_task_result_on_a_local_cluster_travels_as_paths(tmp_path):
    """``rich_build._to_refs``: a task's result whose arrays are whole ``.npy`` files (what a
    LocalCluster's chain task writes under max_memory) pickles as their paths, and
    ``_from_refs`` maps them again: the same arrays, CSR matrices and nesting; arrays in memory
    travel as they are."""
    import pickle

    import scipy.sparse as sp

    from lmkit.io.npyfile import NpyAppender, mapped_base, open_npy
    from lmkit.rich_build import _from_refs, _to_refs

    def npy(name, a):
        w = NpyAppender(tmp_path / f"{name}.npy", a.dtype)
        w.append(a)
        return open_npy(w.close())
    rng = np.random.default_rng(0)
    S = sp.random(300, 50, density=0.2, format="csr", random_state=0)
    mapped = sp.csr_matrix((npy("d", S.data), npy("i", S.indices.astype(np.int32)),
                            npy("p", S.indptr.astype(np.int32))), shape=S.shape, copy=False)
    q = rng.random(50)
    res = (q, [(mapped, npy("k", np.arange(300, dtype=np.int64)), None)],
           {"loggamma": [npy("g", rng.random(300))], "bos_id": 1}, 7, 9)
    blob = pickle.dumps(_to_refs(res))
    assert len(blob) < 3000 < S.data.nbytes + 400  # paths, and q (in memory) as it is
    back = _from_refs(pickle.loads(blob))
    (q2, [(S2, k2, e2)], info2, a, b) = back
    assert np.array_equal(q2, q) and (S2 != S).nnz == 0 and e2 is None and (a, b) == (7, 9)
    assert mapped_base(S2.data) is not None and np.array_equal(k2, np.arange(300))
    assert np.array_equal(info2["loggamma"][0], res[2]["loggamma"][0])
    assert info2["bos_id"] == 1


def _die_on_group_5(job, q, g, spec):
    import os
    import signal
    if g == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return _REAL_GROUP_TASK(job, q, g, spec)


_REAL_GROUP_TASK = None


def _die_in_chain(*a):
    import os
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def _die_in_search(item):
    import os
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("stage, who", [("groups", "a counting worker"),
                                        ("chain", "a counting worker"),
                                        ("search", "a weight-search worker")])
def test_killed_worker_ends_the_run_with_one_line(tiny_corpus_file, tiny_tok_file, tmp_path,
                                                  capsys, monkeypatch, stage, who):
    """A worker killed outright (SIGKILL, as the OOM killer does) while it counts a group or
    counts a bucket of the suffix chain, or computes the weight search's terms: one line naming it, exit 2, no model, no spill files,
    no process left."""
    import multiprocessing as mp
    import tempfile
    from cli_helpers import one_error_line, run_cli
    from lmkit import heldout_nll, rich_build
    global _REAL_GROUP_TASK
    _REAL_GROUP_TASK = rich_build._group_task
    from lmkit.ngram import build as ngram_build
    if stage == "groups":  # fork copies the patch
        monkeypatch.setattr(rich_build, "_group_task", _die_on_group_5)
    elif stage == "chain":
        monkeypatch.setattr(ngram_build, "_count_bucket", _die_in_chain)
    else:
        monkeypatch.setattr(heldout_nll, "_worker_terms", _die_in_search)
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    out = tmp_path / "m"
    code, _, err = run_cli(capsys, "train", "--input", tiny_corpus_file, "--tokenizer",
                           tiny_tok_file, "--workers", "2", "--output", out, "--no-verbose")
    one_error_line(code, err, who + r" \(pid \d+\) was killed by signal 9")
    assert not out.exists() and list(spill.iterdir()) == []
    assert mp.active_children() == []


SIGNAL_SCRIPT = """
import os, sys, time
from lmkit import heldout_nll, rich_build
def slow(real):
    def run(*a):
        open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
        time.sleep(30)
        return real(*a)
    return run
if sys.argv[2] == "groups":
    rich_build._group_task = slow(rich_build._group_task)
elif sys.argv[2] == "chain":
    from lmkit.ngram import build
    build._count_bucket = slow(build._count_bucket)
else:
    heldout_nll._worker_terms = slow(heldout_nll._worker_terms)
from lmkit.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("stage", ["groups", "chain", "search"])
@pytest.mark.parametrize("sig, code, message", [
    ("SIGINT", 130, "lmkit: interrupted"), ("SIGTERM", 143, "lmkit: terminated")])
def test_signal_during_the_worker_build_stops_everything(tiny_corpus_file, tiny_tok_file,
                                                         tmp_path, sig, code, message, stage):
    """Ctrl-C (the whole process group) or SIGTERM (the parent) while the default model's
    groups (or the suffix chain's buckets) are counted by 2 workers, or while 2 workers compute the weight search's terms:
    the run ends at once with its one line, every worker is gone, no model and no spill file
    is left."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    from cli_helpers import default_sigint
    from test_faults import alive
    pids, spill = tmp_path / "pids", tmp_path / "spill"
    pids.mkdir()
    spill.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), TMPDIR=str(spill))
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, str(pids), stage, "train", "--input", str(tiny_corpus_file),
         "--tokenizer", str(tiny_tok_file), "--workers", "2", "--output", str(tmp_path / "m")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.05)
        workers = [int(p.name) for p in pids.iterdir()]
        if sig == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=15)
        assert time.monotonic() - t0 < 8
        assert proc.returncode == code, err
        assert err.strip().splitlines()[-1:] == [message] and "Traceback" not in err, err
        time.sleep(0.3)
        assert not [w for w in workers if alive(w)], "workers survived"
        assert list(spill.iterdir()) == [] and not (tmp_path / "m").exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(timeout=5)


def test_a_new_kind_is_solved_by_the_group_tasks_on_every_runner(monkeypatch):
    """The default build's group tasks rebuild each group from its spec through the kinds
    registry: a kind registered once is counted and solved by worker processes and on Dask
    exactly as in this process."""
    from lmkit import kinds
    from lmkit.explicit import solve_group
    from lmkit.features import Suffix
    from lmkit.kinds import group_spec
    from lmkit.rich_build import _Job, _Runner, _Text, _chain_task
    from test_kinds import Parity
    monkeypatch.setattr(kinds, "_KINDS", list(kinds._KINDS))
    kinds.register(kinds.Kind("parity", Parity, r"parity2", "parity2", build=lambda f, t: Parity(),
                              closed_form=lambda g, F, keys, q, d: solve_group(F, q, d)))
    text = _Text([corpus(200, 0)], 14, BOS, EOS, 3)
    job = _Job(text, None, None, (2, 3))
    q = _chain_task(job, group_spec([Suffix(1), Suffix(2)]), None)[0]
    items = [(2, group_spec([Parity()]))]
    want = list(_Runner().groups(job, q, items))
    assert want[0][0].nnz > 0 and list(want[0][1]) == [0, 1, 2, 3]
    runs = [list(_Runner(workers=2).groups(job, q, items * 2))[:1]]
    pytest.importorskip("dask.distributed")
    from lmkit.distributed import dask_client
    with dask_client(None, 2, processes=False) as client:
        runs.append(list(_Runner(client=client).groups(job, q, items)))
    for got in runs:
        (S, k, b), = got
        (S0, k0, b0), = want
        assert (S != S0).nnz == 0 and np.array_equal(k, k0) and np.array_equal(b, b0)


def test_count_in_parts_holds_no_per_position_keys(monkeypatch):
    """The row keys are computed a chunk of positions at a time and each position keeps only
    its part number (one byte): counting 1M positions of a skip-gram of 4 tokens out of 3
    (81 row keys, so the counts are small) in parts of 20,000 allocates under 6 bytes a
    position at its peak. With the keys and part numbers of every position at once (int64
    each, commit 02e0953) it took 28 bytes a position."""
    import tracemalloc

    from lmkit import counts
    from lmkit.features import Skip
    monkeypatch.setattr(counts, "KEY_CHUNK", 1 << 16)
    rng = np.random.default_rng(0)
    V, n = 6, 1_000_000
    seqs = [list(rng.integers(3, V, size=int(k))) for k in rng.integers(1, 40, size=n // 20)]
    buf, pos, starts, n_seq = counts.flat_buffer([seqs], BOS, EOS, 3)
    want = counts.count_buffer(buf, pos, starts, V, [Skip(2, 1, 2)], n_seq)
    tracemalloc.start()
    try:
        got = counts.count_in_parts(buf, pos, starts, V, [Skip(2, 1, 2)], n_seq,
                                    part_positions=20_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.equals(want)
    assert peak < 6 * len(pos), (peak, len(pos))


def test_order_by_size_is_the_rule_applied_to_the_training_tokens(monkeypatch):
    """``build_rich(order=None)``: the suffix chain ``ModelConfig.rich_order`` gives the
    training text's targets (the carved lines added back later do not count), and then the
    very model of that explicit order."""
    from lmkit.config import ModelConfig
    from lmkit.rich_build import build_rich
    train, held, carved = corpus(300, 0), corpus(60, 1), corpus(40, 3)
    n_targets = sum(len(s) + 1 for s in train)
    kw = dict(context=3, skips=((1, 1, 1),), clusterings=((6, ((2, 0), (3, 1))),), seed=5)

    def build(order):
        return build_rich(_seqs_chunks(train), 14, BOS, EOS, held, refit_chunks=[carved],
                          order=order, **kw)[0]

    def suffixes(params):
        return [g.name for g in params.groups if g.name.startswith("suffix")]

    assert suffixes(build(None)) == ["suffix1", "suffix2", "suffix3", "suffix4"]  # 5: small
    # one doubling past the threshold: order 7; the threshold exactly at the text: order 6
    monkeypatch.setattr(ModelConfig, "RICH_ORDER_TOKENS", n_targets // 2)
    got = build(None)
    assert suffixes(got) == [f"suffix{m}" for m in range(1, 7)]
    assert same_params(got, build(7)) and got.info == build(7).info
    monkeypatch.setattr(ModelConfig, "RICH_ORDER_TOKENS", n_targets)
    assert len(suffixes(build(None))) == 5
    monkeypatch.setattr(ModelConfig, "RICH_ORDER_TOKENS", n_targets + 1)
    assert len(suffixes(build(None))) == 4


def test_train_records_the_order_the_size_rule_chose(tiny_corpus_file, tiny_tok_file,
                                                     monkeypatch, tmp_path):
    """``lmkit.train`` with no model option builds the order of ``ModelConfig.rich_order``
    and its manifest says so; a given order is kept whatever the size."""
    import lmkit
    from lmkit.config import ModelConfig
    from lmkit.model import LanguageModel
    opts = dict(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), verbose=False)
    monkeypatch.setattr(ModelConfig, "RICH_ORDER_TOKENS", 1)  # every text is "large"
    model = lmkit.train(**opts)
    assert model.config["order"] == 7
    assert [g.name for g in model.groups if g.name.startswith("suffix")] == [
        f"suffix{m}" for m in range(1, 7)]
    assert LanguageModel.load(model.save(tmp_path / "m")).config["order"] == 7
    kept = lmkit.train(rich=True, order=5, **opts)
    assert kept.config["order"] == 5 and kept.config["rich"] is True


def test_a_local_dask_clusters_processes_come_out_of_max_memory():
    """On a LocalCluster of worker processes, max_memory bounds the whole tree: what its
    workers hold (``distributed.workers_rss``, once they import the build's code) is taken off
    the build's budget, and a limit they already fill is one line; workers that are threads
    of this process hold nothing of their own."""
    import os
    import sys

    from lmkit.distributed import _rss_unless, own_rss, workers_rss
    from lmkit.errors import MemoryLimitError
    from lmkit.rich_build import dask_budget

    class Client:  # two worker processes of 300 MiB once they hold the build's code
        def run(self, fn, *args):
            assert fn is _rss_unless and args == (os.getpid(), "lmkit.rich_build")
            return {"tcp://a": 300 << 20, "tcp://b": 300 << 20}

    assert workers_rss(Client(), "lmkit.rich_build") == 600 << 20
    assert _rss_unless(os.getpid() + 1, "lmkit.rich_build") == own_rss() > 0
    assert _rss_unless(os.getpid()) == 0 and "lmkit.rich_build" in sys.modules
    lines = []
    assert dask_budget("1G", 600 << 20, 2, lines.append) == (1 << 30) - (600 << 20)
    assert "hold 600.0 MiB before any task" in lines[0] and "424.0 MiB" in lines[0]
    with pytest.raises(MemoryLimitError, match=r"the Dask LocalCluster of 2 worker processes "
                                               r"\(before any task\) needs 600\.0 MiB"
                                               r".*raise max_memory, use fewer workers, or use "
                                               r"engine local"):
        dask_budget("512M", 600 << 20, 2)
    pytest.importorskip("dask.distributed")
    from lmkit.distributed import dask_client
    with dask_client(None, 2, processes=False) as client:  # threads: their memory is ours
        assert workers_rss(client) == 0 and workers_rss(client, "lmkit.rich_build") == 0
