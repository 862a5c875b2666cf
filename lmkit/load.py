"""Loading any saved model: a model folder -> the object that scores and samples it.

The manifest's ``kind`` says what the folder holds: ``sparse``/``dense`` -> ``LanguageModel``,
``mixture`` -> ``mixture.MixtureModel`` (a linear mixture of model folders); a folder whose
format is ``lmkit-neural`` -> ``neural.NeuralLM`` (a small transformer, alone or on top of an
explicit model; needs the ``neural`` extra).
Every one of them has ``tokenizer``, ``vocab_size``, ``encode_lines``, ``log_proba_ids``,
``next_logp``, ``sample``, ``score``/``perplexity`` and ``describe``, so ``lmkit eval``,
``generate``, ``score``, ``next`` and ``vocab`` work on all of them.
"""
from __future__ import annotations

from .config import LoadConfig
from .errors import OptionError
from .mixture import MixtureModel
from .model import LanguageModel
from .io.store import peek_manifest
from .neural.folder import is_neural_folder


def model_kind(path) -> str | None:
    """The manifest's ``kind`` (None if unreadable: ``LanguageModel.load`` then says why)."""
    kind = (peek_manifest(path) or {}).get("kind")  # a bounded, untrusted read
    return kind if isinstance(kind, str) else None


def load(path, mmap: bool = LoadConfig.mmap):
    """The model saved in folder ``path``, whatever its kind (see the module docstring).

    ``mmap`` (``config.LoadConfig``): explicit models' arrays map ``params.npz`` instead of
    copying it (see ``LanguageModel.load``); refused for a neural model, whose weights are
    always copied."""
    if is_neural_folder(path):
        if mmap:  # an option takes effect or is refused
            raise OptionError(f"{path}: a neural model is always read into memory; the mmap "
                              "option applies to explicit models and mixtures, drop it")
        from . import neural  # optional dependency (torch), imported only when needed
        return neural.load(path)  # raises MissingDependencyError naming the extra without torch
    if model_kind(path) == "mixture":
        return MixtureModel.load(path, mmap=mmap)
    return LanguageModel.load(path, mmap=mmap)
