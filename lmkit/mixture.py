"""The linear mixture: several models with one tokenizer -> ``p(w|h) = sum_k w_k p_k(w|h)``.

``MixtureModel`` scores exactly (log-sum-exp of the components' log-probs, natural logs) and has
``LanguageModel``'s duck type (``log_proba_ids``, ``next_logp``, ``sample``, ``score``...), so
``evaluate``/``generate``/``docscore`` take it. Saved as a folder: ``manifest.json`` (format
lmkit-model, kind "mixture", weights), ``tokenizer.model`` and the components as model folders
``components/0``, ``components/1``, ... This is the query side only; the weights are fitted in
``interpolate.py`` (EM on held-out text), which imports this module, never the reverse.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import LoadConfig
from .errors import InputError, ModelFormatError, OptionError
from .io.store import (FORMAT, VERSION, folder_kind, manifest_stamp, peek_manifest, read_manifest,
                       write_folder, write_manifest, write_synced)
from .model import BaseModel, LanguageModel


def check_same_tokenizer(models) -> None:
    if len(models) < 2:
        raise InputError(f"interpolation needs at least 2 models, got {len(models)}")
    shas = {m.tokenizer.sha256 for m in models}
    if len(shas) != 1:
        raise InputError("the models use different tokenizers; train them with the same "
                         "tokenizer file (interpolation mixes distributions over the same pieces)")


class MixtureModel(BaseModel):
    """``p(w|h) = sum_k weights[k] p_k(w|h)`` over models that share a tokenizer.

    A component that is itself a ``MixtureModel`` is flattened into its components (weights
    multiplied through: the same distribution), so a saved mixture is always one level deep.
    """

    def __init__(self, models: list, weights, info: dict | None = None):
        check_same_tokenizer(models)
        try:
            w = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError):
            w = np.full(0, np.nan)
        if (w.shape != (len(models),) or not np.isfinite(w).all() or (w < 0).any()
                or not np.isclose(w.sum(), 1.0)):
            raise OptionError(f"weights needs {len(models)} non-negative values summing to 1, "
                             f"got {str(weights)[:80]}")
        flat, flat_w = [], []
        for m, x in zip(models, w):
            subs = m.models if isinstance(m, MixtureModel) else [m]
            flat += subs
            flat_w += list(x * m.weights) if isinstance(m, MixtureModel) else [x]
        self.models = flat
        self.weights = np.asarray(flat_w, dtype=np.float64)
        self.info = dict(info or {})
        if len(flat) != len(models):
            self.info["flattened"] = f"{len(models)} inputs, mixtures among them, -> {len(flat)} components"
        self.tokenizer = models[0].tokenizer

    kind = "mixture"

    @property
    def vocab_size(self) -> int:
        return self.models[0].vocab_size

    def log_proba_ids(self, seqs: list) -> tuple[np.ndarray, np.ndarray]:
        """Per-target natural-log probabilities (EOS included) and the sequence index."""
        logw = np.log(np.maximum(self.weights, 1e-300))
        parts = [m.log_proba_ids(seqs) for m in self.models]
        lp = np.logaddexp.reduce(np.stack([lw + p for lw, (p, _) in zip(logw, parts)]), axis=0)
        return lp, parts[0][1]

    def next_logp(self, prefix_ids) -> np.ndarray:
        logw = np.log(np.maximum(self.weights, 1e-300))
        return np.logaddexp.reduce(np.stack([lw + m.next_logp(prefix_ids)
                                             for lw, m in zip(logw, self.models)]), axis=0)

    def describe(self) -> str:
        gain = ("; NO GAIN: the network did not improve on the explicit model on valid, its "
                "weight is 0" if self.info.get("improved") is False else "")
        return (f"linear mixture of {len(self.models)} models, weights="
                + ",".join(f"{x:.4g}" for x in self.weights) + gain + "; "
                + " | ".join(m.describe() for m in self.models))

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path, command: str | None = None) -> Path:
        """Write the mixture folder atomically (``io.store.write_folder``)."""
        def fill(tmp: Path) -> None:
            for k, m in enumerate(self.models):
                m.save(tmp / "components" / str(k))
            proto = self.tokenizer.model_proto
            write_synced(tmp / "tokenizer.model", proto)
            manifest = {"format": FORMAT, "version": VERSION, "kind": "mixture",
                        "weights": self.weights.tolist(), "components": [
                            f"components/{k}" for k in range(len(self.models))],
                        "vocab_size": self.vocab_size, "info": self.info,
                        **manifest_stamp(proto, command)}
            write_manifest(tmp, manifest)

        return write_folder(path, fill)

    @classmethod
    def load(cls, path, mmap: bool = LoadConfig.mmap) -> "MixtureModel":
        """Read a folder written by ``save``: the manifest checked by ``io.store.read_manifest``,
        each component an explicit (``LanguageModel.load``, ``mmap`` passed on) or neural model
        folder whose tokenizer is the mixture's."""
        path = Path(path)
        manifest = read_manifest(path, ("mixture",), takes="pass a folder written by "
                                 "`lmkit interpolate`")
        models = []
        for c in manifest["components"]:
            kind = folder_kind(peek_manifest(path / c) or {})
            if kind in ("mixture",):
                raise ModelFormatError(f"{path / c}: a mixture inside a mixture (lmkit writes "
                                       "them flat); re-run `lmkit interpolate` on the models")
            if kind == "neural":
                from . import neural  # optional dependency (torch)
                models.append(neural.load(path / c))
            else:  # explicit, or unreadable: LanguageModel.load says why
                models.append(LanguageModel.load(path / c, mmap=mmap))
            if models[-1].tokenizer.sha256 != manifest["tokenizer"]["sha256"]:
                raise ModelFormatError(f"{path / c}: its tokenizer is not the mixture's (sha256 "
                                       "differs); re-run `lmkit interpolate`")
        if models[0].vocab_size != manifest["vocab_size"]:
            raise ModelFormatError(f"{path}: the components have V={models[0].vocab_size}, the "
                                   f"manifest says {manifest['vocab_size']}; re-run "
                                   "`lmkit interpolate`")
        return cls(models, manifest["weights"], manifest.get("info"))


__all__ = ["MixtureModel", "check_same_tokenizer"]
