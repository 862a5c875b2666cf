"""params.npz layout: aligned members, memory-mapped reads, the blockwise CSR order check."""
import mmap

import numpy as np
import pytest
import scipy.sparse as sp

from lmkit.io import store
from lmkit.errors import ModelFormatError
from lmkit.model import LanguageModel


@pytest.mark.parametrize("mapped", [False, True])
def test_members_are_aligned_and_mapped_or_copied_once(tiny_model_dir, mapped):
    """Default: every array views one private in-memory copy of the file (bytes); with
    mmap=True, a read-only map of the file. Never a second copy per array."""
    manifest, _, arrays = store.read_model_folder(tiny_model_dir, mmap=mapped)
    assert arrays, "no arrays read"
    owners = set()
    for name, a in arrays.items():
        assert a.flags.aligned and not a.flags.writeable, name
        base = a
        while not isinstance(base, memoryview):
            base = base.base
        assert isinstance(base.obj, mmap.mmap if mapped else bytes), name
        owners.add(id(base.obj))
    assert len(owners) == 1
    # the archive stays a plain .npz: numpy reads the same arrays
    with np.load(tiny_model_dir / "params.npz") as z:
        assert sorted(z.files) == sorted(arrays)
        for k in z.files:
            np.testing.assert_array_equal(z[k], arrays[k])


@pytest.mark.parametrize("n", [0, 1, 7, 63, 64, 65, 1000])
def test_write_npz_aligns_every_member(tmp_path, n):
    arrays = {"a": np.arange(n, dtype=np.int32), "b": np.linspace(0, 1, n + 3),
              "c" * 40: np.ones((n, 2), dtype=np.float32), "d": np.zeros(0, np.int64)}
    size, digest = store.write_npz(tmp_path / "x.npz", arrays)
    assert size == (tmp_path / "x.npz").stat().st_size
    assert digest == store.sha256_file(tmp_path / "x.npz")
    got = store.map_npz(tmp_path / "x.npz", size)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert got[k].ctypes.data % store.ALIGN == 0 or got[k].size == 0


def test_memmap_inputs_are_streamed(tmp_path):
    big = np.lib.format.open_memmap(tmp_path / "src.npy", mode="w+", dtype=np.float64,
                                    shape=(3 * store._CHUNK // 8 + 5,))
    big[:] = np.arange(len(big))
    size, _ = store.write_npz(tmp_path / "x.npz", {"big": big})
    np.testing.assert_array_equal(store.map_npz(tmp_path / "x.npz", size)["big"], big)


def _reference_sorted(M: sp.csr_matrix) -> bool:
    return all((np.diff(M.indices[M.indptr[r]:M.indptr[r + 1]]) > 0).all()
               for r in range(M.shape[0]))


@pytest.mark.parametrize("seed", range(30))
def test_sorted_in_rows_matches_a_row_by_row_check(seed):
    rng = np.random.default_rng(seed)
    M = sp.random(40, 12, density=rng.uniform(0.05, 0.9), random_state=seed, format="csr")
    M.sort_indices()
    ind = M.indices.copy()
    if len(ind) > 1 and seed % 3:  # break the order somewhere: a swap or a duplicate
        i = int(rng.integers(0, len(ind) - 1))
        if seed % 3 == 1:
            ind[i], ind[i + 1] = ind[i + 1], ind[i]
        else:
            ind[i + 1] = ind[i]
    broken = sp.csr_matrix((M.data, ind, M.indptr), shape=M.shape)
    for block in (1, 2, 3, 5, 64):  # blocks that split rows anywhere
        assert store._sorted_in_rows(ind, M.indptr, block) == _reference_sorted(broken)


def test_a_row_order_fault_in_the_file_is_refused(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    manifest, _, arrays = store.read_model_folder(path)
    # the plain layout (row pointers, int32 columns), which older folders use and load reads too
    arrays = {k: np.array(v) for k, v in store._expand_compact(arrays, "params.npz").items()}
    ptr, ind = arrays["S0_indptr"], arrays["S0_indices"]
    r = int(np.flatnonzero(np.diff(ptr) >= 2)[0])  # a row with two entries: make them equal
    ind[ptr[r] + 1] = ind[ptr[r]]
    size, digest = store.write_npz(path / "params.npz", arrays)
    manifest["arrays"].update(bytes=size, sha256=digest)
    (path / "manifest.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(ModelFormatError, match="not sorted and unique within rows"):
        LanguageModel.load(path)


def _file_offset(a: np.ndarray) -> int:
    """Offset in its file of a memory-mapped array's first byte."""
    base = a
    while not isinstance(base, memoryview):
        base = base.base
    return a.ctypes.data - np.frombuffer(base.obj, np.uint8).ctypes.data


def test_verify_finds_a_changed_value_that_loading_accepts(tiny_model, tmp_path, capsys):
    from lmkit.cli import main
    path = tiny_model.save(tmp_path / "m")
    assert main(["verify", str(path)]) == 0
    assert "ok (" in capsys.readouterr().out
    _, _, arrays = store.read_model_folder(path)
    value, off = float(arrays["S0_data"][0]), _file_offset(arrays["S0_data"])
    del arrays
    blob = bytearray((path / "params.npz").read_bytes())
    blob[off:off + 8] = np.float64(value + 0.5).tobytes()  # still finite: a load accepts it
    (path / "params.npz").write_bytes(bytes(blob))
    assert LanguageModel.load(path).params.S[0].data[0] == value + 0.5
    with pytest.raises(ModelFormatError, match=r"params.npz: sha256 .* differs"):
        LanguageModel.verify(path)
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from the manifest" in err[0]


def test_a_mapped_model_can_be_saved_over_its_own_folder(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    m = LanguageModel.load(path, mmap=True)  # arrays map path/params.npz
    before = m.log_proba("a b")
    m.save(path)  # a new folder is renamed over the old one; the mapped inode stays intact
    np.testing.assert_array_equal(m.log_proba("a b"), before)
    np.testing.assert_array_equal(LanguageModel.load(path).log_proba("a b"), before)


def test_blockwise_checks_see_every_neighbour_pair():
    """Validation runs in blocks (no array-sized temporaries on a mapped model); with pairs,
    consecutive blocks overlap by one element so a disorder at a block edge is still seen."""
    from lmkit.io.store import _blocks
    a = np.arange(10)
    assert [x.tolist() for x in _blocks(a, pairs=True, block=4)] == [
        [0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9]]
    assert [len(x) for x in _blocks(a, block=4)] == [4, 4, 2]
    assert [x.tolist() for x in _blocks(a[:1], pairs=True)] == [[0]]
    assert list(_blocks(a[:0], pairs=True)) == []
    bad = np.array([0, 1, 2, 2, 4, 5])  # the repeat sits across the edge of blocks of 3
    assert all((np.diff(x) > 0).all() for x in _blocks(bad, block=3))  # unseen without pairs
    assert not all((np.diff(x) > 0).all() for x in _blocks(bad, pairs=True, block=3))


def test_save_streams_each_group_and_checks_the_written_file(tiny_model, tmp_path):
    """``save`` writes ``CompactArrays`` (each group's compact arrays made as it is written):
    the same names, order and bytes as ``params_to_arrays``. The load check then runs on the
    written file: a bad group is refused with the loader's message, nothing is left behind."""
    import json
    import os

    from lmkit.errors import InputError
    from lmkit.params import SparseParams
    p = tiny_model.params
    path = tiny_model.save(tmp_path / "m")
    eager = store.params_to_arrays(p)
    assert [n for n, _ in store.CompactArrays(p).items()] == list(eager)
    _, digest = store.write_npz(tmp_path / "x.npz", eager)
    assert digest == json.loads((path / "manifest.json").read_text())["arrays"]["sha256"]
    nan = p.S[1].copy()
    nan.data[0] = np.nan
    swapped = p.S[1].copy()
    row = int(np.flatnonzero(np.diff(swapped.indptr) >= 2)[0])
    lo = swapped.indptr[row]
    swapped.indices[lo:lo + 2] = swapped.indices[lo:lo + 2][::-1].copy()
    for S1, msg in ((nan, r"the model: array 'S1_data' holds NaN or infinite values"),
                    (swapped, r"the model: group 1: column indices not sorted and unique")):
        bad = LanguageModel(tiny_model.tokenizer,
                            SparseParams(p.groups, p.q, [p.S[0], S1], p.keys, p.lambdas, p.info))
        with pytest.raises(InputError, match=r"m2: not written, the model could not be loaded "
                                             r"back: " + msg):
            bad.save(tmp_path / "m2")
        assert sorted(os.listdir(tmp_path)) == ["m", "x.npz"]


def test_the_load_check_expands_one_group_at_a_time(tmp_path):
    """The check of a written file (``arrays_to_params(check_only=True)``) expands each
    group's compact keys (int32 gaps -> int64) and row lengths (uint16 -> int32 pointers) as
    it reaches the group and lets them go: 8 keyed groups of 400,000 rows allocate about one
    group's expansion at the peak, under a third of what loading them (every group's expanded
    keys and pointers held) allocates (measured: 6.8 MB against 40.4 MB; before, the check
    was the load). It still refuses a bad group."""
    import tracemalloc

    from lmkit.features import Skip
    from lmkit.params import SparseParams
    V, R, G = 64, 400_000, 8
    S = sp.csr_matrix((np.ones(R, dtype=np.float32).astype(np.float64),
                       np.arange(R, dtype=np.int32) % V, np.arange(R + 1, dtype=np.int32)),
                      shape=(R, V))
    groups = [Skip(2, s, 2) for s in range(G)]  # keys in [0, V**4)
    keys = np.arange(R, dtype=np.int64) * 3
    params = SparseParams(groups, np.full(V, 1 / V), [S] * G, [keys] * G, np.ones(G), {})
    size, _ = store.write_npz(tmp_path / "p.npz", store.CompactArrays(params))
    arrays = store.map_npz(tmp_path / "p.npz", size)
    assert "keys0_delta" in arrays and "S0_rowlen" in arrays  # compact: expanded when checked

    def peak(**kw):
        tracemalloc.start()
        try:
            out = store.arrays_to_params("sparse", groups, arrays, {}, **kw)
            return tracemalloc.get_traced_memory()[1], out
        finally:
            tracemalloc.stop()
    checked, none = peak(check_only=True)
    loaded, params_back = peak()
    assert none is None and params_back.keys[G - 1][-1] == keys[-1]
    one_group = R * (8 + 4)  # int64 keys and int32 row pointers
    assert checked < 2 * one_group < loaded / 3, (checked, loaded)
    bad = dict(arrays)
    bad["keys5_delta"] = -bad["keys5_delta"]
    with pytest.raises(ModelFormatError, match="'keys5' must be sorted"):
        store.arrays_to_params("sparse", groups, bad, {}, check_only=True)


def _compact_reference(S, keys) -> dict:
    """``_compact_csr`` + ``_compact_keys`` as they were written before blocks (commit
    02e0953): each array converted at once."""
    out = {"S_data": S.data, "S_indices": S.indices, "S_indptr": S.indptr,
           "S_shape": np.asarray(S.shape, dtype=np.int64)}
    small = S.data.astype(np.float32)
    if np.array_equal(small.astype(np.float64), S.data):
        out["S_data"] = small
    out["S_indices"] = S.indices.astype(np.uint16)
    lengths = np.diff(S.indptr)
    if not len(lengths) or lengths.max() < 1 << 16:
        del out["S_indptr"]
        out["S_rowlen"] = lengths.astype(np.uint16)
    gaps = np.diff(keys, prepend=np.int64(0))
    if len(gaps) and 0 <= gaps.min() and gaps.max() < 1 << 31:
        out["k_delta"] = gaps.astype(np.int32)
    else:
        out["k"] = keys
    return out


@pytest.mark.parametrize("block", [7, 1 << 16])
def test_compact_arrays_are_converted_a_block_at_a_time(tmp_path, monkeypatch, block):
    """Float32 values, uint16 columns and row lengths, int32 key gaps made a block at a time
    (also across blocks of 7: a gap and a row length straddle every edge) are the arrays of
    converting each at once, in the same order, and written to the same bytes; one value that
    float32 cannot hold, one row of 2**16 values or one gap of 2**31 keeps the plain array.
    Writing a 2M-value group allocates under 4 MB in blocks of 65,536 values (the arrays at
    once: their float32 and float64 copies, 24 MB)."""
    import tracemalloc
    monkeypatch.setattr(store, "_BLOCK", block)
    rng = np.random.default_rng(1)
    n_rows, V = 3000, 300
    lengths = rng.integers(0, 9, size=n_rows)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    indices = np.concatenate([np.sort(rng.choice(V, k, replace=False)) for k in lengths])
    data = rng.standard_normal(int(indptr[-1])).astype(np.float32).astype(np.float64)
    keys = np.cumsum(rng.integers(1, 50, size=n_rows)).astype(np.int64)
    cases = [(data, indptr, keys)]
    wide = data.copy()
    wide[-1] = 0.1  # not a float32
    far = keys.copy()
    far[-1] += 1 << 31  # a gap too wide for int32
    cases += [(wide, indptr, keys), (data, indptr, far)]
    for d, p, k in cases:
        S = sp.csr_matrix((d, indices.astype(np.int32), p), shape=(n_rows, V))
        got = {**store._compact_csr("S", S), **store._compact_keys("k", k)}
        want = _compact_reference(S, k)
        assert list(got) == list(want)
        for name in want:
            x = np.asarray(got[name])
            assert x.dtype == want[name].dtype and np.array_equal(x, want[name]), name
        _, d1 = store.write_npz(tmp_path / "a.npz", got)
        _, d2 = store.write_npz(tmp_path / "b.npz", want)
        assert d1 == d2
    # a row of 2**16 values: row pointers kept
    S = sp.csr_matrix((np.ones(1 << 16), np.arange(1 << 16) % V, [0, 1 << 16]), shape=(1, V))
    assert "S_indptr" in store._compact_csr("S", S)
    if block == 1 << 16:
        n = 2_000_000
        S = sp.csr_matrix((np.ones(n), (np.arange(n) % V).astype(np.int32),
                           np.arange(n + 1, dtype=np.int32)), shape=(n, V))
        # the file's sha256 reads it back 16 MiB at a time: a constant, not measured here
        monkeypatch.setattr(store, "sha256_file", lambda path: "")
        tracemalloc.start()
        try:
            store.write_npz(tmp_path / "c.npz", store._compact_csr("S", S))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4e6, peak
