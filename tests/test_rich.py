import numpy as np

from lmkit.counts import count_chunk
from lmkit.features import Skip, Suffix, Window
from lmkit.ngram.mkn import solve_ngram
from lmkit.rich import base_groups, cluster_groups, fit_rich, merge_groups, solve_rich
from lmkit.scoring import context_rows, sparse_log_proba, sparse_next_logp, next_rows

BOS, EOS = 1, 2


def corpus(n, seed, V=14):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.integers(3, V, size=3).tolist()
        for _ in range(rng.integers(2, 12)):
            # depends on the token 3 back (a skip-gram) and on the previous token
            s.append(3 + (s[-3] + s[-1]) % (V - 3) if rng.random() < 0.7 else int(rng.integers(3, V)))
        out.append(s)
    return out


def test_fit_rich_beats_mkn_and_normalises():
    V = 14
    train, held, test = corpus(400, 0, V), corpus(80, 1, V), corpus(80, 2, V)
    groups = base_groups(order=3, context=2, skips=((1, 1, 1),))
    assert groups == [Suffix(1), Suffix(2), Window(1), Window(2), Skip(1, 1, 1)]
    counts = count_chunk(train, V, groups, BOS, EOS)
    table = np.arange(V) % 4
    counts = merge_groups(counts, count_chunk(train, V, cluster_groups(table, ((3, 1),)), BOS, EOS))
    params = fit_rich(counts, held, BOS, EOS)
    assert np.allclose(params.lambdas, 1.0)  # the weights are folded into S
    rows, targets, _ = context_rows(params.groups, params.keys, test, V, BOS, EOS)
    rich_nll = -sparse_log_proba(params, rows, targets).mean()
    mkn = solve_ngram(count_chunk(train, V, [Suffix(1), Suffix(2)], BOS, EOS))
    r2, t2, _ = context_rows(mkn.groups, mkn.keys, test, V, BOS, EOS)
    assert rich_nll < -sparse_log_proba(mkn, r2, t2).mean() - 0.05
    p = np.exp(sparse_next_logp(params, next_rows(params.groups, params.keys, [3, 4, 5], V, BOS)))
    assert abs(p.sum() - 1) < 1e-9
    assert np.array(params.info["entry_lambdas"]).shape == (6, 5)  # default: 5 entry buckets


def test_solve_rich_without_extra_groups_is_mkn():
    V, train = 14, corpus(100, 0)
    counts = count_chunk(train, V, [Suffix(1), Suffix(2)], BOS, EOS)
    a, b = solve_rich(counts), solve_ngram(counts)
    assert all((x != y).nnz == 0 for x, y in zip(a.S, b.S)) and np.array_equal(a.q, b.q)


def test_entry_buckets_split_and_fold_match_dense_reference():
    from lmkit.explicit import entry_counts, fold_entry_lambdas, split_entries
    V, train = 14, corpus(100, 0)
    counts = count_chunk(train, V, [Suffix(1), Window(2)], BOS, EOS)
    params = solve_rich(counts)
    ec = entry_counts(counts, params)
    # the count of every stored value, read off the dense counts (Suffix(1) rows via the keys)
    W = counts.F[1].toarray()
    row = np.repeat(np.arange(params.S[1].shape[0]), np.diff(params.S[1].indptr))
    assert ec[1].tolist() == W[row, params.S[1].indices].tolist()
    D = counts.F[0].toarray()
    row = np.repeat(np.arange(params.S[0].shape[0]), np.diff(params.S[0].indptr))
    crow = np.searchsorted(counts.keys[0], params.keys[0])[row]
    assert ec[0].tolist() == D[crow, params.S[0].indices].tolist()
    eb = [np.minimum(c, 3) - 1 for c in ec]  # buckets 1, 2, 3+
    split = split_entries(params, eb, 3)
    for g in range(2):  # the three parts add up to S_g, with disjoint patterns
        total = sum(split.S[3 * g + b].toarray() for b in range(3))
        assert np.allclose(total, params.S[g].toarray())
        assert sum(split.S[3 * g + b].nnz for b in range(3)) == params.S[g].nnz
    lam = np.array([[0.2, 0.5, 1.0], [0.1, 0.0, 0.7]])
    folded = fold_entry_lambdas(params, lam, eb)
    for g in range(2):
        expect = sum(lam[g, b] * split.S[3 * g + b].toarray() for b in range(3))
        assert np.allclose(folded.S[g].toarray(), expect)


def test_shard_sums_of_skip_and_cluster_groups_equal_the_whole():
    from lmkit.counts import sum_counts
    V, train = 14, corpus(120, 3)
    groups = base_groups(order=3, context=1, skips=((1, 1, 1), (1, 2, 1))) + \
        cluster_groups(np.arange(V) % 4, ((3, 1),))
    whole = count_chunk(train, V, groups, BOS, EOS)
    parts = sum_counts(count_chunk(train[i:i + 25], V, groups, BOS, EOS) for i in range(0, 120, 25))
    assert parts.equals(whole)


def _tiny_rich_model(tok, lines):
    from lmkit.model import LanguageModel
    from lmkit.rich import count_rich
    seqs = tok.encode_batch(lines)
    counts, tables = count_rich([seqs[:250]], tok.vocab_size, tok.bos_id, tok.eos_id, order=3,
                                context=2, skips=((1, 1, 1),),
                                clusterings=((8, ((2, 0), (3, 1))), (3, ((2, 0),))))
    assert [g.name for g in counts.groups][2] == "window2"  # windows from 2 by default
    params = fit_rich(counts, seqs[250:], tok.bos_id, tok.eos_id)
    return LanguageModel(tok, params, {"order": 3}, {"name": "tiny"}), tables[0]


def test_rich_model_save_load_round_trip(tiny_tok, tiny_lines, tmp_path):
    import json

    from lmkit.clusters import ClusterHistory
    from lmkit.model import LanguageModel
    model, table = _tiny_rich_model(tiny_tok, tiny_lines)
    assert sorted(set(table.tolist())) == list(range(8))
    path = model.save(tmp_path / "m")
    names = json.loads((path / "manifest.json").read_text())["groups"]
    assert names[-3:] == ["cluster2_0_8", "cluster3_1_8", "cluster2_0_3"] and "skip1_1_1" in names
    loaded = LanguageModel.load(path)
    assert loaded.groups == model.groups
    assert isinstance(loaded.groups[-2], ClusterHistory) and loaded.groups[-2].table == tuple(table)
    assert loaded.groups[-1].n_clusters == 3
    seqs = tiny_tok.encode_batch(tiny_lines[:40])
    a, _ = model.log_proba_ids(seqs)
    b, _ = loaded.log_proba_ids(seqs)
    assert np.array_equal(a, b)
    p = np.exp(loaded.next_logp(tiny_tok.encode("The")))
    assert abs(p.sum() - 1) < 1e-9


def test_rich_model_refuses_bad_cluster_tables(tiny_tok, tiny_lines, tmp_path):
    import pytest

    from lmkit.io import store
    from lmkit.errors import ModelFormatError
    model, table = _tiny_rich_model(tiny_tok, tiny_lines)
    arrays = store.params_to_arrays(model.params)
    names = [g.name for g in model.groups]
    ok = store.groups_from_names(names, arrays)
    assert ok == model.groups
    V = tiny_tok.vocab_size
    assert sorted(k for k in arrays if k.startswith("clusters")) == ["clusters3", "clusters8"]
    for bad, msg in ((np.zeros(V - 1, np.int64), "'clusters8' must hold 300 cluster ids"),
                     (np.full(V, -1, np.int64), "must hold 300 cluster ids >= 0"),
                     (np.where(table == 7, 9, table), "not a cluster-history group of a 10-cluster"),
                     (table.astype(np.float64), "'clusters8' is <f8")):
        with pytest.raises(ModelFormatError, match=msg):
            store.groups_from_names(names, {**arrays, "clusters8": bad})
    with pytest.raises(ModelFormatError, match="missing array 'clusters3'"):
        store.groups_from_names(names, {k: v for k, v in arrays.items() if k != "clusters3"})
    with pytest.raises(ModelFormatError, match="needs 0 <= w < m"):
        store.groups_from_names(names[:-1] + ["cluster3_3_8"], arrays)
    # a table that does not belong to any cluster group is refused as a stray array
    plain = [g for g in model.groups if not g.name.startswith("cluster")]
    with pytest.raises(ModelFormatError, match="do not belong"):
        store.arrays_to_params("sparse", plain, arrays, {})


def test_train_defaults_to_the_rich_model_and_keeps_order_and_context_alone(
        tiny_corpus_file, tiny_tok_file, tmp_path):
    import pytest

    from lmkit.errors import OptionError
    from lmkit.model import LanguageModel
    from lmkit.train import train
    src = dict(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), verbose=False)
    model = train(**src)  # no model option: the feature-rich model
    names = [g.name for g in model.groups]
    assert names[:6] == ["suffix1", "suffix2", "suffix3", "suffix4", "window2", "window3"]
    assert "skip1_1_1" in names and any(n.startswith("cluster") for n in names)
    assert names[-2:] == ["linepos1_8_10", "linepos0_12_7_32"]  # line positions last
    assert model.config["rich"] is True and "entry_lambdas" in model.params.info
    loaded = LanguageModel.load(model.save(tmp_path / "m"))
    seqs = model.encode_lines(["The king and the queen."])
    assert np.array_equal(model.log_proba_ids(seqs)[0], loaded.log_proba_ids(seqs)[0])
    assert [g.name for g in train(order=3, **src).groups] == ["suffix1", "suffix2"]
    assert [g.name for g in train(context=2, **src).groups] == ["window1", "window2"]
    assert [g.name for g in train(rich=False, **src).groups] == names[:4] + [
        "window1", "window2", "window3"]
    with pytest.raises(OptionError, match="rich takes no lambdas"):
        train(rich=True, lambdas=[1.0] * 7, **src)


def test_clusters_from_suffix1_equal_clusters_from_window1():
    from lmkit.rich import make_clusters
    V, train = 14, corpus(150, 4)
    with_w1 = count_chunk(train, V, [Suffix(1), Window(1)], BOS, EOS)
    without = count_chunk(train, V, [Suffix(1)], BOS, EOS)
    # Suffix(1) and Window(1) both read the previous token (BOS at a sequence start)
    assert np.array_equal(make_clusters(with_w1, 4, seed=2), make_clusters(without, 4, seed=2))


def test_fit_rich_without_heldout_text_is_mkn():
    V, train, test = 14, corpus(200, 5), corpus(30, 6)
    groups = base_groups(order=3, context=2, skips=((1, 1, 1),))
    counts = count_chunk(train, V, groups, BOS, EOS)
    msgs = []
    params = fit_rich(counts, [], BOS, EOS, log=msgs.append)
    assert "no held-out text" in msgs[0]
    mkn = solve_ngram(count_chunk(train, V, [Suffix(1), Suffix(2)], BOS, EOS))
    r1, t1, _ = context_rows(params.groups, params.keys, test, V, BOS, EOS)
    r2, t2, _ = context_rows(mkn.groups, mkn.keys, test, V, BOS, EOS)
    assert np.allclose(sparse_log_proba(params, r1, t1), sparse_log_proba(mkn, r2, t2), atol=1e-9)


def test_count_rich_skips_a_table_as_large_as_an_earlier_one():
    from lmkit.rich import count_rich
    V, train = 14, corpus(60, 7)
    counts, tables = count_rich([train], V, BOS, EOS, order=2, context=1, skips=(),
                                clusterings=((4, ((2, 0),)), (4, ((3, 0),))))
    assert tables[1] is None and tables[0].max() == 3
    assert [g.name for g in counts.groups] == ["suffix1", "cluster2_0_4"]
    held, again = count_rich([train[:5]], V, BOS, EOS, order=2, context=1, skips=(), tables=tables,
                             clusterings=((4, ((2, 0),)), (4, ((3, 0),))))
    assert held.groups == counts.groups and again[1] is None
