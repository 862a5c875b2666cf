"""Shared pieces of the classifiers: input validation, label encoding, the estimator shells.

Input contract of every estimator in ``lmkit.classifier``: ``X`` (n, d) dense ``numpy`` array
or any SciPy sparse matrix of finite real values, **non-negative** unless ``negative="clip"``;
``y`` (n,) labels of any sortable type. Validated ``X`` comes back as CSR float64 or a float64
ndarray; labels as ``(classes (C,), int64 indices (n,))``.

Output contract of ``SoftmaxClassifierBase`` (one softmax layer): ``coef_`` (C, d) float64,
``intercept_`` (C,) float64 (scikit-learn's layout), ``classes_`` (C,); ``predict_proba``
(n, C) rows sum to 1. Natural logarithms throughout.

With scikit-learn installed the estimators are real scikit-learn estimators (``clone``,
pipelines, ``cross_val_score``); without it, a minimal ``get_params``/``set_params`` stands in.
"""
from __future__ import annotations

import inspect

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

NEGATIVE_MODES = ("error", "clip")

try:  # scikit-learn is optional: with it the estimators are real sklearn estimators
    from sklearn.base import BaseEstimator
    from sklearn.base import ClassifierMixin
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    class BaseEstimator:
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

    class ClassifierMixin:
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


def check_features(X, name: str = "X", negative: str = "error"):
    """Validate ``X`` (n, d): finite, non-negative; returns CSR float64 or a float64 ndarray.

    ``negative="clip"`` sets negative entries to 0 (no evidence) instead of refusing them: a
    ``MinMaxScaler`` fitted on training folds maps held-out values slightly below the training
    minimum to small negatives. Example: ``check_features(np.array([[0, 2], [1, 0]]))`` -> the
    same values as float64; ``check_features([[-0.1, 1]], negative="clip")`` -> ``[[0., 1.]]``.
    """
    if negative not in NEGATIVE_MODES:
        raise InputError(f"negative must be 'error' or 'clip', got {negative!r}")
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
        if negative == "clip":
            if sp.issparse(X):
                X = X.copy()
                np.maximum(X.data, 0.0, out=X.data)
                X.eliminate_zeros()
                return X
            return np.maximum(X, 0.0)
        raise InputError(
            f"Negative values in data passed to {name} (min {values.min():g}); the closed form needs "
            "non-negative features because they are counted as feature mass (F = X^T Y); shift "
            "each column (X - X.min(axis=0)), one-hot encode it into bins, or pass "
            "negative='clip' to treat negatives as 0")
    return X


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


def check_X_y(X, y, negative: str = "error"):
    """Validated features and labels: ``(X, classes (C,), int64 label indices (n,))``."""
    X = check_features(X, negative=negative)
    classes, y_idx = encode_labels(y)
    if X.shape[0] != len(y_idx):
        raise InputError(f"X has {X.shape[0]} rows but y has {len(y_idx)}; pass one label per row")
    return X, classes, y_idx


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, C) logits, float64, stable for large values."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class ProbaMixin:
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

    def check_input(self, X, attribute: str):
        """Fitted check, then ``check_features`` with this estimator's ``negative`` mode and
        the training width; returns the validated X."""
        check_fitted(self, attribute)
        X = check_features(X, negative=self.negative)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input; transform it the same way "
                             "as the training data")
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = self.negative == "error"
        tags.input_tags.sparse = True
        return tags


class SoftmaxClassifierBase(ProbaMixin, ClassifierMixin, BaseEstimator):
    """Prediction shared by the one-layer solvers: ``softmax(intercept_ + X coef_^T)``."""

    def decision_function(self, X) -> np.ndarray:
        """Logits (n, C) float64; for two classes scikit-learn's (n,) ``logit[1] - logit[0]``."""
        z = self.logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def logits(self, X) -> np.ndarray:
        """Logits (n, C) float64."""
        X = self.check_input(X, "coef_")
        return np.asarray(X @ self.coef_.T) + self.intercept_

    def predict_log_proba(self, X) -> np.ndarray:
        """Natural-log class probabilities (n, C); columns follow ``classes_``."""
        return log_softmax(self.logits(X))
