"""Neural language models on lmkit's token ids (optional extra ``neural``: PyTorch).

- ``transformer``: a small causal transformer (nanoGPT-like) ``f_theta``;
- ``data``: lines -> windows and padded batches in lmkit's convention (BOS context, EOS target),
  and the frozen explicit model's rows for every target;
- ``lm``: ``NeuralLM`` — scratch (``log_softmax(f_theta)``) or residual
  (``log_softmax(a log P_explicit + f_theta)``), with score / sample / save / load;
- ``fit``: backpropagation under a CPU-time budget, best-on-valid weights;
- ``crossfit``: the training lines' explicit term from models that did not count them.

Entry points for the CLI: ``train_transformer``, ``train_residual``, ``train_mixed`` (the
network mixed linearly with the explicit model, ``mixture.MixtureModel``), ``load`` (these raise
``MissingDependencyError`` without torch) and ``is_neural_folder`` (works without torch).
"""
from __future__ import annotations

import atexit
import getpass
import importlib
import os
import re
import tempfile

from ..errors import MissingDependencyError
from .folder import is_neural_folder

# torch is imported only when a neural model is built or loaded, so `import lmkit` (and every
# CLI verb) stays fast and works without the extra
_LAZY = {"fit": "fit", "NeuralLM": "lm", "GPT": "transformer", "GPTConfig": "transformer"}


def require_torch() -> None:
    try:
        import torch  # noqa: F401  (optional dependency)
    except ImportError:
        raise MissingDependencyError("the neural models need PyTorch, which is not installed; "
                                     "pip install 'lmkit[neural]' (CPU wheel: see docs/neural.md)") from None
    _clean_inductor_dir_at_exit()


_INDUCTOR_CHECKED = False


def _clean_inductor_dir_at_exit() -> None:
    """torch makes ``$TMPDIR/torchinductor_$USER`` as soon as training imports ``torch._dynamo``
    (the optimiser does), and leaves it empty unless something was compiled. A run that did not
    find it there removes it at exit if it is still empty: no leftovers in the user's temp folder,
    and a cache that ``compile=True`` filled, or another process made first, is kept."""
    global _INDUCTOR_CHECKED
    if _INDUCTOR_CHECKED:
        return
    _INDUCTOR_CHECKED = True
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:  # the user's own cache folder
        return
    path = _default_inductor_dir()
    if os.path.exists(path):
        return

    def remove_if_empty():
        try:
            os.rmdir(path)
        except OSError:  # not there, not empty, or not ours to remove
            pass

    atexit.register(remove_if_empty)


def _default_inductor_dir() -> str:
    """The folder torch's ``cache_dir_utils.default_cache_dir`` names, computed here because
    importing that module imports ``torch._dynamo``, which makes the folder."""
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    user = re.sub(r'[\\/:*?"<>|]', "_", user)
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + user)


def __getattr__(name):
    if name in _LAZY:
        require_torch()
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train_transformer(tokenizer, train_lines, valid_lines, *, max_seconds: float, seed: int = 0,
                      config=None, init: str = "random", **fit_options):
    """A transformer trained on lmkit's token ids (``tokenizer``: lmkit Tokenizer), from a
    random start or (``init="explicit"``) from the unigram and bigram counts of the training
    lines (``explicit_init.py``; its CPU time is charged to ``max_seconds``)."""
    require_torch()
    from .fit import fit
    from .lm import NeuralLM
    lm = NeuralLM.create(tokenizer, config=config, seed=seed, init=init)
    return fit(lm, train_lines, valid_lines, max_seconds=max_seconds, seed=seed, init=init,
               **fit_options)


def train_residual(base_model, train_lines, valid_lines, *, max_seconds: float, seed: int = 0,
                   config=None, learn_scale: bool = True, **fit_options):
    """A transformer trained as a residual on the frozen ``base_model`` (an lmkit LanguageModel)."""
    require_torch()
    from .fit import fit
    from .lm import NeuralLM
    lm = NeuralLM.create(base_model.tokenizer, explicit=base_model, config=config,
                         learn_scale=learn_scale, seed=seed)
    return fit(lm, train_lines, valid_lines, max_seconds=max_seconds, seed=seed, **fit_options)


def train_mixed(base_model, train_lines, valid_lines, *, max_seconds: float, seed: int = 0,
                config=None, init: str = "explicit", **fit_options):
    """The mixed hybrid (``lmkit train --solver residual``, ``hybrid mix``): a transformer
    trained on its own (from ``init``, default explicit) next to the frozen ``base_model``; at
    every validation the mixture weight is fitted by EM on the valid sample and the best-on-valid
    mixture kept. Returns a ``MixtureModel`` (base, network) whose weights are refitted by EM on
    all of ``valid_lines`` (``interpolate.interpolate_linear``, what ``lmkit interpolate``
    does); when no mixture beat the base on valid, the network's weight is 0 and the
    mixture's ``info["improved"]`` is false (the log says NO GAIN)."""
    require_torch()
    from ..interpolate import interpolate_linear
    from ..mixture import MixtureModel
    from ..progress import log as _log
    from .fit import fit
    from .lm import NeuralLM
    valid_lines = list(valid_lines)
    log = fit_options.get("log") or _log
    lm = NeuralLM.create(base_model.tokenizer, config=config, seed=seed, init=init)
    lm = fit(lm, train_lines, valid_lines, max_seconds=max_seconds, seed=seed, init=init,
             mix=base_model, **fit_options)
    t = lm.training
    info = {"hybrid": "mix", "improved": t["improved"], "network_cpu_seconds": t["cpu_seconds"],
            "best_valid_ppl_sample": t["best_valid_ppl"],
            "base_valid_ppl_sample": t["base_valid_ppl"]}
    if not t["improved"]:
        return MixtureModel([base_model, lm], [1.0, 0.0],
                            {**info, "weights_rule": "no gain on valid: the explicit model alone"})
    mix = interpolate_linear([base_model, lm], valid_lines)
    log(f"neural: mixture weights refitted by EM on all {len(valid_lines)} valid lines: "
        f"network {mix.weights[1]:.3f}, valid ppl {mix.info['heldout_perplexity']:.2f}")
    mix.info.update(info)
    return mix


def load(path):
    """Load a folder written by ``NeuralLM.save``."""
    require_torch()
    from .lm import NeuralLM
    return NeuralLM.load(path)


__all__ = ["GPT", "GPTConfig", "NeuralLM", "fit", "is_neural_folder", "load", "require_torch",
           "train_mixed", "train_residual", "train_transformer"]
