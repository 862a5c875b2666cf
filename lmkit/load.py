"""Loading any saved model: a model folder -> the object that scores and samples it.

The manifest's ``kind`` says what the folder holds: ``sparse``/``dense`` -> ``LanguageModel``,
``mixture`` -> ``interpolate.MixtureModel`` (a linear mixture of model folders), ``residual`` ->
``neural.HybridModel`` (an explicit model plus a small transformer; needs the ``neural`` extra).
Every one of them has ``tokenizer``, ``vocab_size``, ``encode_lines``, ``log_proba_ids``,
``next_logp``, ``sample``, ``score``/``perplexity`` and ``describe``, so ``lmkit eval``,
``generate``, ``score``, ``next`` and ``vocab`` work on all of them.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import MissingDependencyError
from .interpolate import MixtureModel
from .model import LanguageModel


def model_kind(path) -> str | None:
    """The manifest's ``kind`` (None if unreadable: ``LanguageModel.load`` then says why)."""
    try:
        kind = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def load(path):
    """The model saved in folder ``path``, whatever its kind (see the module docstring)."""
    kind = model_kind(path)
    if kind == "mixture":
        return MixtureModel.load(path)
    if kind == "residual":
        try:
            from .neural import HybridModel  # optional dependency: torch
        except ImportError as e:
            raise MissingDependencyError(f"{path} holds a neural hybrid model, which needs "
                                         f"PyTorch ({e}); pip install 'lmkit[neural]'") from None
        return HybridModel.load(path)
    return LanguageModel.load(path)
