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
"""

from .version import __version__  # noqa: E402,F401
from .config import (CorpusConfig, GradientConfig, ModelConfig, SampleConfig,  # noqa: E402
                     ScaleConfig, TokenizerConfig, TrainConfig)
from .corpus import load_corpus  # noqa: E402
from .errors import LmkitError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .model import LanguageModel  # noqa: E402
from .solve import fit  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402
from .train import count_corpus, train  # noqa: E402

__all__ = ["train", "fit", "count_corpus", "evaluate", "load_corpus", "LanguageModel",
           "Tokenizer", "LmkitError", "TrainConfig", "CorpusConfig", "TokenizerConfig",
           "ModelConfig", "ScaleConfig", "GradientConfig", "SampleConfig"]
