"""Batch sampling draws from the model's own next-token distribution, seeded."""
import numpy as np
import pytest

from lmkit.errors import InputError
from lmkit.experiments.synthetic import sample_batch, write_shards


@pytest.fixture(scope="module")
def k1_model(tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    return train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), context=1, workers=1)


@pytest.mark.parametrize("which", ["k1", "k2"])
def test_first_token_frequencies_match_model(which, k1_model, tiny_model):
    model = k1_model if which == "k1" else tiny_model  # k1: precomputed tables; k2: general path
    n = 40000
    first = np.concatenate([[s[0] if s else model.tokenizer.eos_id for s in seqs]
                            for seqs in sample_batch(model, n, batch=n, max_len=1, seed=1)])
    assert len(first) == n
    logp = model.next_logp([])
    logp[model.tokenizer.bos_id] = -np.inf
    p = np.exp(logp - np.logaddexp.reduce(logp))
    freq = np.bincount(first, minlength=len(p)) / n
    # 40k draws: the standard error of a frequency is at most 0.0025
    assert np.abs(freq - p).max() < 0.012
    assert freq[model.tokenizer.bos_id] == 0


def test_seeded_and_sized(k1_model, tmp_path):
    a = [s for seqs in sample_batch(k1_model, 3000, batch=64, seed=3) for s in seqs]
    b = [s for seqs in sample_batch(k1_model, 3000, batch=64, seed=3) for s in seqs]
    assert a == b and 1000 < sum(len(s) + 1 for s in a) <= 3000
    stats = write_shards(k1_model, tmp_path, 3000, shard_lines=50, batch=64, seed=3)
    files = sorted(tmp_path.glob("shard-*.txt"))
    assert len(files) == stats["shards"] > 1
    assert sum(len(f.read_text().splitlines()) for f in files) == stats["lines"]


def test_refuses_dense_or_ngram_models(tiny_model):
    from lmkit.model import LanguageModel
    from lmkit.params import DenseParams
    p = tiny_model.params
    dense = LanguageModel(tiny_model.tokenizer, DenseParams(p.groups, [], p.q, p.keys))
    with pytest.raises(InputError, match="window groups only"):
        next(sample_batch(dense, 10))
