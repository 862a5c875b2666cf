r"""Layer by layer explicit solutions for a two-layer softmax network, then optional fine-tuning.

Input: ``X`` (n, d) non-negative (dense or SciPy sparse), ``y`` (n,) labels. Output: a fitted
``LayerwiseSoftmaxNetwork`` with ``coefs_ = [W1 (d, H), W2 (H, C)]``,
``intercepts_ = [b1 (H,), b2 (C,)]``, and

    h = softmax(b1 + x W1)  (n, H),   P(c | x) = softmax(b2 + h W2)  (n, C).

The hidden layer is itself a softmax layer, so each layer is a single-layer softmax model on
non-negative inputs and the closed form of ``explicit.py`` applies to both:

1. layer 1 is solved explicitly from ``X`` against *hidden targets* t (n,) in {0..H-1};
2. its outputs ``h`` are probabilities — non-negative — so layer 2 is solved explicitly from
   ``h`` against the labels (``F = h^T Y`` is a soft co-occurrence count);
3. optionally both layers are fine-tuned end to end by minibatch gradient descent (backprop
   through the hidden softmax: ``dz1 = h * (dh - sum(dh * h))`` with ``dh = (P - Y) W2^T``),
   using the shared loop and optimisers (``descent.fit_minibatch`` / ``lmkit.gradient``).

Hidden targets (``hidden=``):

- ``"classes"``: t = y, H = C — layer 1 is the explicit classifier itself, layer 2 re-reads
  its class probabilities;
- ``"clusters"``: t = seeded k-means cluster of x (H = ``n_hidden``), ignoring the labels;
- ``"class_clusters"``: k-means *within each class* (``n_hidden`` clusters per class,
  H = C * n_hidden), so each hidden unit is a sub-style of one class (e.g. 7 with and without a bar).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .base import BaseEstimator, ClassifierMixin, ProbaMixin, check_X_y, log_softmax
from .descent import fit_minibatch
from .explicit import ExplicitSoftmaxClassifier

HIDDEN_KINDS = ("classes", "clusters", "class_clusters")


def kmeans(X: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 30) -> np.ndarray:
    """Seeded k-means (k-means++ init, Lloyd steps) of dense X (n, d); labels (n,) int64.

    Example: two well separated pairs of points -> two clusters of two.
    """
    n = X.shape[0]
    if not 1 <= k <= n:
        raise InputError(f"cannot make {k} clusters from {n} rows; choose 1 <= n_hidden <= {n}")
    sq = (X * X).sum(axis=1)
    centers = [X[rng.integers(n)]]
    dist = sq - 2 * X @ centers[0] + centers[0] @ centers[0]
    for _ in range(1, k):
        p = np.maximum(dist, 0)
        i = rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)
        centers.append(X[i])
        dist = np.minimum(dist, sq - 2 * X @ X[i] + X[i] @ X[i])
    C = np.array(centers)
    labels = np.zeros(n, dtype=np.int64)
    for it in range(n_iter):
        d2 = sq[:, None] - 2 * X @ C.T + (C * C).sum(axis=1)[None, :]
        new = np.argmin(d2, axis=1)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():  # an emptied cluster keeps its old centre
                C[j] = X[members].mean(axis=0)
    return labels


def hidden_targets(X, y_idx: np.ndarray, n_classes: int, kind: str, n_hidden, rng):
    """Hidden-unit target per row (n,) int64 and the number of hidden units H."""
    if kind == "classes":
        return y_idx, n_classes
    dense = X.toarray() if sp.issparse(X) else X
    if kind == "clusters":
        k = int(n_hidden)
        return kmeans(dense, k, rng), k
    if kind == "class_clusters":
        k = int(n_hidden)
        t = np.empty(len(y_idx), dtype=np.int64)
        for c in range(n_classes):
            rows = np.flatnonzero(y_idx == c)
            kc = min(k, len(rows))
            t[rows] = c * k + kmeans(dense[rows], kc, rng)
        return t, n_classes * k
    raise InputError(f"hidden must be one of {', '.join(HIDDEN_KINDS)}, got {kind!r}")


def forward(X, W1, b1, W2, b2):
    """Hidden probabilities h (n, H) and output log-probabilities (n, C)."""
    h = np.exp(log_softmax(np.asarray(X @ W1) + b1))
    return h, log_softmax(h @ W2 + b2)


def backward(X, Y, params):
    """Mean cross-entropy and its gradients [dW1, db1, dW2, db2] for a batch; Y (n, C) one-hot."""
    W1, b1, W2, b2 = params
    h, logp = forward(X, W1, b1, W2, b2)
    n = X.shape[0]
    loss = float(-(logp * Y).sum() / n)
    dz2 = (np.exp(logp) - Y) / n
    dh = dz2 @ W2.T
    dz1 = h * (dh - (dh * h).sum(axis=1, keepdims=True))
    return loss, [np.asarray(X.T @ dz1), dz1.sum(axis=0), h.T @ dz2, dz2.sum(axis=0)]


class LayerwiseSoftmaxNetwork(ProbaMixin, ClassifierMixin, BaseEstimator):
    """Two softmax layers, each solved in closed form; optional end-to-end gradient polish.

    hidden: "classes" | "clusters" | "class_clusters" (see the module docstring).
    n_hidden: clusters (``"clusters"``) or clusters per class (``"class_clusters"``).
    alpha: smoothing of both explicit layers. finetune_epochs: 0 = explicit only.
    lr, batch_size, optimizer: of the fine-tuning (see ``descent.fit_minibatch``).
    negative: "error" | "clip", as in ``ExplicitSoftmaxClassifier``.
    random_state: seed of k-means, the scale search split and the minibatch order.

    Fitted: ``coefs_``, ``intercepts_``, ``classes_``, ``n_hidden_`` (H), ``layers_`` (the two
    explicit ``ExplicitSoftmaxClassifier``s), ``history_`` (fine-tuning epochs), ``n_features_in_``.
    """

    def __init__(self, *, hidden="class_clusters", n_hidden=4, alpha=1.0, finetune_epochs=0,
                 lr=1e-3, batch_size=64, optimizer="adam", negative="error", random_state=0):
        self.hidden = hidden
        self.n_hidden = n_hidden
        self.alpha = alpha
        self.finetune_epochs = finetune_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.negative = negative
        self.random_state = random_state

    def fit(self, X, y, callback=None):
        """Solve layer 1, then layer 2, then fine-tune; ``callback(epoch, self)`` after each epoch."""
        X, classes, y_idx = check_X_y(X, y, negative=self.negative)
        rng = np.random.default_rng(self.random_state)
        t, H = hidden_targets(X, y_idx, len(classes), self.hidden, self.n_hidden, rng)
        seed = int(rng.integers(2**31))
        layer1 = ExplicitSoftmaxClassifier(alpha=self.alpha, random_state=seed).fit(X, t)
        # columns of layer 1 follow the hidden targets actually present; keep all H for layer 2
        W1 = np.zeros((X.shape[1], H))
        b1 = np.full(H, -np.inf)
        W1[:, layer1.classes_] = layer1.coef_.T
        b1[layer1.classes_] = layer1.intercept_
        b1[~np.isfinite(b1)] = np.min(layer1.intercept_) - 30.0  # an empty cluster stays ~off
        h = np.exp(log_softmax(np.asarray(X @ W1) + b1))
        layer2 = ExplicitSoftmaxClassifier(alpha=self.alpha, random_state=seed).fit(h, y_idx)
        W2 = np.zeros((H, len(classes)))
        b2 = np.zeros(len(classes))
        W2[:, layer2.classes_] = layer2.coef_.T
        b2[layer2.classes_] = layer2.intercept_
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.n_hidden_ = H
        self.layers_ = [layer1, layer2]
        self.coefs_ = [W1, W2]
        self.intercepts_ = [b1, b2]
        self.history_ = []
        if self.finetune_epochs:
            Y = np.eye(len(classes))[y_idx]
            params = [W1, b1, W2, b2]

            def on_epoch(epoch, _params):
                self.coefs_, self.intercepts_ = [_params[0], _params[2]], [_params[1], _params[3]]
                if callback is not None:
                    callback(epoch, self)

            self.history_ = fit_minibatch(
                params, lambda idx: backward(X[idx], Y[idx], params), X.shape[0],
                epochs=self.finetune_epochs, batch_size=self.batch_size, lr=self.lr,
                optimizer=self.optimizer, rng=rng, on_epoch=on_epoch)
        return self

    def hidden_proba(self, X) -> np.ndarray:
        """Hidden-layer probabilities (n, H); rows sum to 1."""
        X = self.check_input(X, "coefs_")
        return np.exp(log_softmax(np.asarray(X @ self.coefs_[0]) + self.intercepts_[0]))

    def predict_log_proba(self, X) -> np.ndarray:
        """Natural-log class probabilities (n, C)."""
        X = self.check_input(X, "coefs_")
        return forward(X, self.coefs_[0], self.intercepts_[0], self.coefs_[1], self.intercepts_[1])[1]
