"""Alternatives for the explicit classifier on the digits split of scripts/digits.py (seed 0).

Feature encodings (raw pixels, [x, 16 - x] complement, one-hot of 5 intensity bins) x smoothing
alpha x scale (chosen on a held-out slice vs 1.0 = multinomial naive Bayes). Prints one line each.

    nice -n 10 .venv/bin/python scripts/digits_explicit_variants.py
"""
import numpy as np
from lmkit.classify import ExplicitSoftmaxClassifier
from lmkit.digits import load_digits, complement_features
s = load_digits(0.25, 0)
def onehot(X, edges=(0.5, 4.5, 8.5, 12.5)):
    b = np.digitize(X, edges); n, d = X.shape; K = len(edges) + 1
    out = np.zeros((n, d * K)); out[np.arange(n)[:, None], np.arange(d) * K + b] = 1; return out
enc = {"raw": lambda X: X, "complement": lambda X: complement_features(X, 16), "onehot5bins": onehot}
for name, f in enc.items():
    for alpha in (0.1, 1.0, 10.0):
        for scale in ("auto", 1.0):
            c = ExplicitSoftmaxClassifier(alpha=alpha, scale=scale).fit(f(s.X_train), s.y_train)
            print(f"{name:12s} alpha={alpha:<5g} scale={scale!s:5s} -> lambda={c.scale_:.4f} "
                  f"acc={c.score(f(s.X_test), s.y_test):.4f} logloss={c.log_loss(f(s.X_test), s.y_test):.4f}")
