"""Disk-backed .npy arrays: piecewise writes, read-only maps, released pages."""
import os

import numpy as np
import pytest

from lmkit.io.npyfile import NpyAppender, open_npy, release_pages


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


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"),
                    reason="needs Linux /proc/self/smaps_rollup to read the resident set")
def test_release_pages_drops_resident_pages_of_read_only_maps_only(tmp_path):
    import mmap
    np.save(tmp_path / "a.npy", np.arange(1 << 20, dtype=np.int64))  # 8 MiB
    m = open_npy(tmp_path / "a.npy")

    def resident_kb():
        with open("/proc/self/smaps_rollup") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("Rss:"))
    assert int(m.sum()) == (1 << 20) * ((1 << 20) - 1) // 2
    before = resident_kb()
    release_pages(m[10:], m)  # one map, released once
    assert resident_kb() < before - 6000 and int(m[-1]) == (1 << 20) - 1  # values read back
    with open(tmp_path / "a.npy", "r+b") as f:  # a writable copy-on-write map is left alone
        w = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY), dtype=np.uint8)
    w[200] = 7
    release_pages(w)
    assert w[200] == 7
