"""Compact models: lossless storage dtypes, pruning of weightless entries (compact.py, store.py)."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from lmkit.io import store
from lmkit.compact import CURVE_TAUS, choose_tau, compact_rich, prune_entries, round_float32
from lmkit.counts import count_chunk
from lmkit.errors import InputError, ModelFormatError
from lmkit.features import Suffix
from lmkit.model import LanguageModel
from lmkit.ngram.mkn import solve_ngram
from lmkit.params import SparseParams
from lmkit.rich import count_rich, fit_rich
from lmkit.scoring import context_rows, sparse_log_proba


@pytest.fixture(scope="module")
def rich(tiny_tok, tiny_lines):
    tok = tiny_tok
    seqs = tok.encode_batch(tiny_lines)
    counts, _ = count_rich([seqs[:250]], tok.vocab_size, tok.bos_id, tok.eos_id, order=3,
                           context=2, skips=((1, 1, 1),), clusterings=((8, ((2, 0), (3, 1))),))
    return tok, fit_rich(counts, seqs[250:], tok.bos_id, tok.eos_id), seqs


def _rows(params, tok, seqs):
    return context_rows(params.groups, params.keys, seqs, tok.vocab_size, tok.bos_id, tok.eos_id)


def _same_params(a: SparseParams, b: SparseParams) -> None:
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.lambdas, b.lambdas)
    for Sa, Sb, ka, kb in zip(a.S, b.S, a.keys, b.keys):
        assert Sa.shape == Sb.shape and Sb.data.dtype == np.float64
        for x, y in ((Sa.data, Sb.data), (Sa.indices, Sb.indices), (Sa.indptr, Sb.indptr)):
            np.testing.assert_array_equal(x, y)
        assert (ka is None) == (kb is None)
        if ka is not None:
            np.testing.assert_array_equal(ka, kb)
            assert kb.dtype == np.int64


def test_compact_rich_model_reads_back_exactly_in_compact_dtypes(rich, tmp_path):
    tok, params, seqs = rich
    small = compact_rich(params, seqs[200:260], tok.bos_id, tok.eos_id)
    model = LanguageModel(tok, small)
    path = model.save(tmp_path / "m")
    _, _, arrays = store.read_model_folder(path)
    assert arrays["S0_data"].dtype == np.float32 and arrays["S0_indices"].dtype == np.uint16
    assert "S0_rowlen" in arrays and "S0_indptr" not in arrays
    assert "keys0_delta" in arrays and "keys0" not in arrays
    back = LanguageModel.load(path)
    _same_params(small, back.params)
    np.testing.assert_array_equal(model.log_proba_ids(seqs[:50])[0], back.log_proba_ids(seqs[:50])[0])
    # keys and row pointers are expanded on load; values and columns stay as stored until a
    # group is first read as a CSR (params.LazyCSRs), which is then the usual float64 / int32
    plain = store._expand_compact(arrays, "x")
    assert plain["S0_data"].dtype == np.float32 and plain["keys0"].dtype == np.int64
    assert plain["S0_indptr"].dtype == np.int32 and plain["S0_indices"].dtype == np.uint16
    assert back.params.S[0].data.dtype == np.float64 and back.params.S[0].indices.dtype == np.int32


def test_float64_values_stay_float64(tmp_path, tiny_tok, tiny_lines):
    """A pure MKN model (its back-off weights need every bit) is stored losslessly."""
    tok = tiny_tok
    seqs = tok.encode_batch(tiny_lines)
    params = solve_ngram(count_chunk(seqs, tok.vocab_size, [Suffix(1), Suffix(2)], tok.bos_id,
                                     tok.eos_id))
    path = LanguageModel(tok, params).save(tmp_path / "mkn")
    _, _, arrays = store.read_model_folder(path)
    assert arrays["S1_data"].dtype == np.float64
    _same_params(params, LanguageModel.load(path).params)
    with pytest.raises(InputError, match="back-off weights"):
        prune_entries(params, 0.0)


def test_pruned_model_scores_as_if_the_entries_were_zero(rich):
    """Dropping an entry (and a keyed row left empty) is the same model as storing it as 0."""
    tok, params, seqs = rich
    tau = float(np.quantile(np.abs(np.concatenate([S.data for S in params.S])), 0.6))
    pruned = prune_entries(params, tau)
    assert sum(S.nnz for S in pruned.S) < 0.5 * sum(S.nnz for S in params.S)
    assert any(len(k) < len(k0) for k, k0 in zip(pruned.keys, params.keys)
               if k is not None and k0 is not None)  # some keyed rows were dropped
    for S in pruned.S:
        assert (np.abs(S.data) > tau).all()
    # rounded while pruning (compact_rich: no second copy) = pruned, then rounded
    both, after = prune_entries(params, tau, round32=True), round_float32(pruned)
    for S, S1 in zip(both.S, after.S):
        assert S.data.dtype == np.float64
        np.testing.assert_array_equal(S.data, S1.data)
        np.testing.assert_array_equal(S.indices, S1.indices)
        np.testing.assert_array_equal(S.indptr, S1.indptr)
    assert not np.array_equal(both.S[0].data, pruned.S[0].data)  # something was rounded
    zeroed = SparseParams(params.groups, params.q,
                          [sp.csr_matrix((np.where(np.abs(S.data) > tau, S.data, 0.0), S.indices,
                                          S.indptr), shape=S.shape) for S in params.S],
                          params.keys, params.lambdas, params.info)
    rows, t, _ = _rows(pruned, tok, seqs[:120])
    rows0, t0, _ = _rows(zeroed, tok, seqs[:120])
    got, want = sparse_log_proba(pruned, rows, t), sparse_log_proba(zeroed, rows0, t0)
    assert np.abs(got - want).max() < 1e-12


def test_choose_tau_takes_the_largest_threshold_within_the_cost(rich):
    tok, params, seqs = rich
    rows, t, _ = _rows(params, tok, seqs[200:])
    big = float(np.abs(np.concatenate([S.data for S in params.S])).max())
    tau, trace = choose_tau(params, rows, t, taus=(0.0, big), max_cost=0.001)
    base = trace[0][2]
    assert trace[1][0] == 0.0 and trace[2][0] == big and trace[2][1] == 0  # all pruned: q
    assert tau == (big if trace[2][2] <= base * 1.001 else 0.0 if trace[1][2] <= base * 1.001
                   else None)
    r = round_float32(params)
    for S, S0 in zip(r.S, params.S):
        np.testing.assert_array_equal(S.data, S0.data.astype(np.float32).astype(np.float64))


def _rewrite(path, arrays):
    size, digest = store.write_npz(path / "params.npz", arrays)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"].update(bytes=size, sha256=digest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("fault, match", [
    ("negative gap", "must be sorted, unique"),
    ("short rows", "indptr is not monotone|indptr has"),
    ("both forms", "must be the uint16 row lengths"),
    # the columns and values are checked as stored (uint16, float32): the compiled scorer
    # reads them as they are, never a widened copy
    ("uint16 column >= V", "column indices outside"),
    ("uint16 columns unsorted", "not sorted and unique"),
    ("float32 NaN", "NaN or infinite"),
])
def test_bad_compact_arrays_are_refused(rich, tmp_path, fault, match):
    tok, params, seqs = rich
    path = LanguageModel(tok, round_float32(params)).save(tmp_path / "m")
    _, _, arrays = store.read_model_folder(path)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    if fault == "negative gap":
        arrays["keys1_delta"][len(arrays["keys1_delta"]) // 2] = -5
    elif fault == "short rows":
        arrays["S0_rowlen"][0] += 1
    elif fault == "uint16 column >= V":
        assert arrays["S2_indices"].dtype == np.uint16
        arrays["S2_indices"][3] = tok.vocab_size
    elif fault == "uint16 columns unsorted":
        lo = int(np.flatnonzero(arrays["S2_rowlen"] >= 2)[0])
        start = int(arrays["S2_rowlen"][:lo].sum())
        ind = arrays["S2_indices"]
        ind[start], ind[start + 1] = ind[start + 1], ind[start]
    elif fault == "float32 NaN":
        assert arrays["S2_data"].dtype == np.float32
        arrays["S2_data"][1] = np.nan
    else:
        arrays["S0_indptr"] = np.zeros(len(arrays["S0_rowlen"]) + 1, np.int32)
    _rewrite(path, arrays)
    with pytest.raises(ModelFormatError, match=match):
        LanguageModel.load(path)


def test_default_compaction_keeps_every_probability(rich):
    """``lmkit train``'s compaction drops exact zeros only: the scores are those of the
    float32-rounded model; with ``CURVE_TAUS`` the threshold is chosen on held-out text."""
    tok, params, seqs = rich
    small = compact_rich(params, seqs[200:], tok.bos_id, tok.eos_id)
    assert small.info["prune_tau"] == 0.0
    assert sum(S.nnz for S in small.S) == sum(int((S.data != 0).sum()) for S in params.S)
    r = round_float32(params)
    want = sparse_log_proba(r, *_rows(r, tok, seqs[:100])[:2])
    got = sparse_log_proba(small, *_rows(small, tok, seqs[:100])[:2])
    assert np.abs(got - want).max() < 1e-12
    msgs = []
    chosen = compact_rich(params, seqs[200:], tok.bos_id, tok.eos_id, taus=CURVE_TAUS,
                          log=msgs.append)
    assert chosen.info["prune_tau"] in CURVE_TAUS and "chose" in msgs[0]


def test_a_group_with_every_entry_dropped_still_scores(rich, monkeypatch):
    """A group the weight search weights 0 everywhere loses every entry and, keyed, every row
    (seen at 18.9M tokens with 20,000 weight tokens); the walking scorer must score it as a
    group of zeros, not index its empty row pointer."""
    from lmkit import scoring
    from lmkit.scoring import context_rows, log_proba
    monkeypatch.setattr(scoring, "COMPILED_MIN_POSITIONS", 0)  # the compiled walk, not numpy
    tok, params, seqs = rich
    g = len(params.S) - 1  # the last cluster group: keyed rows
    assert params.keys[g] is not None
    S = [S if i != g else sp.csr_matrix((np.zeros(S.nnz), S.indices, S.indptr), shape=S.shape)
         for i, S in enumerate(params.S)]
    zeroed = SparseParams(params.groups, params.q, S, params.keys, params.lambdas, params.info)
    pruned = prune_entries(zeroed, 0.0)
    assert pruned.S[g].shape[0] == 0 and len(pruned.keys[g]) == 0
    rows, t, _, order = context_rows(pruned.groups, pruned.keys, seqs[:120], tok.vocab_size,
                                     tok.bos_id, tok.eos_id, with_order=True)
    rows0, t0, _, order0 = context_rows(zeroed.groups, zeroed.keys, seqs[:120], tok.vocab_size,
                                        tok.bos_id, tok.eos_id, with_order=True)
    got, want = log_proba(pruned, rows, t, order), log_proba(zeroed, rows0, t0, order0)
    assert np.isfinite(got).all() and np.abs(got - want).max() < 1e-12


def _prune_reference(params, tau, drop_rows=True, round32=False):
    """``prune_entries`` as it was written before blocks (commit 02e0953): whole groups."""
    S_out, keys_out = [], []
    for g, (S, keys, group) in enumerate(zip(params.S, params.keys, params.groups)):
        keep = np.abs(params.lambdas[g] * S.data) > tau
        entry_row = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        counts = np.bincount(entry_row[keep], minlength=S.shape[0])
        rows = np.arange(S.shape[0])
        if drop_rows and keys is not None and not isinstance(group, Suffix):
            rows = np.flatnonzero(counts)
            keys = keys[rows]
        indptr = np.concatenate([[0], np.cumsum(counts[rows])]).astype(S.indptr.dtype)
        data = S.data[keep]
        if round32:
            data = np.asarray(data, dtype=np.float64)
            data[...] = data.astype(np.float32)
        S_out.append(sp.csr_matrix((data, S.indices[keep], indptr),
                                   shape=(len(rows), S.shape[1])))
        keys_out.append(keys)
    return SparseParams(params.groups, params.q, S_out, keys_out, params.lambdas, params.info)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_pruning_in_blocks_and_onto_disk_gives_the_same_arrays(rich, tmp_path, block):
    """Pruned a block of whole rows at a time, in memory or written to a folder and mapped:
    the very arrays (values, dtypes, keys) of pruning each group at once."""
    from lmkit.io.npyfile import mapped_base
    tok, params, seqs = rich
    tau = float(np.quantile(np.abs(np.concatenate([S.data for S in params.S])), 0.6))
    for i, (t, drop, r32) in enumerate([(0.0, True, True), (tau, True, False),
                                        (tau, False, True), (-1.0, True, False)]):
        want = _prune_reference(params, t, drop, r32)
        for folder in (None, tmp_path / f"{block}-{i}"):
            if folder is not None:
                folder.mkdir()
            got = prune_entries(params, t, drop, r32, folder=folder, block=block)
            for Sa, Sb, ka, kb in zip(got.S, want.S, got.keys, want.keys):
                assert Sa.shape == Sb.shape
                for x, y in ((Sa.data, Sb.data), (Sa.indices, Sb.indices),
                             (Sa.indptr, Sb.indptr)):
                    assert x.dtype == y.dtype and np.array_equal(x, y)
                    if x.size:  # on disk with a folder, in memory without
                        assert (mapped_base(x) is not None) == (folder is not None)
                assert (ka is None) == (kb is None)
                if ka is not None:
                    assert ka.dtype == kb.dtype and np.array_equal(ka, kb)


def test_pruning_onto_disk_holds_a_block_not_the_group(tmp_path):
    """A mapped group of 2M values (24 MB as float64 values and int32 columns) pruned onto
    disk in blocks of 64K values allocates under 6 MB at its peak (4.0 MB measured); pruned
    at once (the reference) it took the row of every value (int64) and the kept copy: 48.7 MB
    on the same group in memory."""
    import tracemalloc

    from lmkit.features import Skip
    from lmkit.io.npyfile import NpyAppender, open_npy
    rng = np.random.default_rng(0)
    V, n_rows, per_row = 64, 500_000, 4
    data = rng.standard_normal(n_rows * per_row)
    data[rng.random(len(data)) < 0.3] = 0.0
    indices = np.tile(np.arange(per_row, dtype=np.int32) * 3, n_rows)
    indptr = np.arange(n_rows + 1, dtype=np.int32) * per_row
    keys = np.arange(n_rows, dtype=np.int64) * 5
    mapped = []
    for name, a in (("d", data), ("i", indices), ("p", indptr), ("k", keys)):
        w = NpyAppender(tmp_path / f"{name}.npy", a.dtype)
        w.append(a)
        mapped.append(open_npy(w.close()))
    S = sp.csr_matrix(tuple(mapped[:3]), shape=(n_rows, V))
    group = Skip(1, 1, 1)
    params = SparseParams([group], np.full(V, 1 / V), [S], [mapped[3]], np.ones(1), {})
    out = tmp_path / "out"
    out.mkdir()
    tracemalloc.start()
    try:
        got = prune_entries(params, 0.0, round32=True, folder=out, block=1 << 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6e6, peak
    want = _prune_reference(params, 0.0, round32=True)
    assert np.array_equal(got.S[0].data, want.S[0].data)
    assert np.array_equal(got.keys[0], want.keys[0])
