"""Training pipeline: corpus -> tokenizer -> sparse counts -> solver -> ``LanguageModel``.

Stages (progress banners and tqdm bars on stderr):

1. corpus: the train split of a named corpus, own text files, or a ``datasets`` corpus;
2. tokenizer: SentencePiece trained on the train split (or loaded from ``tokenizer=``);
3. counts: chunked sparse co-occurrence counts per feature group (``counts.py``);
4. solve: the closed form (``explicit.py``; suffix groups: ``ngram.py``), then the group
   weights lambda by a coordinate search of held-out perplexity. Held-out text: the corpus's
   ``valid`` split when it has one, else every 20th line of the training text, whose counts are
   added back (counts are additive) once lambda is chosen, so no training text is lost.
"""
from __future__ import annotations

import sys
import time
from itertools import islice

import numpy as np

from . import corpus as corpus_mod
from .counts import count_chunk, sum_counts
from .errors import InputError
from .explicit import choose_lambdas, solve_explicit
from .features import Suffix, make_groups
from .model import LanguageModel
from .scoring import context_rows
from .tokenizer import Tokenizer

HOLDOUT_EVERY = 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bar(total=None, desc="", unit="tok"):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                disable=None, leave=False)


def count_corpus(lines_iter, tokenizer: Tokenizer, groups: list, *, chunk_lines: int = 10000,
                 desc: str = "count"):
    """Tokenize and count an iterable of lines chunk by chunk; returns ``Counts``."""
    def parts():
        it = iter(lines_iter)
        with _bar(desc=desc) as bar:
            while True:
                chunk = list(islice(it, chunk_lines))
                if not chunk:
                    return
                seqs = tokenizer.encode_batch(chunk)
                c = count_chunk(seqs, tokenizer.vocab_size, groups, tokenizer.bos_id, tokenizer.eos_id)
                bar.update(c.n_tokens)
                yield c
    return sum_counts(parts())


def heldout_lines(valid, max_tokens: int, tokenizer: Tokenizer) -> list:
    """Evenly spread lines of ``valid`` with about ``max_tokens`` tokens (deterministic)."""
    lines = list(valid)
    if not lines:
        return []
    n_tok = sum(len(x) + 1 for x in tokenizer.encode_batch(lines[: min(len(lines), 2000)]))
    per_line = n_tok / min(len(lines), 2000)
    want = max(1, int(max_tokens / per_line))
    step = max(1, len(lines) // want)
    return lines[::step][:want]


def train(*, corpus: str | None = None, input=None, dataset: str | None = None,
          split: str = "train", text_field: str = "text", streaming: bool = False,
          context: int = 3, order: int | None = None, vocab_size: int = 4096,
          model_type: str = "bpe", tokenizer: str | None = None, discount=None,
          lambdas=None, lambda_tokens: int = 10000, seed: int = 0, chunk_lines: int = 10000,
          solver: str = "explicit", **solver_options) -> LanguageModel:
    """Train a language model; keyword arguments map 1:1 onto ``lmkit train`` flags."""
    t0 = time.time()
    groups = make_groups(context, order)
    train_corpus = corpus_mod.load_corpus(corpus=corpus, input=input, dataset=dataset, split=split,
                                          text_field=text_field, streaming=streaming)
    train_corpus.check_nonempty()
    log(f"[1/4] corpus {train_corpus.name}")
    if tokenizer:
        tok = Tokenizer.load(tokenizer)
        log(f"[2/4] tokenizer {tokenizer} (V={tok.vocab_size})")
    else:
        log(f"[2/4] training {model_type} tokenizer, vocab {vocab_size}")
        tok = Tokenizer.train(train_corpus, vocab_size=vocab_size, model_type=model_type, seed=seed)
    log(f"[3/4] counting {', '.join(g.name for g in groups)}")
    has_valid = corpus is not None or (input is None and dataset is None)
    if has_valid:
        counts = count_corpus(train_corpus, tok, groups, chunk_lines=chunk_lines)
        valid = corpus_mod.load_corpus(corpus=corpus or "shakespeare", split="valid")
        held_counts = None
    else:  # hold out every 20th line for choosing lambda; its counts are added back afterwards
        counts = count_corpus((x for i, x in enumerate(train_corpus) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1),
                              tok, groups, chunk_lines=chunk_lines)
        valid = [x for i, x in enumerate(train_corpus) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
        held_counts = count_corpus(valid, tok, groups, chunk_lines=chunk_lines, desc="count held-out")
    log(f"      {counts.n_sequences} sequences, {counts.n_tokens} tokens, "
        f"{sum(F.nnz for F in counts.F)} non-zero counts")
    log(f"[4/4] solving ({solver})")
    solve = _solve_fn(groups)
    params = solve(counts, discount=discount)
    held = heldout_lines(valid, lambda_tokens, tok) if len(groups) > 1 and lambdas is None else []
    if lambdas is not None:
        params.lambdas = _check_lambdas(lambdas, len(groups))
        params.info["lambda_rule"] = "given"
    elif held:
        rows, targets, _ = context_rows(groups, params.keys, tok.encode_batch(held), tok.vocab_size,
                                        tok.bos_id, tok.eos_id)
        lam, trace = choose_lambdas(params, rows, targets)
        params.lambdas = lam
        params.info.update({"lambda_rule": f"coordinate search of held-out NLL on {len(targets)} "
                            "tokens over a grid", "lambda_trace": trace})
        log("      lambdas " + ", ".join(f"{g.name}={x:g}" for g, x in zip(groups, lam))
            + f" (held-out ppl {np.exp(trace[-1][1]):.2f} on {len(targets)} tokens)")
    if held_counts is not None:
        lam = params.lambdas
        params = solve(counts + held_counts, discount=discount)
        params.lambdas = lam
        counts = counts + held_counts
    config = {"context": context, "order": order, "vocab_size": tok.vocab_size,
              "model_type": model_type, "discount": discount, "seed": seed, "solver": solver,
              "lambda_tokens": lambda_tokens, "discounts": params.info.get("discounts")}
    stats = {"name": train_corpus.name, "sequences": counts.n_sequences, "tokens": counts.n_tokens}
    try:
        stats["sha256"] = train_corpus.sha256()
    except Exception:  # streaming datasets may not be re-iterable cheaply; the hash is optional
        pass
    model = LanguageModel(tok, params, config, stats)
    if solver != "explicit":
        model = _finetune(model, solver, train_corpus, valid, seed=seed, **solver_options)
    log(f"      done in {time.time() - t0:.1f}s: {model.describe()}")
    return model


def _solve_fn(groups):
    if any(isinstance(g, Suffix) for g in groups):
        from .ngram import solve_ngram
        return solve_ngram
    return solve_explicit


def _check_lambdas(lambdas, n: int) -> np.ndarray:
    lam = np.asarray([float(x) for x in lambdas], dtype=np.float64)
    if lam.shape != (n,) or (lam < 0).any():
        raise InputError(f"--lambdas needs {n} non-negative values (one per feature group), got {list(lambdas)}")
    return lam


def _finetune(model, solver, train_corpus, valid, **options):
    from .gradient import finetune  # the gradient solver lives in its own module
    return finetune(model, solver, train_corpus, valid, **options)
