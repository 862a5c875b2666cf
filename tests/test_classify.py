import numpy as np
import pytest
import scipy.sparse as sp

from lmkit.classifier import ExplicitSoftmaxClassifier, GradientSoftmaxClassifier
from lmkit.classifier.base import check_features
from lmkit.classifier.explicit import (choose_scale, class_prior, cooccurrence, cross_fitted_logits,
                                       solve_explicit_classifier)
from lmkit.errors import InputError

# one-hot inputs: feature 0 seen with classes [0, 0, 1], feature 1 with [1, 1, 1, 0]
X1 = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [0, 1]], dtype=float)
Y1 = np.array([0, 0, 1, 1, 1, 1, 0])


def two_blobs(n=60, seed=0):
    """Non-negative 3-feature data, 2 classes that differ in which feature is large."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.poisson(1.0, (n, 3)).astype(float)
    X[:, 0] += 3 * (y == 0)
    X[:, 1] += 3 * (y == 1)
    return X, y


def test_cooccurrence_is_weighted_count():
    X = np.array([[1, 0], [2, 1]], dtype=float)
    assert cooccurrence(X, np.array([0, 1]), 2).tolist() == [[1, 2], [0, 1]]


def test_closed_form_on_one_hot_equals_empirical_conditional():
    clf = ExplicitSoftmaxClassifier(alpha=0, scale=1.0).fit(X1, Y1)
    p = clf.predict_proba(np.eye(2))
    assert np.allclose(p, [[2 / 3, 1 / 3], [1 / 4, 3 / 4]])


def test_closed_form_is_stationary_point_on_one_hot():
    # the gradient X^T (P - Y) of the training cross-entropy vanishes at the closed form
    clf = ExplicitSoftmaxClassifier(alpha=0, scale=1.0).fit(X1, Y1)
    G = X1.T @ (clf.predict_proba(X1) - np.eye(2)[Y1])
    assert np.abs(G).max() < 1e-12


def test_lidstone_smoothing_hand_checked():
    # class 0 has feature mass (2, 1), class 1 has (0, 1); d = 2, alpha = 1
    F = np.array([[2.0, 0.0], [1.0, 1.0]])
    prior = np.array([0.25, 0.75])
    W, b = solve_explicit_classifier(F, prior, alpha=1.0)
    assert np.allclose(np.exp(W[:, 0]), [3 / 5, 2 / 5]) and np.allclose(np.exp(W[:, 1]), [1 / 3, 2 / 3])
    assert np.allclose(b, np.log(prior))


def test_alpha_zero_class_without_mass_is_uniform_not_nan():
    W, _ = solve_explicit_classifier(np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([0.5, 0.5]), 0.0)
    assert np.isfinite(W).all() and np.allclose(np.exp(W[:, 1]), [0.5, 0.5])


def test_predict_proba_rows_sum_to_one_and_predict_matches():
    X, y = two_blobs()
    clf = ExplicitSoftmaxClassifier().fit(X, y)
    p = clf.predict_proba(X)
    assert p.shape == (len(X), 2)
    assert np.allclose(p.sum(axis=1), 1)
    assert np.array_equal(clf.predict(X), clf.classes_[p.argmax(axis=1)])
    assert clf.score(X, y) > 0.9
    assert np.isfinite(clf.log_loss(X, y))


def test_sparse_and_dense_give_same_model():
    X, y = two_blobs()
    a = ExplicitSoftmaxClassifier(random_state=3).fit(X, y)
    b = ExplicitSoftmaxClassifier(random_state=3).fit(sp.csr_matrix(X), y)
    # equal in exact arithmetic; the sparse and dense sums round differently (numpy 1.24: 7e-14)
    assert a.scale_ == pytest.approx(b.scale_, rel=1e-12)
    assert np.allclose(a.coef_, b.coef_) and np.allclose(a.intercept_, b.intercept_)
    assert np.allclose(a.predict_proba(sp.csc_matrix(X)), b.predict_proba(X))


def test_negative_features_refused_with_fix():
    with pytest.raises(InputError, match=r"Negative values in data passed to X \(min -1\).*shift"):
        ExplicitSoftmaxClassifier().fit(np.array([[1.0, -1.0], [0.0, 2.0]]), [0, 1])
    with pytest.raises(InputError, match="Negative values"):
        check_features(sp.csr_matrix(np.array([[0.0, -2.0]])))


def test_string_labels_and_unseen_label_error():
    X, y = two_blobs()
    labels = np.array(["cat", "dog"])[y]
    clf = ExplicitSoftmaxClassifier().fit(X, labels)
    assert set(clf.predict(X)) <= {"cat", "dog"}
    with pytest.raises(InputError, match="not seen in fit"):
        clf.log_loss(X[:2], ["cat", "cow"])


def test_choose_scale_finds_minimum_of_convex_nll():
    # held-out scores S favour the true class by 1 in 3 of 4 rows: the best scale is ln 3
    S = np.array([[1.0, 0.0]] * 4)
    y = np.array([0, 0, 0, 1])
    lam, trace = choose_scale(S, y)
    assert abs(lam - np.log(3)) < 1e-2
    assert all(lam_nll[1] >= min(t[1] for t in trace) for lam_nll in trace)


def test_scale_auto_beats_naive_bayes_scale_on_heldout():
    X, y = two_blobs(200, seed=1)
    X = np.hstack([X] * 10)  # many redundant active features: naive Bayes is over-confident
    tr, te = slice(0, 150), slice(150, None)
    nb = ExplicitSoftmaxClassifier(scale=1.0).fit(X[tr], y[tr])
    auto = ExplicitSoftmaxClassifier().fit(X[tr], y[tr])
    assert auto.scale_ < 1.0
    assert auto.log_loss(X[te], y[te]) < nb.log_loss(X[te], y[te])


def test_gradient_from_zeros_reaches_closed_form_on_one_hot():
    # on one-hot inputs the unsmoothed closed form is the optimum the gradient converges to
    clf = GradientSoftmaxClassifier(lr=0.05, max_iter=400, batch_size=7, tol=None).fit(X1, Y1)
    assert np.allclose(clf.predict_proba(np.eye(2)), [[2 / 3, 1 / 3], [1 / 4, 3 / 4]], atol=1e-3)
    assert clf.n_iter_ == 400 and len(clf.history_) == 400


def test_warm_start_begins_at_explicit_and_callback_sees_epochs():
    X, y = two_blobs()
    exp = ExplicitSoftmaxClassifier().fit(X, y)
    seen = []
    GradientSoftmaxClassifier(init="explicit", max_iter=3, tol=None).fit(
        X, y, callback=lambda e, m: seen.append((e, m.log_loss(X, y))))
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert np.isclose(seen[0][1], exp.log_loss(X, y))


def test_gradient_is_seeded():
    X, y = two_blobs()
    a = GradientSoftmaxClassifier(max_iter=5, tol=None, random_state=1).fit(X, y)
    b = GradientSoftmaxClassifier(max_iter=5, tol=None, random_state=1).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_)


def test_gradient_bad_options():
    X, y = two_blobs()
    with pytest.raises(InputError, match="init must be"):
        GradientSoftmaxClassifier(init="ones").fit(X, y)
    with pytest.raises(InputError, match="optimizer must be adam or sgd"):
        GradientSoftmaxClassifier(optimizer="rmsprop").fit(X, y)


def test_sgd_optimizer_learns():
    X, y = two_blobs()
    clf = GradientSoftmaxClassifier(optimizer="sgd", lr=0.01, max_iter=20, tol=None).fit(X, y)
    assert clf.score(X, y) > 0.9


# scikit-learn's convention checks that must pass; the ones not listed pin sklearn's own error
# wording or its accuracy bar on its own (shifted) toy data, and are reported, not required
SKLEARN_CONVENTIONS = {
    "check_estimator_cloneable", "check_estimator_repr", "check_no_attributes_set_in_init",
    "check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
    "check_estimators_fit_returns_self", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_unfitted", "check_fit_check_is_fitted",
    "check_n_features_in", "check_n_features_in_after_fitting", "check_fit_idempotent",
    "check_estimators_pickle", "check_positive_only_tag_during_fit", "check_fit_non_negative",
    "check_estimators_dtypes", "check_estimators_nan_inf", "check_complex_data",
    "check_methods_subset_invariance", "check_methods_sample_order_invariance",
    "check_classifiers_one_label", "check_classifiers_regression_target", "check_requires_y_none",
    "check_fit2d_predict1d", "check_classifiers_classes", "check_pipeline_consistency",
}


def sklearn_failures(est):
    pytest.importorskip("sklearn")
    import warnings

    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None)
    ran = {r["check_name"] for r in results}
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    return ran, failed


@pytest.mark.parametrize("make", [lambda: ExplicitSoftmaxClassifier(),
                                  lambda: GradientSoftmaxClassifier(max_iter=20)])
def test_sklearn_estimator_checks(make):
    ran, failed = sklearn_failures(make())
    assert SKLEARN_CONVENTIONS <= ran
    assert not (SKLEARN_CONVENTIONS & failed), sorted(SKLEARN_CONVENTIONS & failed)


def test_clone_and_fitted_attributes():
    pytest.importorskip("sklearn")
    from sklearn.base import clone

    X, y = two_blobs()
    for est in (ExplicitSoftmaxClassifier(alpha=0.5), GradientSoftmaxClassifier(max_iter=5, tol=None)):
        c = clone(est)
        assert c.get_params() == est.get_params()
        assert c.fit(X, y) is c
        assert hasattr(c, "coef_") and hasattr(c, "classes_") and c.n_features_in_ == 3
        assert c.coef_.shape == (2, 3) and c.intercept_.shape == (2,)
        assert not hasattr(clone(c), "coef_")


def test_tol_stops_early_and_budget_warns():
    from lmkit.gradient import ConvergenceWarning

    X, y = two_blobs()
    # epoch 1 sets the baseline; epochs 2-4 never improve it by 10 -> stop after 3 such epochs
    stopped = GradientSoftmaxClassifier(max_iter=50, tol=10.0).fit(X, y)
    assert stopped.n_iter_ == 4
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        GradientSoftmaxClassifier(max_iter=2, tol=1e-9).fit(X, y)


# ---- multinomial naive Bayes at lambda = 1 (issue 14 section 1) ------------------------------
def count_data(seed=0, n=80, d=12, C=3):
    """Poisson counts whose total mass differs between classes (class c has ~(c + 1) x more)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    rates = rng.uniform(0.2, 2.0, (C, d))
    X = rng.poisson(rates[y] * (1 + y)[:, None]).astype(float)
    return X, y


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_scale_one_is_sklearn_multinomial_nb_exactly(alpha):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.naive_bayes import MultinomialNB

    X, y = count_data()
    Xi, yi = load_iris(return_X_y=True)
    for A, b in ((X, y), (Xi, yi), (sp.csr_matrix(X), y)):
        ours = ExplicitSoftmaxClassifier(alpha=alpha, scale=1.0).fit(A, b)
        nb = MultinomialNB(alpha=alpha).fit(A, b)
        assert np.abs(ours.predict_proba(A) - nb.predict_proba(A)).max() < 1e-9
        assert np.abs(ours.feature_log_prob_ - nb.feature_log_prob_).max() < 1e-12
        assert np.abs(ours.class_log_prior_ - nb.class_log_prior_).max() < 1e-12


def test_one_hot_closed_form_is_the_nb_form():
    # on one-hot rows feature mass = row count, so W = log P(i | c) gives the paper's solution
    clf = ExplicitSoftmaxClassifier(alpha=0, scale=1.0).fit(X1, Y1)
    assert np.allclose(np.exp(clf.feature_log_prob_), [[2 / 3, 1 / 3], [1 / 4, 3 / 4]])


def test_iris_cross_validation_not_below_naive_bayes():
    # iris: petal sizes make the feature mass differ ~2x between classes; the former
    # "log P(c | i) - log pi" form scored chance (0.333) here
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.naive_bayes import MultinomialNB

    X, y = load_iris(return_X_y=True)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    ours = cross_val_score(ExplicitSoftmaxClassifier(), X, y, cv=cv).mean()
    nb = cross_val_score(MultinomialNB(), X, y, cv=cv).mean()
    assert ours >= nb - 1e-12 and ours > 0.9
    # naive Bayes is under-confident on 4 features: the fitted lambda (~50) fixes its log loss
    ours = -cross_val_score(ExplicitSoftmaxClassifier(), X, y, cv=cv, scoring="neg_log_loss").mean()
    nb = -cross_val_score(MultinomialNB(), X, y, cv=cv, scoring="neg_log_loss").mean()
    assert ours < nb / 2


def test_fitted_scale_never_changes_a_prediction():
    # unbalanced classes (40 / 20 / 10 rows): scaling b + x W together keeps naive Bayes' argmax
    X, y = count_data(3, n=70)
    y = np.repeat([0, 1, 2], [40, 20, 10])
    auto = ExplicitSoftmaxClassifier().fit(X, y)
    nb = ExplicitSoftmaxClassifier(scale=1.0).fit(X, y)
    assert auto.scale_ != 1.0
    assert np.array_equal(auto.predict(X), nb.predict(X))
    assert np.allclose(auto.intercept_, auto.scale_ * nb.intercept_)


def test_cross_fitted_logits_equal_refitting_without_the_fold():
    X, y = count_data(4, n=30)
    Z = cross_fitted_logits(X, y, 3, 0.5, folds=3, rng=np.random.default_rng(7))
    fold = np.random.default_rng(7).permutation(30) % 3
    prior = class_prior(y, 3)
    for k in range(3):
        out = fold == k
        W, b = solve_explicit_classifier(cooccurrence(X[~out], y[~out], 3), prior, 0.5)
        assert np.allclose(Z[out], X[out] @ W + b)


def test_bad_cv_is_refused():
    X, y = two_blobs()
    with pytest.raises(InputError, match="cv must be an integer >= 2, got 1"):
        ExplicitSoftmaxClassifier(cv=1).fit(X, y)


# ---- negative="clip" --------------------------------------------------------------------------
def test_negative_clip_treats_negatives_as_zero():
    X, y = two_blobs()
    Xn = X - 0.5  # every zero count becomes -0.5
    clf = ExplicitSoftmaxClassifier(negative="clip").fit(Xn, y)
    ref = ExplicitSoftmaxClassifier().fit(np.maximum(Xn, 0), y)
    assert np.allclose(clf.coef_, ref.coef_)
    assert np.allclose(clf.predict_proba(sp.csr_matrix(Xn)), ref.predict_proba(np.maximum(Xn, 0)))
    with pytest.raises(InputError, match="negative='clip'"):
        ExplicitSoftmaxClassifier().fit(Xn, y)
    with pytest.raises(InputError, match="negative must be 'error' or 'clip', got 'abs'"):
        ExplicitSoftmaxClassifier(negative="abs").fit(X, y)


def test_minmax_scaler_pipeline_cross_validates_with_clip():
    pytest.importorskip("sklearn")
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    X, y = two_blobs(100, seed=2)
    X = X + np.random.default_rng(0).normal(0, 0.3, X.shape)  # held-out folds leave [min, max]
    with pytest.raises(InputError, match="Negative values"):  # the old behaviour: a fold fails
        cross_val_score(make_pipeline(MinMaxScaler(), ExplicitSoftmaxClassifier()), X, y, cv=5,
                        error_score="raise")
    scores = cross_val_score(make_pipeline(MinMaxScaler(), ExplicitSoftmaxClassifier(negative="clip")),
                             X, y, cv=5, error_score="raise")
    assert scores.min() > 0.8
