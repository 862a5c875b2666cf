"""Training pipeline: corpus -> tokenizer -> sparse counts -> solver -> ``LanguageModel``.

Stages (progress banners and tqdm bars on stderr):

1. corpus: the train split of a named corpus, own text files, or a ``datasets`` corpus;
2. tokenizer: SentencePiece trained on the train split (or loaded from ``tokenizer=``);
3. counts: chunked sparse co-occurrence counts per feature group (``counts.py``);
4. solve: the closed form (``explicit.py``; suffix groups: ``ngram.py``), then the group
   weights lambda by minimising held-out perplexity (a few projected Newton steps on these G
   scalars; ``explicit.choose_lambdas``). Held-out text: the corpus's
   ``valid`` split when it has one, else every 20th line of the training text, whose counts are
   added back (counts are additive) once lambda is chosen, so no training text is lost.
"""
from __future__ import annotations

import hashlib
import sys
import time

import numpy as np

from . import corpus as corpus_mod
from .errors import InputError
from .explicit import choose_lambdas, solve_explicit
from .features import Suffix, make_groups
from .memory import check_memory, format_bytes
from .model import LanguageModel
from .parallel import (check_workers, count_corpus_parallel, counts_nbytes, fit_heldout,
                       model_nbytes)
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
                 desc: str = "count", workers: int | None = 1, max_memory=None,
                 engine: str = "local", scheduler: str | None = None):
    """Tokenize and count an iterable of lines chunk by chunk; returns ``Counts``.

    ``engine="local"``: ``workers`` processes, partial sums spilled to disk above ``max_memory``
    (``parallel.py``); ``engine="dask"``: chunks counted on a Dask cluster (``distributed.py``).
    """
    with _bar(desc=desc) as bar:
        if engine == "dask":
            from .distributed import count_corpus_dask
            return count_corpus_dask(lines_iter, tokenizer, groups, chunk_lines=chunk_lines,
                                     scheduler=scheduler, n_workers=workers, progress=bar.update,
                                     log=log)
        if engine != "local":
            raise InputError(f"--engine {engine!r} is not one of local, dask; pick one of them")
        return count_corpus_parallel(lines_iter, tokenizer, groups, chunk_lines=chunk_lines,
                                     workers=workers, max_memory=max_memory, progress=bar.update,
                                     log=log)


def _hashing(lines, digest):
    """Yield ``lines`` unchanged while feeding each (utf-8 + newline) to ``digest``."""
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
        yield line


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
          context: int | None = None, order: int | None = None, prune=None, vocab_size: int = 4096,
          model_type: str = "bpe", tokenizer: str | None = None, discount=None,
          lambdas=None, lambda_tokens: int = 10000, seed: int = 0, chunk_lines: int = 10000,
          solver: str = "explicit", workers: int | None = None, engine: str = "local",
          scheduler: str | None = None, input_sentence_size: int = 2_000_000,
          **solver_options) -> LanguageModel:
    """Train a language model; keyword arguments map 1:1 onto ``lmkit train`` flags."""
    t0 = time.time()
    if context is None:  # --order N alone is a pure n-gram model; neither flag: window 1..3
        context = 3 if order is None else 0
    if prune and order is None:
        raise InputError(f"--prune {list(prune)} needs n-gram groups; add --order N")
    groups = make_groups(context, order)
    from .gradient import check_options  # refuse bad gradient options before counting
    check_options(solver, **solver_options)
    train_corpus = corpus_mod.load_corpus(corpus=corpus, input=input, dataset=dataset, split=split,
                                          text_field=text_field, streaming=streaming)
    train_corpus.check_nonempty()
    log(f"[1/4] corpus {train_corpus.name}")
    if tokenizer:
        tok = Tokenizer.load(tokenizer)
        log(f"[2/4] tokenizer {tokenizer} (V={tok.vocab_size})")
    else:
        log(f"[2/4] training {model_type} tokenizer, vocab {vocab_size}")
        tok = Tokenizer.train(train_corpus, vocab_size=vocab_size, model_type=model_type, seed=seed,
                              input_sentence_size=input_sentence_size)
    log(f"[3/4] counting {', '.join(g.name for g in groups)}")
    has_valid = corpus is not None or (input is None and dataset is None)
    max_memory = solver_options.get("max_memory")  # shared with the gradient solver's options
    scale = {"workers": check_workers(workers), "max_memory": max_memory, "engine": engine,
             "scheduler": scheduler}
    digest = hashlib.sha256()  # the corpus hash, taken as counting reads every line once
    lines = _hashing(train_corpus, digest)
    if has_valid:
        counts = count_corpus(lines, tok, groups, chunk_lines=chunk_lines, **scale)
        valid = corpus_mod.load_corpus(corpus=corpus or "shakespeare", split="valid")
        held_counts = None
    else:  # hold out every 20th line for choosing lambda; its counts are added back afterwards
        counts = count_corpus((x for i, x in enumerate(lines) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1),
                              tok, groups, chunk_lines=chunk_lines, **scale)
        valid = [x for i, x in enumerate(train_corpus) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
        held_counts = count_corpus(valid, tok, groups, chunk_lines=chunk_lines, desc="count held-out",
                                   **scale)
    log(f"      {counts.n_sequences} sequences, {counts.n_tokens} tokens, "
        f"{sum(F.nnz for F in counts.F)} non-zero counts")
    need = model_nbytes(counts)  # the counts stay alive while the model is built
    log(f"      memory: counts {format_bytes(counts_nbytes(counts))}, model ~{format_bytes(need)}")
    check_memory(counts_nbytes(counts) + 2 * need, max_memory, "solving the sparse model",
                 "raise --max-memory, or use a smaller --vocab-size or --context")
    log(f"[4/4] solving ({solver})")
    solve = _solve_fn(groups, prune)
    params = solve(counts, discount=discount)
    tune = not all(params.info.get("lambda_fixed", [False]))  # pure MKN keeps lambdas = 1
    if solver == "gradient" and solver_options.get("init") in (None, "zeros", "random"):
        tune = False  # gradient descent from scratch never reads the explicit weights
    held = heldout_lines(valid, lambda_tokens, tok) if len(groups) > 1 and lambdas is None and tune else []
    if lambdas is not None:
        params = params.with_lambdas(_check_lambdas(lambdas, len(groups)), lambda_rule="given")
    elif held:
        rows, targets, _ = context_rows(groups, params.keys, tok.encode_batch(held), tok.vocab_size,
                                        tok.bos_id, tok.eos_id)
        rows, targets = fit_heldout(params, rows, targets, max_memory, log)
        lam, trace = choose_lambdas(params, rows, targets, init=params.info.get("lambda_init"),
                                    fixed=params.info.get("lambda_fixed"))
        params = params.with_lambdas(lam, lambda_rule=f"projected Newton minimisation of held-out "
                                     f"NLL on {len(targets)} tokens", lambda_trace=trace)
        log("      lambdas " + ", ".join(f"{g.name}={x:g}" for g, x in zip(groups, lam))
            + f" (held-out ppl {np.exp(trace[-1][1]):.2f} on {len(targets)} tokens)")
    if held_counts is not None:
        lam = params.lambdas
        counts = counts + held_counts
        params = solve(counts, discount=discount).with_lambdas(lam, **{
            k: v for k, v in params.info.items() if k.startswith("lambda_")})
    config = {"context": context, "order": order, "prune": prune, "vocab_size": tok.vocab_size,
              "model_type": model_type, "discount": discount, "seed": seed, "solver": solver,
              "lambda_tokens": lambda_tokens, "discounts": params.info.get("discounts")}
    stats = {"name": train_corpus.name, "sequences": counts.n_sequences, "tokens": counts.n_tokens,
             "sha256": digest.hexdigest()}  # = TextCorpus.sha256() of the training text
    model = LanguageModel(tok, params, config, stats)
    if solver != "explicit":
        model = _finetune(model, solver, train_corpus, valid, seed=seed, **solver_options)
    log(f"      done in {time.time() - t0:.1f}s: {model.describe()}")
    return model


def _solve_fn(groups, prune=None):
    if any(isinstance(g, Suffix) for g in groups):
        from functools import partial

        from .ngram import solve_ngram
        return partial(solve_ngram, prune=prune)
    return solve_explicit


def _check_lambdas(lambdas, n: int) -> np.ndarray:
    lam = np.asarray([float(x) for x in lambdas], dtype=np.float64)
    if lam.shape != (n,) or (lam < 0).any():
        raise InputError(f"--lambdas needs {n} non-negative values (one per feature group), got {list(lambdas)}")
    return lam


def _finetune(model, solver, train_corpus, valid, **options):
    from .gradient import finetune  # the gradient solver lives in its own module
    return finetune(model, solver, train_corpus, valid, **options)
