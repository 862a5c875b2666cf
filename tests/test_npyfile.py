"""Disk-backed .npy arrays: piecewise writes, read-only maps, whole files linked on save."""
import os

import numpy as np

from lmkit.npyfile import NpyAppender, npy_file_of, open_npy, release_pages, write_npy


def test_npy_appender_writes_a_loadable_array(tmp_path):
    w = NpyAppender(tmp_path / "a.npy", np.float64)
    w.append(np.ones(3))
    w.append([])
    w.append(np.arange(2, dtype=np.int32))
    w.close()
    assert np.load(tmp_path / "a.npy").tolist() == [1, 1, 1, 0, 1]
    m = open_npy(tmp_path / "a.npy")
    assert m.dtype == np.float64 and not m.flags.writeable
    release_pages(m[1:])  # drops the pages of the map under a view; the values read back
    assert m.tolist() == [1, 1, 1, 0, 1]
    NpyAppender(tmp_path / "e.npy", np.int64).close()
    assert np.load(tmp_path / "e.npy").shape == (0,)


def test_write_npy_links_whole_mapped_files_and_saves_the_rest(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.int64))
    m = open_npy(tmp_path / "a.npy")
    assert npy_file_of(m) == tmp_path / "a.npy" and npy_file_of(m[1:]) is None
    assert npy_file_of(np.arange(3)) is None
    write_npy(m, tmp_path / "b.npy")
    assert os.path.samefile(tmp_path / "a.npy", tmp_path / "b.npy")  # linked, not read
    write_npy(m[2:], tmp_path / "c.npy")  # a part of a map is saved as an array of its own
    assert np.load(tmp_path / "c.npy").tolist() == [2, 3, 4, 5]
    write_npy(np.array([1.5]), tmp_path / "d.npy")
    assert np.load(tmp_path / "d.npy").tolist() == [1.5]
