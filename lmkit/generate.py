"""Generation: a model + a prompt -> sampled text.

Each step computes the full next-token log distribution (a (V,) vector; the sparse model only
touches the non-zeros of its context rows), applies temperature, top-k and top-p (nucleus)
filtering, and draws from it with a seeded ``numpy.random.Generator``. A sample stops at EOS or
after ``max_tokens`` new tokens; BOS and UNK are never drawn. The prompt is the start of a
sequence; prompts with characters never seen in training still work thanks to the tokenizer's
byte fallback. An MKN model sampled at temperature 1 with no top-k/top-p takes the exact batched
back-off walk of ``ngram.sample.NgramSampler`` instead (same distribution, no (V,) vector).
"""
from __future__ import annotations

import numpy as np

from .config import SampleConfig
from .ngram.sample import is_pure_ngram


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


def _exact_ngram(model, opts: SampleConfig) -> bool:
    """Whether the exact n-gram sampler applies: an MKN model trained by lmkit (its q holds
    the uniform share the sampler relies on), sampled at temperature 1 with no filtering."""
    params = getattr(model, "params", None)
    return (opts.temperature == 1.0 and opts.top_k == 0 and opts.top_p == 1.0
            and params is not None and is_pure_ngram(params) and hasattr(model, "ngram_sampler")
            and params.info.get("smoothing") == "interpolated modified Kneser-Ney")


def generate(model, prompt: str, opts: SampleConfig) -> list:
    """``opts.num_samples`` texts, each the prompt followed by its sampled continuation."""
    max_tokens, temperature, top_k, top_p = opts.max_tokens, opts.temperature, opts.top_k, opts.top_p
    num_samples = opts.num_samples
    rng = np.random.default_rng(opts.seed)
    tok = model.tokenizer
    prompt_ids = tok.encode(prompt) if prompt else []
    if _exact_ngram(model, opts):  # batched back-off walk: no (V,) vector per step
        ids = model.ngram_sampler().continue_ids(prompt_ids, max_tokens=max_tokens, num_samples=num_samples,
                                   seed=opts.seed, exclude=(tok.bos_id, tok.unk_id))
        return [tok.decode(x) for x in ids]
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
