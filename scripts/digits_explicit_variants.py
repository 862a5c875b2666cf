"""Alternatives for the one-layer explicit classifier on the digits split of scripts/digits.py.

Feature encodings (raw pixels, ``[x, 16 - x]`` complement, one-hot of 5 intensity bins) x
smoothing alpha x scale (fitted on a held-out slice vs 1.0 = multinomial naive Bayes), seed 0.
Prints one line each: the fitted lambda, test accuracy and test log loss (nats).

    nice -n 10 .venv/bin/python scripts/digits_explicit_variants.py
"""
import numpy as np

from lmkit.classifier import ExplicitSoftmaxClassifier, complement_features, load_digits


def one_hot_bins(X, edges=(0.5, 4.5, 8.5, 12.5)):
    """Each pixel -> a one-hot of its intensity bin: (n, d) -> (n, d * (len(edges) + 1))."""
    bins = np.digitize(X, edges)
    n, d = X.shape
    out = np.zeros((n, d * (len(edges) + 1)))
    out[np.arange(n)[:, None], np.arange(d) * (len(edges) + 1) + bins] = 1
    return out


def main():
    s = load_digits(0.25, 0)
    encodings = {"raw": lambda X: X, "complement": lambda X: complement_features(X, 16),
                 "onehot5bins": one_hot_bins}
    for name, encode in encodings.items():
        X_tr, X_te = encode(s.X_train), encode(s.X_test)
        for alpha in (0.1, 1.0, 10.0):
            for scale in ("auto", 1.0):
                c = ExplicitSoftmaxClassifier(alpha=alpha, scale=scale).fit(X_tr, s.y_train)
                print(f"{name:12s} alpha={alpha:<5g} scale={scale!s:5s} -> lambda={c.scale_:.4g} "
                      f"acc={c.score(X_te, s.y_test):.4f} logloss={c.log_loss(X_te, s.y_test):.4f}")


if __name__ == "__main__":
    main()
