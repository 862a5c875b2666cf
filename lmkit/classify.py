r"""Softmax classifiers on non-negative features: closed form (explicit) and gradient descent.

Input: ``X`` (n, d) dense ``numpy`` array or any SciPy sparse matrix with **non-negative**
values, ``y`` (n,) labels of any sortable type. Output: a fitted estimator with
``coef_`` (C, d) float64, ``intercept_`` (C,) float64 (scikit-learn's layout), ``classes_`` (C,);
``predict_proba`` (n, C) rows sum to 1. Natural logarithms throughout.

The model is the language model's single softmax layer with a feature vector instead of a
context: ``P(c | x) = softmax(b + x W)[c]``, W (d, C).

Why a closed form exists (the language model's argument, with feature values as weights)
---------------------------------------------------------------------------------------------
The cross-entropy ``L = -sum_n log softmax(x_n W + b)[y_n]`` has gradient
``dL/dW = X^T (P - Y)``. If every input has exactly one active feature (one-hot x), row i of
``X^T (P - Y)`` sums only the samples whose feature is i; they share one prediction
``softmax(W[i] + b)``, so the row is ``f[i] softmax(W[i] + b) - F[i]`` with the feature-class
co-occurrence ``F = X^T Y`` (d, C) and ``f[i] = sum_c F[i, c]``. It vanishes exactly when
``softmax(W[i] + b) = F[i] / f[i] = P(c | i)``: counting is training. With non-negative feature
*values* the same ``F = X^T Y`` is a value-weighted count: ``F[i, c]`` is the total amount of
feature i seen with class c, and ``F[i] / f[i]`` is a distribution over classes **only because
every entry is >= 0** — a negative value would subtract mass and can make ``P(c | i)`` negative
or undefined (``f[i] = 0`` with non-zero entries). That is why negative inputs are refused; shift
them (``X - X.min(axis=0)``) or one-hot encode them into bins.

Many active features
--------------------
With several active features the stationarity condition no longer decouples per feature. The
explicit solution combines the per-feature conditionals the way the language model combines its
offsets (``W_k = lambda_k log P_k``, ``b = (1 - sum lambda_k) log q``):

    W[i, c] = log P(c | i) - log pi[c],   b[c] = log pi[c],   logits = b + lambda x W,

with ``pi`` the class prior. For ``lambda = 1`` and integer counts this is exactly multinomial
naive Bayes (``log P(i | c) = log P(c | i) + log P(i) - log pi[c]``, and ``x . log P(i)`` is the
same for every class so it cancels in the softmax). Naive Bayes counts every active feature as
independent evidence and is badly over-confident when many features are on (64 pixels); the one
scale ``lambda`` undoes that. It is chosen without any gradient through W: the held-out NLL
``mean_n [logsumexp(b + lambda s_n) - b[y_n] - lambda s_n[y_n]]`` (``s_n = x_n W``) is convex in
the scalar lambda, so a log-spaced grid followed by a bounded Brent refinement on a held-out
slice finds it; the counts are then recomputed on all the data (they are additive).

Smoothing: ``P(c | i) = (F[i, c] + alpha pi[c]) / (f[i] + alpha)`` — additive smoothing toward
the prior, so a feature never seen active gets ``W[i] = 0`` (no evidence) instead of ``log 0``;
``pi[c] = (n_c + 1) / (n + C)``.

Gradient solver
---------------
``GradientSoftmaxClassifier`` trains the same ``(W, b)`` by minibatch gradient descent using the
optimisers of ``lmkit.gradient`` (``dW = X_b^T (P - Y) / n_b``, ``db = sum(P - Y) / n_b``), from
zeros or warm-started from the explicit solution (``init="explicit"``).
"""
from __future__ import annotations

import inspect
import time
import warnings

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar

from .errors import InputError

try:  # scikit-learn is optional: with it the estimators are real sklearn estimators
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import ClassifierMixin as _ClassifierMixin
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    class _Base:
        """Minimal ``get_params``/``set_params`` from the ``__init__`` signature."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values()
                          if p.name != "self" and p.kind == p.KEYWORD_ONLY)

        def get_params(self, deep=True):
            return {k: getattr(self, k) for k in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for k, v in params.items():
                if k not in valid:
                    raise InputError(f"unknown parameter {k!r}; valid: {', '.join(valid)}")
                setattr(self, k, v)
            return self

        def __repr__(self):
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class _ClassifierMixin:
        def score(self, X, y, sample_weight=None):
            return float(np.average(self.predict(X) == np.asarray(y), weights=sample_weight))


try:
    from sklearn.exceptions import NotFittedError
except ImportError:  # pragma: no cover
    class NotFittedError(InputError, AttributeError):
        """An estimator was used before ``fit``."""


def check_fitted(est, attribute: str) -> None:
    """Raise ``NotFittedError`` (scikit-learn's when installed) if ``est`` lacks ``attribute``."""
    if not hasattr(est, attribute):
        raise NotFittedError(f"this {type(est).__name__} is not fitted yet; call fit(X, y) first")


# ---- pure functions ---------------------------------------------------------------------------
def check_features(X, name: str = "X"):
    """Validate ``X`` (n, d): finite, non-negative; returns CSR float64 or a float64 ndarray.

    Example: ``check_features(np.array([[0, 2], [1, 0]]))`` -> the same values as float64.
    """
    if np.iscomplexobj(X.data if sp.issparse(X) else np.asarray(X)):
        raise InputError(f"Complex data not supported in {name}; pass real, non-negative features")
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        values = X.data
    else:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise InputError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}; "
                             "Reshape your data, e.g. X.reshape(len(X), -1)")
        values = X
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"Found array with 0 sample(s) or feature(s) (shape {X.shape}) in {name}; "
                         "pass at least one row and one column")
    if values.size and not np.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinite values; drop or impute them")
    if values.size and values.min() < 0:
        raise InputError(
            f"Negative values in data passed to {name} (min {values.min():g}); the closed form needs "
            "non-negative features because F = X^T Y is a weighted count and P(c | feature) = "
            "F[i] / f[i] is a distribution only when every weight is >= 0; shift each column "
            "(X - X.min(axis=0)) or one-hot encode it into bins")
    return X


def check_X_y(X, y):
    """Validated features and labels: ``(X, classes (C,), int64 label indices (n,))``."""
    X = check_features(X)
    classes, y_idx = encode_labels(y)
    if X.shape[0] != len(y_idx):
        raise InputError(f"X has {X.shape[0]} rows but y has {len(y_idx)}; pass one label per row")
    return X, classes, y_idx


def encode_labels(y, classes=None):
    """Labels -> (classes (C,), int64 indices (n,)). Unknown labels in ``y`` raise InputError."""
    if y is None:
        raise InputError("this estimator requires y to be passed, but the target y is None; "
                         "call fit(X, y) with one label per row")
    y = np.asarray(y)
    if classes is None and y.dtype.kind == "f" and not np.all(np.mod(y[np.isfinite(y)], 1) == 0):
        raise InputError("Unknown label type: continuous targets are for regression; pass class "
                         "labels (integers or strings)")
    if y.ndim != 1:
        raise InputError(f"y must be 1-D (n_samples,), got shape {y.shape}; use y.ravel()")
    if classes is None:
        classes, idx = np.unique(y, return_inverse=True)
        return classes, idx.astype(np.int64)
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    if len(y) and not np.array_equal(classes[idx], y):
        raise InputError(f"y has labels not seen in fit: {np.setdiff1d(y, classes)[:5]}; "
                         "fit on data covering every class")
    return classes, idx.astype(np.int64)


def cooccurrence(X, y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Feature-class co-occurrence ``F = X^T Y`` (d, C) float64, weighted by feature values.

    Example: X = [[1, 0], [2, 1]], y = [0, 1] -> F = [[1, 2], [0, 1]].
    """
    Y = sp.csr_matrix((np.ones(len(y_idx)), (np.arange(len(y_idx)), y_idx)),
                      shape=(len(y_idx), n_classes))
    F = X.T @ Y
    return np.asarray(F.todense() if sp.issparse(F) else F, dtype=np.float64)


def class_prior(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """``pi[c] = (n_c + 1) / (n + C)``; (C,) float64, sums to 1."""
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + n_classes)


def solve_explicit_classifier(F: np.ndarray, prior: np.ndarray, alpha: float):
    """Closed form ``W = log P(c | i) - log pi`` (d, C), ``b = log pi`` (C,).

    ``P(c | i) = (F[i, c] + alpha pi[c]) / (f[i] + alpha)``. With alpha = 0 and a one-hot
    dataset, ``softmax(W[i] + b) = F[i] / f[i]`` exactly (the empirical conditional).
    """
    f = F.sum(axis=1, keepdims=True)
    if alpha == 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = np.where(f > 0, F / np.where(f > 0, f, 1.0), prior)
        # log 0 -> the smallest normal float's log, so 0 * W stays 0 (not NaN) for absent features
        log_cond = np.log(np.maximum(cond, np.finfo(np.float64).tiny))
    else:
        log_cond = np.log(F + alpha * prior) - np.log(f + alpha)
    log_prior = np.log(prior)
    return log_cond - log_prior, log_prior


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, C) logits, float64, stable for large values."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def heldout_nll(scale: float, S: np.ndarray, b: np.ndarray, y_idx: np.ndarray) -> float:
    """Mean NLL (nats) of ``softmax(b + scale S)`` at the true classes; S (n, C) = X W."""
    lp = log_softmax(b + scale * S)
    return float(-lp[np.arange(len(y_idx)), y_idx].mean())


def choose_scale(S: np.ndarray, b: np.ndarray, y_idx: np.ndarray, grid=None):
    """Scale lambda >= 0 minimising held-out NLL (convex in lambda): grid, then Brent.

    Returns ``(lambda, trace)``, trace = [(lambda, nll), ...] of every point evaluated.
    """
    grid = np.logspace(-4, 1, 21) if grid is None else np.asarray(grid, dtype=np.float64)
    trace = [(float(g), heldout_nll(g, S, b, y_idx)) for g in grid]
    k = int(np.argmin([t[1] for t in trace]))
    lo = np.log(grid[max(k - 1, 0)])
    hi = np.log(grid[min(k + 1, len(grid) - 1)])
    if hi > lo:
        res = minimize_scalar(lambda t: heldout_nll(np.exp(t), S, b, y_idx),
                              bounds=(lo, hi), method="bounded", options={"xatol": 1e-3})
        trace.append((float(np.exp(res.x)), float(res.fun)))
    best = min(trace, key=lambda t: t[1])
    return best[0], trace


def split_indices(n: int, fraction: float, rng: np.random.Generator):
    """Seeded split of range(n) into (fit, held_out) index arrays; held_out has round(n*f)."""
    perm = rng.permutation(n)
    n_out = int(round(n * fraction))
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


# ---- estimators -------------------------------------------------------------------------------
class _ProbaMixin:
    """``predict_proba``, ``predict`` and ``log_loss`` from ``predict_log_proba`` (n, C)."""

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, C); every row sums to 1."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X) -> np.ndarray:
        """Most probable class per row; (n,) of ``classes_``' dtype."""
        logp = self.predict_log_proba(X)  # first, so an unfitted model raises NotFittedError
        return self.classes_[np.argmax(logp, axis=1)]

    def log_loss(self, X, y) -> float:
        """Mean NLL in nats of the true classes (lower is better)."""
        _, idx = encode_labels(y, self.classes_)
        return float(-self.predict_log_proba(X)[np.arange(len(idx)), idx].mean())


class _SoftmaxClassifierBase(_ProbaMixin, _ClassifierMixin, _Base):
    """Prediction shared by both solvers: ``softmax(intercept_ + X coef_^T)``."""

    def _check_fitted(self):
        check_fitted(self, "coef_")

    def decision_function(self, X) -> np.ndarray:
        """Logits (n, C) float64; for two classes scikit-learn's (n,) ``logit[1] - logit[0]``."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def _logits(self, X) -> np.ndarray:
        """Logits (n, C) float64."""
        self._check_fitted()
        X = check_features(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input; transform it the same way "
                             "as the training data")
        return np.asarray(X @ self.coef_.T) + self.intercept_

    def predict_log_proba(self, X) -> np.ndarray:
        """Natural-log class probabilities (n, C); columns follow ``classes_``."""
        return log_softmax(self._logits(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        return tags


class ExplicitSoftmaxClassifier(_SoftmaxClassifierBase):
    """Single-layer softmax classifier solved in closed form (no gradient through W).

    alpha: additive smoothing toward the class prior, in feature-value units.
    scale: lambda multiplying ``x W``; ``"auto"`` chooses it on a held-out slice of
    ``validation_fraction`` of the training rows (then refits on all rows); a float fixes it.
    random_state: seed of the held-out split.

    Fitted: ``coef_`` (C, d) = ``scale_ W^T``, ``intercept_`` (C,) = log prior, ``classes_``,
    ``scale_``, ``scale_trace_`` [(lambda, held-out nll), ...], ``feature_log_conditional_``
    (d, C) = log P(c | feature), ``class_log_prior_`` (C,), ``n_features_in_``.
    """

    def __init__(self, *, alpha=1.0, scale="auto", validation_fraction=0.2, random_state=0):
        self.alpha = alpha
        self.scale = scale
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X, y):
        X, classes, y_idx = check_X_y(X, y)
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise InputError(f"alpha must be a number >= 0, got {self.alpha!r}; try 1.0")
        C = len(classes)
        if self.scale == "auto":
            if not 0 < self.validation_fraction < 1:
                raise InputError(f"validation_fraction must be in (0, 1), got "
                                 f"{self.validation_fraction!r}; try 0.2 or give scale=1.0")
            rng = np.random.default_rng(self.random_state)
            fit_i, out_i = split_indices(X.shape[0], self.validation_fraction, rng)
            if len(out_i) == 0 or len(fit_i) == 0:
                raise InputError(f"{X.shape[0]} rows are too few to hold out "
                                 f"{self.validation_fraction:g} of them; give scale=1.0")
            W, b = solve_explicit_classifier(cooccurrence(X[fit_i], y_idx[fit_i], C),
                                             class_prior(y_idx[fit_i], C), float(self.alpha))
            S = np.asarray(X[out_i] @ W)
            scale, trace = choose_scale(S, b, y_idx[out_i])
        else:
            scale = float(self.scale)
            if not scale >= 0:
                raise InputError(f"scale must be 'auto' or a number >= 0, got {self.scale!r}")
            trace = []
        prior = class_prior(y_idx, C)
        W, b = solve_explicit_classifier(cooccurrence(X, y_idx, C), prior, float(self.alpha))
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.scale_ = scale
        self.scale_trace_ = trace
        self.class_log_prior_ = b
        self.feature_log_conditional_ = W + b
        self.coef_ = (scale * W).T.copy()
        self.intercept_ = b.copy()
        return self


# ---- gradient solver --------------------------------------------------------------------------
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
    from .gradient import adam_update, sgd_update

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
            from .gradient import ConvergenceWarning
            warnings.warn(f"stopped at max_iter={epochs} epochs while the training loss was still "
                          f"improving by more than tol={tol}; raise max_iter", ConvergenceWarning,
                          stacklevel=3)
    return history


class GradientSoftmaxClassifier(_SoftmaxClassifierBase):
    """The same single-layer softmax, trained by minibatch gradient descent.

    init: "zeros" (from scratch) or "explicit" (warm start from ``ExplicitSoftmaxClassifier``
    with this ``alpha``). max_iter: epochs. lr, batch_size, optimizer ("adam" | "sgd" with
    momentum 0.9): see ``fit_minibatch``. tol: stop when the epoch training loss improves by
    less than tol for 3 epochs (None = run all epochs). random_state: minibatch order (and the
    explicit init's held-out split).

    Fitted: ``coef_`` (C, d), ``intercept_`` (C,), ``classes_``, ``n_iter_`` (epochs run),
    ``history_`` (per epoch), ``n_features_in_``.
    """

    def __init__(self, *, init="zeros", alpha=1.0, max_iter=100, lr=1e-3, batch_size=64,
                 optimizer="adam", tol=1e-4, random_state=0):
        self.init = init
        self.alpha = alpha
        self.max_iter = max_iter
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.tol = tol
        self.random_state = random_state

    def fit(self, X, y, callback=None):
        """Train; ``callback(epoch, self)`` after each epoch (e.g. to track test accuracy)."""
        X, classes, y_idx = check_X_y(X, y)
        if self.init == "explicit":
            start = ExplicitSoftmaxClassifier(alpha=self.alpha, random_state=self.random_state).fit(X, y)
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
