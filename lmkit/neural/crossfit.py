"""Cross-fitted explicit log-probabilities for the training positions of a hybrid.

Why: an explicit model counted on the training text has seen every training line, so on those
lines it is far better than on new text (the n-gram counts include the line itself). A residual
network trained on top of it learns to trust it too much and to correct mistakes it does not
make on new text. Cross-fitting removes that: the training lines are split into ``k`` folds
(line ``i`` in fold ``i % k``) and a line's explicit term comes from a model built, with the
same options, tokenizer and group weights, on the other folds only (a feature-rich base's
folds fit their own weights: those are per evidence bucket and folded into its arrays). Validation, test and
generation use the full explicit model.

Input: the full explicit ``LanguageModel`` (sparse form, built by ``lmkit.train``), the training
lines and their ids. Output: ``CrossFitRows``, with the same ``log_proba(flat) -> (n, V)``
interface as ``data.ExplicitRows``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.files import atomic_write
from ..io.scratch import make_temp_dir
from ..model import LanguageModel
from ..io.store import sha256_bytes
from ..train import train
from .data import ExplicitRows


def fold_models(model, train_lines: list, k: int, seed: int = 0, log=None, cache=None) -> list:
    """``k`` explicit models, model ``f`` counted on every line not in fold ``f``.

    ``cache``: a folder where the fold models are saved (``fold{f}/``, with ``key.json`` naming
    what they were built from) and read back by a later call with the same model, lines, k and
    seed (a resumed benchmark run); a folder with another key is refused, never overwritten."""
    key = None
    if cache is not None:
        cache = Path(cache)
        key = {"k": k, "seed": seed, "lines": len(train_lines),
               "lines_sha256": sha256_bytes("\n".join(train_lines).encode("utf-8")),
               "tokenizer_sha256": model.tokenizer.sha256, "config": json.dumps(model.config, sort_keys=True, default=str)}
        kfile = cache / "key.json"
        if kfile.is_file():
            if json.loads(kfile.read_text()) != key:
                raise InputError(f"{cache}: holds fold models of another base, corpus, k or seed; "
                                 "pass an empty folder")
            if log:
                log(f"crossfit: {k} fold models from {cache}")
            return [LanguageModel.load(cache / f"fold{f}") for f in range(k)]
    lam = getattr(model.params, "lambdas", None)
    if lam is None:
        raise InputError("cross-fitting needs an explicit (sparse) base model; pass crossfit=0 "
                         "for a model trained by gradient descent")
    cfg = model.config
    models = []
    tmp = make_temp_dir("lmkit-crossfit-")  # the fold texts: a killed run's go at the next train
    try:
        tok_path = model.tokenizer.save(Path(tmp) / "tok")
        for f in range(k):
            path = Path(tmp) / f"fold{f}.txt"
            path.write_text("".join(x + "\n" for i, x in enumerate(train_lines) if i % k != f),
                            encoding="utf-8")
            if log:
                log(f"crossfit: explicit model {f + 1}/{k} without fold {f}")
            if cfg.get("rich"):  # its weights are per evidence bucket, folded into S: the
                # fold model fits its own on its own held-out lines, as the base did
                opts = dict(rich=True, context=cfg.get("context"), order=cfg.get("order"),
                            lambda_tokens=cfg.get("lambda_tokens"))
            else:
                opts = dict(context=cfg.get("context"), order=cfg.get("order"),
                            prune=cfg.get("prune"), discount=cfg.get("discount"),
                            lambdas=[float(x) for x in lam], workers=1)
            models.append(train(input=[str(path)], tokenizer=str(tok_path), seed=seed,
                                verbose=False, **opts))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for f, m in enumerate(models):
            m.save(cache / f"fold{f}")
        atomic_write(cache / "key.json", json.dumps(key))
    return models


class CrossFitRows:
    """Explicit rows of every flat target, each from the model that did not see its line."""

    def __init__(self, models: list, seqs: list):
        k = len(models)
        n_targets = np.array([len(s) + 1 for s in seqs], dtype=np.int64)
        fold_of_seq = np.arange(len(seqs)) % k
        self.fold = np.repeat(fold_of_seq, n_targets)  # fold of every flat target
        self.local = np.empty(len(self.fold), dtype=np.int64)  # its index inside its fold
        for f in range(k):
            at = np.flatnonzero(self.fold == f)
            self.local[at] = np.arange(len(at))
        self.parts = [ExplicitRows(m, [s for i, s in enumerate(seqs) if i % k == f])
                      for f, m in enumerate(models)]

    def log_proba(self, flat: np.ndarray) -> torch.Tensor:
        out = None
        for f, part in enumerate(self.parts):
            mine = np.flatnonzero(self.fold[flat] == f)
            if len(mine):
                lp = part.log_proba(self.local[flat[mine]])
                if out is None:
                    out = torch.empty((len(flat), lp.shape[1]), dtype=lp.dtype)
                out[mine] = lp
        return out
