"""Softmax classifiers solved in closed form — the paper's classifier experiments, kept apart
from the language-model core (they import from it; it never imports them).

    from lmkit.classifier import ExplicitSoftmaxClassifier, load_mnist_5k
    s = load_mnist_5k()                                   # pip install 'lmkit[mnist]'
    clf = ExplicitSoftmaxClassifier().fit(s.X_train, s.y_train)
    clf.score(s.X_test, s.y_test)

Modules: ``base`` (validation, estimator shells), ``explicit`` (multinomial naive Bayes x a
fitted scale, the closed form), ``descent`` (the same layer by minibatch gradient descent),
``layerwise`` (two explicitly solved softmax layers), ``data`` (digits, MNIST, IDX files).
"""
from .data import (Split, complement_features, load_digits, load_mnist, load_mnist_5k, read_idx,
                   stratified_split, write_idx)
from .descent import GradientSoftmaxClassifier
from .explicit import ExplicitSoftmaxClassifier
from .layerwise import LayerwiseSoftmaxNetwork

__all__ = ["ExplicitSoftmaxClassifier", "GradientSoftmaxClassifier", "LayerwiseSoftmaxNetwork",
           "Split", "load_digits", "load_mnist", "load_mnist_5k", "read_idx", "write_idx",
           "stratified_split", "complement_features"]
