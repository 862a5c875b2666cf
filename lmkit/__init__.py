"""lmkit: train softmax language models without backpropagation (count, then solve).

Python API (each function is one CLI verb, same option names and defaults, see ``config.py``)::

    model = lmkit.train(context=3, vocab_size=4096, seed=0)          # lmkit train
    model.save("runs/shakespeare")
    model = lmkit.LanguageModel.load("runs/shakespeare")
    lmkit.evaluate(model, corpus="shakespeare", split="test")      # lmkit eval
    model.sample("To be", max_tokens=100, temperature=0.9, seed=0)  # lmkit generate
    model.inspect("the", top=10)                                   # lmkit inspect
    tok = lmkit.Tokenizer.train(lmkit.load_corpus(corpus="shakespeare"), vocab_size=4096)

Stages, callable alone: ``load_corpus`` -> ``Tokenizer`` -> ``count_corpus`` -> ``fit`` ->
``LanguageModel``.

The functions and classes above are imported on first use (issue 21, "Start-up"): ``import
lmkit`` and ``import lmkit.cli`` stay cheap, so a verb pays only for the modules it runs.
"""
import importlib as _importlib
import sys as _sys
import types as _types

from .version import __version__  # noqa: E402,F401
from .config import (CorpusConfig, GradientConfig, ModelConfig, SampleConfig,  # noqa: E402
                     ScaleConfig, TokenizerConfig, TrainConfig)
from .errors import LmkitError  # noqa: E402

# public name -> the module (under lmkit) that defines it, imported when the name is first read
_LAZY = {"train": "train", "count_corpus": "train", "fit": "solve", "evaluate": "evaluate",
         "load_corpus": "corpus", "LanguageModel": "model", "Tokenizer": "tokenizer"}


def _lazy_property(name: str) -> property:
    """``lmkit.<name>`` read from its module on first use. A property, not a module
    ``__getattr__``: ``train`` and ``evaluate`` are also submodules, and importing a submodule
    sets the package attribute of that name, which would hide the function from a
    ``__getattr__``; the setter drops exactly that assignment (and keeps any other)."""
    def get(self):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(_importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)

    def put(self, value):
        if not (isinstance(value, _types.ModuleType) and value.__name__ == f"{__name__}.{name}"):
            self._overrides[name] = value

    return property(get, put)


class _Package(_types.ModuleType):
    """The ``lmkit`` module, with the API of ``_LAZY`` imported on first use."""

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_LAZY))


for _name in _LAZY:
    setattr(_Package, _name, _lazy_property(_name))
_overrides: dict = {}
_sys.modules[__name__].__class__ = _Package

__all__ = ["train", "fit", "count_corpus", "evaluate", "load_corpus", "LanguageModel",
           "Tokenizer", "LmkitError", "TrainConfig", "CorpusConfig", "TokenizerConfig",
           "ModelConfig", "ScaleConfig", "GradientConfig", "SampleConfig"]
