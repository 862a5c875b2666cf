"""Recognising a neural model folder without importing torch (for the CLI's dispatch).

A folder written by ``NeuralLM.save`` has a ``manifest.json`` whose ``format`` is ``FORMAT``;
an explicit model folder says ``"lmkit-model"`` instead. Both constants live in ``lmkit.store``
with the one manifest check of every folder kind.
"""
from __future__ import annotations

from ..store import NEURAL_FORMAT as FORMAT, NEURAL_VERSION as VERSION, peek_manifest


def is_neural_folder(path) -> bool:
    """True when ``path`` holds a model written by ``NeuralLM.save``."""
    return (peek_manifest(path) or {}).get("format") == FORMAT  # a bounded, untrusted read
