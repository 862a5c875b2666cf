import numpy as np
import pytest

from lmkit.errors import InputError
from lmkit.classifier.layerwise import LayerwiseSoftmaxNetwork, backward, hidden_targets, kmeans


def blobs(n=90, seed=0):
    """3 classes; class 2 has two sub-styles (large feature 2 or feature 3)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.poisson(0.5, (n, 4)).astype(float)
    X[y == 0, 0] += 4
    X[y == 1, 1] += 4
    style = rng.integers(0, 2, n)
    X[(y == 2) & (style == 0), 2] += 4
    X[(y == 2) & (style == 1), 3] += 4
    return X, y


def test_kmeans_separates_two_pairs():
    X = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], dtype=float)
    lab = kmeans(X, 2, np.random.default_rng(0))
    assert lab[0] == lab[1] and lab[2] == lab[3] and lab[0] != lab[2]


def test_hidden_targets_kinds():
    X, y = blobs()
    rng = np.random.default_rng(0)
    t, H = hidden_targets(X, y, 3, "classes", None, rng)
    assert H == 3 and np.array_equal(t, y)
    t, H = hidden_targets(X, y, 3, "class_clusters", 2, rng)
    assert H == 6 and np.array_equal(t // 2, y)  # every sub-cluster belongs to its class
    t, H = hidden_targets(X, y, 3, "clusters", 5, rng)
    assert H == 5 and set(t) <= set(range(5))
    with pytest.raises(InputError, match="hidden must be one of"):
        hidden_targets(X, y, 3, "pca", 2, rng)


@pytest.mark.parametrize("hidden,n_hidden,H", [("classes", None, 3), ("clusters", 4, 4),
                                               ("class_clusters", 2, 6)])
def test_shapes_and_probabilities(hidden, n_hidden, H):
    X, y = blobs()
    m = LayerwiseSoftmaxNetwork(hidden=hidden, n_hidden=n_hidden).fit(X, y)
    assert m.n_hidden_ == H
    assert m.coefs_[0].shape == (4, H) and m.coefs_[1].shape == (H, 3)
    assert m.intercepts_[0].shape == (H,) and m.intercepts_[1].shape == (3,)
    h = m.hidden_proba(X)
    assert h.shape == (90, H) and np.allclose(h.sum(axis=1), 1)
    p = m.predict_proba(X)
    assert p.shape == (90, 3) and np.allclose(p.sum(axis=1), 1) and np.isfinite(m.log_loss(X, y))
    assert m.score(X, y) > 0.8


def test_backward_matches_finite_differences():
    X, y = blobs(12)
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(4, 5)), rng.normal(size=5), rng.normal(size=(5, 3)), rng.normal(size=3)]
    Y = np.eye(3)[y]
    loss, grads = backward(X, Y, params)
    eps = 1e-6
    for p, g in zip(params, grads):
        flat = p.reshape(-1)
        for i in range(0, flat.size, 3):
            old = flat[i]
            flat[i] = old + eps
            up = backward(X, Y, params)[0]
            flat[i] = old - eps
            down = backward(X, Y, params)[0]
            flat[i] = old
            assert abs((up - down) / (2 * eps) - g.reshape(-1)[i]) < 1e-6


def test_finetune_lowers_training_loss_and_is_seeded():
    X, y = blobs()
    base = LayerwiseSoftmaxNetwork(hidden="clusters", n_hidden=3).fit(X, y)
    seen = []
    ft = LayerwiseSoftmaxNetwork(hidden="clusters", n_hidden=3, finetune_epochs=30, lr=0.01).fit(
        X, y, callback=lambda e, m: seen.append(e))
    assert seen == list(range(1, 31)) and len(ft.history_) == 30
    assert ft.log_loss(X, y) < base.log_loss(X, y)
    again = LayerwiseSoftmaxNetwork(hidden="clusters", n_hidden=3, finetune_epochs=30, lr=0.01).fit(X, y)
    assert np.array_equal(ft.coefs_[0], again.coefs_[0])


def test_sklearn_clone():
    pytest.importorskip("sklearn")
    from sklearn.base import clone

    m = LayerwiseSoftmaxNetwork(hidden="classes", alpha=0.5)
    assert clone(m).get_params() == m.get_params()
