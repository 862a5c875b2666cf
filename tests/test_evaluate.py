import math

import numpy as np
import pytest

from lmkit.errors import InputError
from lmkit.evaluate import evaluate, evaluate_lines
from lmkit.model import LanguageModel

KEYS = {"sequences", "tokens", "bytes", "nll_nats", "perplexity", "bits_per_byte"}


def test_evaluate_lines_numbers(tiny_model):
    lines = ["Ki ro mi.", "The quee!", "日本"]
    r = evaluate_lines(tiny_model, lines, chunk_lines=2)  # two chunks
    assert set(r) == KEYS
    logp = np.concatenate([tiny_model.log_proba(x) for x in lines])
    assert r["sequences"] == 3
    assert r["tokens"] == len(logp) == sum(len(tiny_model.tokenizer.encode(x)) + 1 for x in lines)
    assert r["bytes"] == 10 + 10 + 7  # utf-8 bytes + one newline each (日本 is 6 bytes)
    assert r["nll_nats"] == pytest.approx(-logp.sum(), rel=1e-12)
    assert r["perplexity"] == pytest.approx(math.exp(r["nll_nats"] / r["tokens"]))
    assert r["bits_per_byte"] == pytest.approx(r["nll_nats"] / math.log(2) / 27)


def test_evaluate_empty(tiny_model):
    with pytest.raises(InputError, match="no non-empty lines"):
        evaluate_lines(tiny_model, [])


def test_evaluate_model_folder_on_files(tiny_model, tiny_model_dir, tiny_corpus_file, tiny_lines):
    r = evaluate(LanguageModel.load(tiny_model_dir), input=[str(tiny_corpus_file)])
    assert r["sequences"] == len(tiny_lines)  # the blank line is skipped
    assert r == pytest.approx(evaluate_lines(tiny_model, tiny_lines))
    # training text is fitted: lower perplexity than on shuffled words
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(x.split())) for x in tiny_lines]
    assert r["perplexity"] < evaluate_lines(tiny_model, shuffled)["perplexity"]
