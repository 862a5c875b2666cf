"""Generation: a model + a prompt -> sampled text.

Each step computes the full next-token log distribution (a (V,) vector; the sparse model only
touches the non-zeros of its context rows), applies temperature, top-k and top-p (nucleus)
filtering, and draws from it with a seeded ``numpy.random.Generator``. A sample stops at EOS or
after ``max_tokens`` new tokens. BOS and UNK are never drawn. The prompt is the start of a sequence; prompts with characters
never seen in training still work thanks to the tokenizer's byte fallback.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError


MIN_TEMPERATURE = 1e-6  # below this, use 0 (greedy): the result is the same, without underflow


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_int(flag: str, value, low: int, note: str = "") -> None:
    if not _is_int(value):
        raise InputError(f"{flag} must be an integer >= {low}{note}, got {value!r}")
    if value < low:
        raise InputError(f"{flag} must be >= {low}{note}, got {value}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_sampling_args(*, max_tokens: int, temperature: float, top_k: int, top_p: float,
                        num_samples: int = 1, seed: int = 0) -> None:
    """Refuse out-of-range sampling options with a one-line message naming the fix."""
    _check_int("--max-tokens", max_tokens, 0)
    if not _is_number(temperature) or not temperature >= 0:
        raise InputError(f"--temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if temperature != 0 and not MIN_TEMPERATURE <= temperature < float("inf"):
        raise InputError(f"--temperature must be 0 (greedy) or a finite number >= "
                         f"{MIN_TEMPERATURE:g}, got {temperature!r}")
    _check_int("--top-k", top_k, 0, " (0 = no limit)")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1] (1 = no limit), got {top_p!r}")
    _check_int("--num-samples", num_samples, 1)
    _check_int("--seed", seed, 0)


def filter_logp(logp: np.ndarray, *, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Sampling distribution (V,) float64 after temperature, top-k and top-p.

    Example: logp = log([0.5, 0.3, 0.2]), top_p = 0.6 -> [0.625, 0.375, 0.0].
    ``temperature == 0`` puts all mass on the argmax (greedy).
    """
    if temperature == 0:
        p = np.zeros_like(logp)
        p[int(np.argmax(logp))] = 1.0
        return p
    z = (logp - logp.max()) / temperature  # shift first: a small temperature cannot overflow
    p = np.exp(z)
    p /= p.sum()
    if top_k and top_k < len(p):
        cut = np.partition(p, -top_k)[-top_k]
        p = np.where(p >= cut, p, 0.0)
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order]) / p.sum()
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]  # smallest prefix with mass >= top_p
        mask = np.zeros(len(p), dtype=bool)
        mask[keep] = True
        p = np.where(mask, p, 0.0)
    return p / p.sum()


def generate(model, prompt: str = "", *, max_tokens: int = 100, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1) -> list:
    """``num_samples`` texts, each the prompt followed by its sampled continuation."""
    check_sampling_args(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, num_samples=num_samples, seed=seed)
    rng = np.random.default_rng(seed)
    tok = model.tokenizer
    prompt_ids = tok.encode(prompt) if prompt else []
    out = []
    for _ in range(num_samples):
        ids = list(prompt_ids)
        for _ in range(max_tokens):
            logp = model.next_logp(ids)
            logp[tok.bos_id] = -np.inf  # BOS is padding, never a target
            logp[tok.unk_id] = -np.inf  # byte fallback spells everything: <unk> is never text
            p = filter_logp(logp, temperature=temperature, top_k=top_k, top_p=top_p)
            nxt = int(rng.choice(len(p), p=p))
            if nxt == tok.eos_id:
                break
            ids.append(nxt)
        out.append(tok.decode(ids))
    return out
