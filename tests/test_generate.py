import numpy as np
import pytest

from lmkit.errors import InputError
from lmkit.generate import filter_logp

LOGP = np.log(np.array([0.5, 0.3, 0.2]))


def test_filter_top_p_docstring_example():
    assert filter_logp(LOGP, temperature=1.0, top_k=0, top_p=0.6) == pytest.approx([0.625, 0.375, 0])


def test_filter_top_p_edges():
    assert filter_logp(LOGP, temperature=1.0, top_k=0, top_p=0.5) == pytest.approx([1, 0, 0])
    assert filter_logp(LOGP, temperature=1.0, top_k=0, top_p=0.1) == pytest.approx([1, 0, 0])
    assert filter_logp(LOGP, temperature=1.0, top_k=0, top_p=1.0) == pytest.approx([0.5, 0.3, 0.2])


def test_filter_top_k():
    assert filter_logp(LOGP, temperature=1.0, top_k=2, top_p=1.0) == pytest.approx([0.625, 0.375, 0])
    assert filter_logp(LOGP, temperature=1.0, top_k=1, top_p=1.0) == pytest.approx([1, 0, 0])
    assert filter_logp(LOGP, temperature=1.0, top_k=5, top_p=1.0) == pytest.approx([0.5, 0.3, 0.2])


def test_filter_temperature():
    p = filter_logp(LOGP, temperature=2.0, top_k=0, top_p=1.0)
    assert p == pytest.approx(np.sqrt([0.5, 0.3, 0.2]) / np.sqrt([0.5, 0.3, 0.2]).sum())
    assert filter_logp(LOGP, temperature=0.0, top_k=0, top_p=1.0).tolist() == [1.0, 0.0, 0.0]
    with_inf = np.array([-np.inf, np.log(0.4), np.log(0.6)])
    assert filter_logp(with_inf, temperature=0.7, top_k=0, top_p=0.9)[0] == 0.0


@pytest.mark.parametrize("kw, match", [
    (dict(max_tokens=-1), r"max_tokens must be >= 0, got -1"),
    (dict(temperature=-0.5), r"temperature must be >= 0.0, got -0.5"),
    (dict(temperature=float("nan")), r"temperature must be a finite number, got nan"),
    (dict(temperature=float("inf")), r"temperature must be a finite number, got inf"),
    (dict(temperature=1e-320), r"temperature 1e-320 is too small"),
    (dict(top_k=-1), r"top_k must be >= 0, got -1"),
    (dict(top_k=2.5), r"top_k must be an integer, got float 2.5"),
    (dict(top_p=0.0), r"top_p must be > 0.0, got 0.0"),
    (dict(top_p=1.5), r"top_p must be <= 1.0, got 1.5"),
    (dict(num_samples=0), r"num_samples must be >= 1, got 0"),
    (dict(seed=-1), r"seed must be >= 0, got -1"),
    (dict(temprature=0.5), r"unknown option 'temprature'; did you mean 'temperature'\?"),
])
def test_bad_sampling_options_name_the_parameter(tiny_model, kw, match):
    with pytest.raises(InputError, match=match):
        tiny_model.sample("The", **kw)


def test_same_seed_same_samples(tiny_model):
    a = tiny_model.sample("The", max_tokens=20, seed=4, num_samples=3)
    b = tiny_model.sample("The", max_tokens=20, seed=4, num_samples=3)
    c = tiny_model.sample("The", max_tokens=20, seed=5, num_samples=3)
    assert a == b and a != c
    assert all(s.startswith("The") for s in a)


def test_greedy_is_argmax(tiny_model):
    tok = tiny_model.tokenizer
    ids = tok.encode("Ki")
    for _ in range(8):
        lp = tiny_model.next_logp(ids)
        lp[tok.bos_id] = -np.inf
        nxt = int(np.argmax(lp))
        if nxt == tok.eos_id:
            break
        ids.append(nxt)
    want = tok.decode(ids)
    for seed in (0, 1):
        assert tiny_model.sample("Ki", max_tokens=8, temperature=0, seed=seed) == [want]


def test_prompt_with_unseen_characters(tiny_model):
    prompt = "日本語 🎉 ü"
    out = tiny_model.sample(prompt, max_tokens=10, seed=0, num_samples=2)
    assert len(out) == 2 and all(s.startswith(prompt) for s in out)


def test_max_tokens_zero_and_top_k_one(tiny_model):
    assert tiny_model.sample("Lo", max_tokens=0) == ["Lo"]
    greedy = tiny_model.sample("Lo", max_tokens=6, temperature=0)
    assert tiny_model.sample("Lo", max_tokens=6, top_k=1, seed=9) == greedy
