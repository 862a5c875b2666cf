"""Interpolation: several models with one tokenizer -> one model, mixed linearly or log-linearly.

- Linear (what SRILM ``ngram -mix-lm`` and KenLM's ``interpolate`` do): ``p(w|h) = sum_k
  w_k p_k(w|h)`` with weights fitted by EM on held-out text (``fit_weights``: the E-step is the
  posterior of each component per token, the M-step its mean; the held-out likelihood never
  decreases). ``MixtureModel`` scores exactly (log-sum-exp of the components' log-probs) and
  has ``LanguageModel``'s duck type (``log_proba_ids``, ``next_logp``, ``sample``, ``score``...),
  so ``evaluate``/``generate``/``docscore`` take it. Saved as a folder: ``manifest.json``
  (format lmkit-model, kind "mixture", weights), ``tokenizer.model`` and the components as
  model folders ``components/0``, ``components/1``, ...
- Log-linear (``loglinear_merge``): ``log p = log q + sum over the union of every model's
  feature groups of lambda_g S_g[row_g] - log Z`` — one sparse softmax layer, a ``LanguageModel``
  again. q is the q of the component with the best held-out likelihood, and the lambdas start
  at that component's own (the others' at 0), so the start *is* that model; they are then
  refitted on held-out text by ``explicit.choose_lambdas``, whose line search only accepts
  steps that lower the held-out NLL: the merge never fits the held-out text worse than the best
  component. Needs sparse components with S >= 0 (every lmkit solver; an imported ARPA may
  have S < 0).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError, ModelFormatError
from .explicit import choose_lambdas
from .model import BaseModel, LanguageModel
from .parallel import fit_heldout
from .scoring import context_rows
from .store import (FORMAT, VERSION, folder_kind, manifest_stamp, peek_manifest, read_manifest,
                    write_folder, write_manifest, write_synced)
from .params import SparseParams


def check_same_tokenizer(models) -> None:
    if len(models) < 2:
        raise InputError(f"interpolation needs at least 2 models, got {len(models)}")
    shas = {m.tokenizer.sha256 for m in models}
    if len(shas) != 1:
        raise InputError("the models use different tokenizers; train them with the same "
                         "--tokenizer (interpolation mixes distributions over the same pieces)")


def fit_weights(logps: np.ndarray, *, max_iter: int = 200, tol: float = 1e-7,
                init=None) -> tuple[np.ndarray, list]:
    """EM for mixture weights. ``logps`` (K, N): log p_k of each held-out token.

    Returns ``(weights (K,), trace [(weights, mean nll)])``. Example: two components that
    each predict half of the tokens perfectly and the rest with p = 0.1 get weights (.5, .5).
    """
    K = logps.shape[0]
    w = np.full(K, 1.0 / K) if init is None else np.asarray(init, np.float64) / np.sum(init)
    trace = []
    prev = np.inf
    for _ in range(max_iter):
        joint = np.log(np.maximum(w, 1e-300))[:, None] + logps
        mix = np.logaddexp.reduce(joint, axis=0)
        nll = float(-mix.mean())
        trace.append((w.tolist(), nll))
        if prev - nll < tol:
            break
        prev = nll
        w = np.exp(joint - mix).mean(axis=1)
    return w, trace


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
            raise InputError(f"--weights needs {len(models)} non-negative values summing to 1, "
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
        return (f"linear mixture of {len(self.models)} models, weights="
                + ",".join(f"{x:.4g}" for x in self.weights) + "; "
                + " | ".join(m.describe() for m in self.models))

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path, command: str | None = None) -> Path:
        """Write the mixture folder atomically (``store.write_folder``)."""
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
    def load(cls, path, mmap: bool = False) -> "MixtureModel":
        """Read a folder written by ``save``: the manifest checked by ``store.read_manifest``,
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


# ---- fitting ----------------------------------------------------------------------------------
def interpolate_linear(models, heldout_lines, weights="auto") -> MixtureModel:
    """A ``MixtureModel``; ``weights="auto"`` fits them by EM on ``heldout_lines``."""
    check_same_tokenizer(models)
    if isinstance(weights, str) and weights == "auto":
        seqs = models[0].tokenizer.encode_batch(list(heldout_lines))
        if not seqs:
            raise InputError("no held-out text to fit the weights; pass some or give --weights")
        logps = np.stack([m.log_proba_ids(seqs)[0] for m in models])
        w, trace = fit_weights(logps)
        info = {"weights_rule": f"EM on {logps.shape[1]} held-out tokens",
                "heldout_perplexity": math.exp(trace[-1][1]), "em_iterations": len(trace)}
        return MixtureModel(models, w, info)
    try:
        w = np.asarray([float(x) for x in weights])
    except (TypeError, ValueError):
        w = np.full(0, np.nan)
    if len(w) != len(models) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"--weights needs {len(models)} non-negative values (or auto), got {list(weights)}")
    return MixtureModel(models, w / w.sum(), {"weights_rule": "given"})


def loglinear_merge(models, heldout_lines, *, max_memory=None):
    """One sparse ``LanguageModel`` over the union of the models' feature groups (docstring)."""
    check_same_tokenizer(models)
    for m in models:
        if not isinstance(m, LanguageModel):
            what = "a linear mixture" if isinstance(m, MixtureModel) else "a neural model"
            raise InputError(f"log-linear merge needs explicit sparse models, one input is {what}; "
                             "use --method linear (mixtures and neural models mix linearly)")
        p = m.params
        if not isinstance(p, SparseParams) or any((S.data < 0).any() for S in p.S):
            raise InputError(f"log-linear merge needs sparse models with S >= 0 ({m.describe()}); "
                             "use --method linear")
    names = [g.name for m in models for g in m.params.groups]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:  # one group per name: a model folder names each group once
        raise InputError(f"log-linear merge needs models with different feature groups, but "
                         f"{', '.join(shared)} occur in more than one; use --method linear")
    tok = models[0].tokenizer
    seqs = tok.encode_batch(list(heldout_lines))
    if not seqs:
        raise InputError("no held-out text to fit the lambdas; pass some")
    best = int(np.argmax([m.log_proba_ids(seqs)[0].sum() for m in models]))
    groups = [g for m in models for g in m.params.groups]
    S = [x for m in models for x in m.params.S]
    keys = [k for m in models for k in m.params.keys]
    init = np.concatenate([m.params.lambdas * (k == best) for k, m in enumerate(models)])
    params = SparseParams(groups, models[best].params.q, S, keys, init,
                          {"merged_from": [m.describe() for m in models], "q_from": best})
    rows, targets, _ = context_rows(groups, keys, seqs, tok.vocab_size, tok.bos_id, tok.eos_id)
    rows, targets = fit_heldout(params, rows, targets, max_memory)
    lam, trace = choose_lambdas(params, rows, targets, init=init)
    params = params.with_lambdas(lam, lambda_rule=f"log-linear merge, projected Newton on "
                                 f"{len(targets)} held-out tokens", lambda_trace=trace)
    config = {"merged": "loglinear", "components": [m.config for m in models]}
    return LanguageModel(tok, params, config, {"name": "merged"})


def interpolate(models, heldout_lines, *, method: str = "linear", weights="auto"):
    """``lmkit interpolate``: a ``MixtureModel`` (linear) or a ``LanguageModel`` (loglinear)."""
    if method == "linear":
        return interpolate_linear(models, heldout_lines, weights)
    if method == "loglinear":
        if not (isinstance(weights, str) and weights == "auto"):
            raise InputError("--weights is for --method linear; the log-linear merge refits its "
                             "lambdas on held-out text")
        return loglinear_merge(models, heldout_lines)
    raise InputError(f"--method must be linear or loglinear, got {method!r}")


__all__ = ["MixtureModel", "fit_weights", "interpolate", "interpolate_linear", "loglinear_merge"]
