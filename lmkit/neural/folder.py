"""Recognising a neural model folder without importing torch (for the CLI's dispatch).

A folder written by ``NeuralLM.save`` has a ``manifest.json`` whose ``format`` is ``FORMAT``;
an explicit model folder says ``"lmkit-model"`` instead (``lmkit.store``).
"""
from __future__ import annotations

from ..store import peek_manifest

FORMAT = "lmkit-neural"
VERSION = 1


def is_neural_folder(path) -> bool:
    """True when ``path`` holds a model written by ``NeuralLM.save``."""
    return (peek_manifest(path) or {}).get("format") == FORMAT  # a bounded, untrusted read
