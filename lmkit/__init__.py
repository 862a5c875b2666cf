"""lmkit: train softmax language models without backpropagation (count, then solve).

Python API (each function is one CLI verb, same argument names and defaults)::

    model = lmkit.train(corpus="shakespeare", context=3, vocab_size=4096, seed=0)  # lmkit train
    model.save("runs/shakespeare")
    model = lmkit.LanguageModel.load("runs/shakespeare")
    lmkit.evaluate(model, corpus="shakespeare", split="test")                      # lmkit eval
    model.sample("To be", max_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=0)  # generate
    model.inspect("the", top=10)                                                   # lmkit inspect
    tok = lmkit.Tokenizer.train(lmkit.load_corpus(corpus="shakespeare"), vocab_size=4096)
"""

__version__ = "0.1.0"

from .corpus import load_corpus  # noqa: E402
from .errors import LmkitError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .model import LanguageModel  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["train", "evaluate", "load_corpus", "LanguageModel", "Tokenizer", "LmkitError"]
