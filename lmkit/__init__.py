"""lmkit: train softmax language models without backpropagation (count, then solve)."""

__version__ = "0.1.0"
