r"""The same softmax layers trained by minibatch gradient descent (the iterative baseline).

Input: ``X`` (n, d) dense or SciPy sparse, non-negative (``negative="clip"`` zeroes negatives:
the warm start needs the closed form), ``y`` (n,) labels. Output: ``GradientSoftmaxClassifier``
with the layout of ``ExplicitSoftmaxClassifier`` (``coef_`` (C, d), ``intercept_`` (C,)) plus
``n_iter_`` and ``history_``. ``fit_minibatch`` is the loop shared with the layer-wise network.

Steps: ``dW = X_b^T (P - Y) / n_b``, ``db = sum(P - Y) / n_b`` with the language model's
optimisers (``lmkit.gradient.adam_update`` / ``sgd_update``), from zeros or warm-started from
the explicit solution (``init="explicit"``).
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from ..errors import InputError
from ..gradient import ConvergenceWarning, adam_update, sgd_update
from .base import SoftmaxClassifierBase, check_X_y, log_softmax
from .explicit import ExplicitSoftmaxClassifier


def softmax_gradient(X, Y: np.ndarray, W: np.ndarray, b: np.ndarray):
    """Mean cross-entropy of a batch and ``[dW (d, C), db (C,)]``; X (B, d), Y (B, C) one-hot."""
    logp = log_softmax(np.asarray(X @ W) + b)
    B = X.shape[0]
    G = (np.exp(logp) - Y) / B  # (P - Y) / B
    return float(-(logp * Y).sum() / B), [np.asarray(X.T @ G), G.sum(axis=0)]


def fit_minibatch(params: list, grad_fn, n: int, *, epochs: int, batch_size: int, lr: float,
                  optimizer: str = "adam", rng: np.random.Generator, tol=None,
                  n_iter_no_change: int = 3, on_epoch=None) -> list:
    """Shuffled minibatch descent on ``params`` (arrays, updated in place); returns the history.

    ``grad_fn(batch_indices) -> (mean loss, grads like params)``. Steps are the language model's
    optimisers (``gradient.adam_update`` / ``gradient.sgd_update``, dense: idx None). Stops after
    ``epochs``, or when the epoch's mean training loss improved by less than ``tol`` for
    ``n_iter_no_change`` epochs in a row (``tol`` None = never). ``on_epoch(epoch, params)`` runs
    after every epoch (1-based). History: [{"epoch", "seconds", "train_loss"}, ...], seconds =
    cumulative training time (the callback's time is not counted).
    """
    if optimizer not in ("adam", "sgd"):
        raise InputError(f"optimizer must be adam or sgd, got {optimizer!r}")
    if not (lr > 0 and np.isfinite(lr)):
        raise InputError(f"lr must be > 0, got {lr!r}; try 1e-3")
    if not (int(batch_size) == batch_size and batch_size >= 1):
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}; try 64")
    state = [(np.zeros_like(p), np.zeros_like(p)) if optimizer == "adam" else (np.zeros_like(p),)
             for p in params]
    history, step, seconds, best, bad = [], 0, 0.0, np.inf, 0
    for epoch in range(1, int(epochs) + 1):
        t0 = time.perf_counter()
        order = rng.permutation(n)
        total = 0.0
        for a in range(0, n, int(batch_size)):
            idx = order[a:a + int(batch_size)]
            loss, grads = grad_fn(idx)
            if not np.isfinite(loss):
                raise InputError(f"training diverged at epoch {epoch} (loss {loss}); lower lr (got {lr})")
            step += 1
            for p, s, g in zip(params, state, grads):
                if optimizer == "adam":
                    adam_update(p, *s, None, g, lr, step)
                else:
                    sgd_update(p, *s, None, g, lr)
            total += loss * len(idx)
        seconds += time.perf_counter() - t0
        history.append({"epoch": epoch, "seconds": seconds, "train_loss": total / n})
        if on_epoch is not None:
            on_epoch(epoch, params)
        if tol is not None:
            bad = bad + 1 if total / n > best - tol else 0
            best = min(best, total / n)
            if bad >= n_iter_no_change:
                break
    else:
        if tol is not None and bad == 0:
            warnings.warn(f"stopped at max_iter={epochs} epochs while the training loss was still "
                          f"improving by more than tol={tol}; raise max_iter", ConvergenceWarning,
                          stacklevel=3)
    return history


class GradientSoftmaxClassifier(SoftmaxClassifierBase):
    """The same single-layer softmax, trained by minibatch gradient descent.

    init: "zeros" (from scratch) or "explicit" (warm start from ``ExplicitSoftmaxClassifier``
    with this ``alpha``). max_iter: epochs. lr, batch_size, optimizer ("adam" | "sgd" with
    momentum 0.9): see ``fit_minibatch``. tol: stop when the epoch training loss improves by
    less than tol for 3 epochs (None = run all epochs). negative: "error" | "clip", as in
    ``ExplicitSoftmaxClassifier``. random_state: minibatch order (and the explicit init's
    held-out split).

    Fitted: ``coef_`` (C, d), ``intercept_`` (C,), ``classes_``, ``n_iter_`` (epochs run),
    ``history_`` (per epoch), ``n_features_in_``.
    """

    def __init__(self, *, init="zeros", alpha=1.0, max_iter=100, lr=1e-3, batch_size=64,
                 optimizer="adam", tol=1e-4, negative="error", random_state=0):
        self.init = init
        self.alpha = alpha
        self.max_iter = max_iter
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.tol = tol
        self.negative = negative
        self.random_state = random_state

    def fit(self, X, y, callback=None):
        """Train; ``callback(epoch, self)`` after each epoch (e.g. to track test accuracy)."""
        X, classes, y_idx = check_X_y(X, y, negative=self.negative)
        if self.init == "explicit":
            start = ExplicitSoftmaxClassifier(alpha=self.alpha,
                                              random_state=self.random_state).fit(X, y)
            W, b = start.coef_.T.copy(), start.intercept_.copy()
        elif self.init == "zeros":
            W, b = np.zeros((X.shape[1], len(classes))), np.zeros(len(classes))
        else:
            raise InputError(f"init must be 'zeros' or 'explicit', got {self.init!r}")
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        params = [W, b]
        Y = np.eye(len(classes))[y_idx]

        def on_epoch(epoch, p):
            self.coef_, self.intercept_ = p[0].T, p[1]
            if callback is not None:
                callback(epoch, self)

        self.coef_, self.intercept_ = W.T, b
        if callback is not None:
            callback(0, self)
        self.history_ = fit_minibatch(
            params, lambda idx: softmax_gradient(X[idx], Y[idx], W, b), X.shape[0],
            epochs=self.max_iter, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
            rng=np.random.default_rng(self.random_state), tol=self.tol, on_epoch=on_epoch)
        self.n_iter_ = len(self.history_)
        self.coef_, self.intercept_ = W.T.copy(), b.copy()
        return self
