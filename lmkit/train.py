"""Training pipeline: corpus -> tokenizer -> sparse counts -> fit -> ``LanguageModel``.

Each stage is a function of its own, callable alone; ``train`` only wires them:

1. ``load_text``: the train split of a named corpus, own text files, or a ``datasets`` corpus,
   and the held-out lines: the corpus's ``valid`` split when it has one, else every 20th line of
   the training text (whose counts are added back once the lambdas are chosen: no text is lost);
2. ``make_tokenizer``: SentencePiece trained on the train split (or loaded from ``tokenizer=``);
3. ``count_corpus``: chunked sparse co-occurrence counts per feature group (``counts.py``), in
   worker processes or on Dask;
4. ``solve.fit``: the closed form, then the group weights on held-out text (with no model
   option: the feature-rich model, ``_train_rich``: ``rich.count_rich`` + ``rich.fit_rich``);
5. for ``solver`` gradient/warm: ``gradient.finetune`` trains the dense form by gradient descent;
   for ``solver`` residual/transformer: ``lmkit.neural`` trains a small transformer (on top of
   the explicit model, or from scratch) for a CPU-time budget.

Options: ``config.TrainConfig`` (one definition shared with the CLI flags).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time

from . import corpus as corpus_mod
from . import rich
from .config import NEURAL_SOLVERS, CorpusConfig, ScaleConfig, TrainConfig
from .counts import Counts, count_ngrams
from .distributed import count_corpus_dask
from .errors import OptionError
from .features import Suffix, make_groups
from .gradient import finetune
from .memory import check_memory, format_bytes
from .model import LanguageModel
from .ngram_build import build_ngram_from_chunks
from .ngram_dask import build_ngram_dask
from .parallel import (check_workers, count_corpus_parallel, counts_nbytes, line_chunks,
                       model_nbytes)
from .progress import bar, log, reporting
from .prune import n_ngrams, prune_entropy
from .solve import fit
from .tokenizer import Tokenizer

HOLDOUT_EVERY = 20


def load_text(cfg: CorpusConfig, heldout: bool = True):
    """``(train_corpus, valid, carved)``: the training text, held-out lines, and whether the
    held-out lines were carved out of the training text (every ``HOLDOUT_EVERY``-th line).
    ``heldout=False``: no held-out lines are needed (``valid`` is empty, nothing is read)."""
    train_corpus = corpus_mod.load_corpus(corpus=cfg.corpus, input=cfg.input, dataset=cfg.dataset,
                                          split=cfg.split, text_field=cfg.text_field,
                                          streaming=cfg.streaming)
    train_corpus.check_nonempty()
    if not heldout:
        return train_corpus, [], False
    if cfg.input is None and cfg.dataset is None:  # a named corpus has its own valid split
        return train_corpus, corpus_mod.load_corpus(corpus=cfg.corpus or "shakespeare",
                                                    split="valid"), False
    valid = [x for i, x in enumerate(train_corpus) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    return train_corpus, valid, True


def make_tokenizer(cfg: TrainConfig, lines) -> Tokenizer:
    """The tokenizer ``cfg.tokenizer`` names, or a new one trained on ``lines``."""
    if cfg.tokenizer:
        tok = Tokenizer.load(cfg.tokenizer)
        log(f"[2/4] tokenizer {cfg.tokenizer} (V={tok.vocab_size})")
        return tok
    s = cfg.spm
    log(f"[2/4] training {s.model_type} tokenizer, vocab {s.vocab_size}")
    return Tokenizer.train(lines, vocab_size=s.vocab_size, model_type=s.model_type, seed=s.seed,
                           input_sentence_size=s.input_sentence_size)


def count_corpus(lines, tokenizer: Tokenizer, groups: list, scale: ScaleConfig = ScaleConfig(),
                 desc: str = "count") -> Counts:
    """Tokenize and count an iterable of lines chunk by chunk; returns ``Counts``.

    ``engine="local"``: ``workers`` processes, partial sums spilled to disk above ``max_memory``
    (``parallel.py``); ``engine="dask"``: chunks counted on a Dask cluster (``distributed.py``).
    """
    with bar(desc=desc) as b:
        if any(isinstance(g, Suffix) for g in groups) and scale.max_memory is None \
                and scale.engine == "local":
            # n-gram models (with or without windows): one flat buffer, one sort per order, no
            # partial sums to merge; within a memory limit the spilling workers take over
            def encoded():
                for chunk in line_chunks(lines, scale.chunk_lines):
                    seqs = tokenizer.encode_batch(chunk)
                    b.update(sum(map(len, seqs)) + len(seqs))
                    yield seqs
            return count_ngrams(encoded(), tokenizer.vocab_size, groups, tokenizer.bos_id,
                                tokenizer.eos_id)
        if scale.engine == "dask":
            return count_corpus_dask(lines, tokenizer, groups, chunk_lines=scale.chunk_lines,
                                     scheduler=scale.scheduler, n_workers=scale.workers,
                                     progress=b.update, log=log)
        return count_corpus_parallel(lines, tokenizer, groups, chunk_lines=scale.chunk_lines,
                                     workers=check_workers(scale.workers),
                                     max_memory=scale.max_memory, spill_dir=scale.spill_dir,
                                     progress=b.update, log=log)


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


def _hashing(lines, digest):
    """Yield ``lines`` unchanged while feeding each (utf-8 + newline) to ``digest``."""
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
        yield line


def train(config: TrainConfig | None = None, **options) -> LanguageModel:
    """Train a language model. Options (keyword arguments) = ``lmkit train`` flags, see
    ``config.TrainConfig``; unknown names fail with the closest match."""
    cfg = config if config is not None else TrainConfig.from_kwargs(**options)
    if config is not None and options:
        raise TypeError("pass either a TrainConfig or keyword options, not both")
    with reporting(cfg.scale.verbose):
        return _train(cfg)


def _bounded_ngram(cfg, groups, tok, lines, digest, name, t0, files=None) -> LanguageModel:
    """A pure n-gram model within ``max_memory``: histories split into buckets by their newest
    token, counted, spilled and solved one bucket at a time (``ngram_build.py``); with engine
    dask the same partitions are counted and solved on the Dask workers (``ngram_dask.py``)."""
    m = cfg.model

    def encoded():
        with bar(desc="count") as b:
            for chunk in line_chunks(lines, cfg.scale.chunk_lines):
                seqs = tok.encode_batch(chunk)
                b.update(sum(map(len, seqs)) + len(seqs))
                yield seqs
    discount = m.discount[0] if m.discount is not None and len(m.discount) == 1 else m.discount
    if cfg.scale.engine == "dask":
        log(f"[3/4] counting and solving {', '.join(g.name for g in groups)} on Dask")
        read = cfg.scale.workers_read
        files = files if (cfg.scale.scheduler is None if read is None else read) else None
        with bar(desc="count") as b:
            params, n_seq, n_tok = build_ngram_dask(
                lines, tok, m.effective_order, files=files, discount=discount,
                chunk_lines=cfg.scale.chunk_lines, scheduler=cfg.scale.scheduler,
                n_workers=cfg.scale.workers, progress=b.update, log=log)
        if files:  # the workers read the text: this process reads it once more, for its hash
            for _ in lines:
                pass
    else:
        log(f"[3/4] counting and solving {', '.join(g.name for g in groups)} in buckets "
            f"(max_memory {cfg.scale.max_memory})")
        params, n_seq, n_tok = build_ngram_from_chunks(
            encoded(), m.effective_order, tok.vocab_size, tok.bos_id, tok.eos_id,
            max_memory=cfg.scale.max_memory, discount=discount, spill_dir=cfg.scale.spill_dir,
            log=log)
    config = {**cfg.flat(), "context": 0, "vocab_size": tok.vocab_size,
              "discounts": params.info.get("discounts")}
    stats = {"name": name, "sequences": n_seq, "tokens": n_tok, "sha256": digest.hexdigest()}
    model = LanguageModel(tok, params, config, stats)
    log(f"      done in {time.time() - t0:.1f}s: {model.describe()}")
    return model


def _train_neural(cfg: TrainConfig):
    """``solver residual``: a small transformer on top of the frozen explicit model (the one at
    ``neural.base``, or one trained first with the model options); ``solver transformer``: the
    same network from scratch. Both train for ``max_seconds`` CPU seconds (``lmkit.neural``)."""
    from . import neural  # optional dependency: PyTorch (the neural extra)
    neural.require_torch()
    g, n = cfg.gradient, cfg.neural
    train_corpus, valid, carved = load_text(cfg.corpus)
    lines = [x for i, x in enumerate(train_corpus)
             if not carved or i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    options = {"max_seconds": g.max_seconds, "seed": cfg.spm.seed, "log": log,
               "lr": g.effective_lr, "warmup": n.warmup}
    if g.solver == "transformer":
        tok = make_tokenizer(cfg, train_corpus)
        log(f"[3/3] training a transformer ({g.effective_init} init) for {g.max_seconds:g} CPU s")
        return neural.train_transformer(tok, lines, list(valid), init=g.effective_init, **options)
    if n.base is not None:
        base = LanguageModel.load(n.base)
        log(f"[1/2] explicit base {n.base}: {base.describe()}")
    else:
        log("[1/2] explicit base model")
        base = _train(dataclasses.replace(cfg, gradient=dataclasses.replace(
            g, solver="explicit", max_seconds=None)))
    log(f"[2/2] training the residual transformer for {g.max_seconds:g} CPU s "
        f"(crossfit {n.crossfit})")
    return neural.train_residual(base, lines, list(valid), learn_scale=n.learn_scale,
                                 crossfit=n.crossfit, **options)


def _train_rich(cfg: TrainConfig, t0: float) -> LanguageModel:
    """The feature-rich model (``rich.py``): one flat buffer of the encoded text, counted for
    every group (clusters from its bigram counts), solved, weights fitted on held-out text."""
    m = cfg.model
    order = m.order or m.DEFAULT_ORDER
    context = m.DEFAULT_CONTEXT if m.context is None else m.context
    train_corpus, valid, carved = load_text(cfg.corpus)
    log(f"[1/4] corpus {train_corpus.name}")
    tok = make_tokenizer(cfg, train_corpus)
    log(f"[3/4] counting the feature-rich model: n-grams 1..{order}, windows "
        f"{rich.DEFAULT_FIRST_WINDOW}..{context}, "
        f"skip-grams, cluster histories, line positions (in this process)")
    digest = hashlib.sha256()
    lines = _hashing(train_corpus, digest)
    if carved:
        lines = (x for i, x in enumerate(lines) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1)

    def encoded(lines):
        with bar(desc="count") as b:
            for chunk in line_chunks(lines, cfg.scale.chunk_lines):
                seqs = tok.encode_batch(chunk)
                b.update(sum(map(len, seqs)) + len(seqs))
                yield seqs
    kw = dict(order=order, context=context, seed=cfg.spm.seed, piece_bytes=tok.piece_bytes())
    counts, tables = rich.count_rich(encoded(lines), tok.vocab_size, tok.bos_id, tok.eos_id, **kw)
    held_counts = rich.count_rich(encoded(valid), tok.vocab_size, tok.bos_id, tok.eos_id,
                                  tables=tables, **kw)[0] if carved else None
    log(f"      {counts.n_sequences} sequences, {counts.n_tokens} tokens, "
        f"{sum(F.nnz for F in counts.F)} non-zero counts, cluster tables of "
        + " and ".join(str(int(t.max()) + 1) for t in tables if t is not None) + " clusters")
    need = model_nbytes(counts)
    check_memory(counts_nbytes(counts) + 2 * need, cfg.scale.max_memory, "solving the sparse model",
                 "raise max_memory, or use a smaller vocab_size, or pass order N for a plain model")
    log("[4/4] solving (explicit, feature-rich)")
    held = tok.encode_batch(heldout_lines(valid, m.effective_lambda_tokens, tok))
    discount = m.discount[0] if m.discount is not None and len(m.discount) == 1 else m.discount
    params = rich.fit_rich(counts, held, tok.bos_id, tok.eos_id, discount=discount,
                           refit=held_counts, max_memory=cfg.scale.max_memory, log=log)
    if held_counts is not None:
        counts = counts + held_counts
    config = {**cfg.flat(), "context": context, "order": order, "rich": True,
              "vocab_size": tok.vocab_size, "discounts": params.info.get("discounts")}
    stats = {"name": train_corpus.name, "sequences": counts.n_sequences, "tokens": counts.n_tokens,
             "sha256": digest.hexdigest()}
    model = LanguageModel(tok, params, config, stats)
    log(f"      done in {time.time() - t0:.1f}s: {model.describe()}")
    return model


def _train(cfg: TrainConfig) -> LanguageModel:
    if cfg.gradient.solver in NEURAL_SOLVERS:
        return _train_neural(cfg)
    t0 = time.time()
    m = cfg.model
    if m.effective_rich:
        if cfg.gradient.solver != "explicit":
            if m.rich:
                raise OptionError(f"rich is solved in closed form; drop solver "
                                  f"{cfg.gradient.solver} or rich")
        else:
            return _train_rich(cfg, t0)
    order = m.effective_order
    if cfg.gradient.solver in ("gradient", "warm") and m.order is None:
        order = None  # the dense gradient baseline is the paper's window-only model
    groups = make_groups(m.effective_context, order)
    # a pure n-gram model keeps its lambdas at 1: it needs no held-out text
    pure_ngram = all(isinstance(g, Suffix) for g in groups) and m.lambdas is None
    train_corpus, valid, carved = load_text(cfg.corpus, heldout=not pure_ngram)
    log(f"[1/4] corpus {train_corpus.name}")
    tok = make_tokenizer(cfg, train_corpus)
    log(f"[3/4] counting {', '.join(g.name for g in groups)}")
    digest = hashlib.sha256()  # the corpus hash, taken as counting reads every line once
    lines = _hashing(train_corpus, digest)
    if (not carved and all(isinstance(g, Suffix) for g in groups) and m.lambdas is None
            and m.prune is None and cfg.scale.max_memory is not None and cfg.scale.engine == "local"):
        return _bounded_ngram(cfg, groups, tok, lines, digest, train_corpus.name, t0)
    if (pure_ngram and m.prune is None and m.prune_entropy is None and cfg.scale.engine == "dask"
            and cfg.gradient.solver == "explicit"):  # the whole build on the workers (ngram_dask.py)
        files = train_corpus.files if cfg.corpus.dataset is None else None  # plain text files
        return _bounded_ngram(cfg, groups, tok, lines, digest, train_corpus.name, t0, files)
    if carved:
        lines = (x for i, x in enumerate(lines) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1)
    counts = count_corpus(lines, tok, groups, cfg.scale)
    held_counts = count_corpus(valid, tok, groups, cfg.scale, desc="count held-out") if carved else None
    log(f"      {counts.n_sequences} sequences, {counts.n_tokens} tokens, "
        f"{sum(F.nnz for F in counts.F)} non-zero counts")
    need = model_nbytes(counts)  # the counts stay alive while the model is built
    log(f"      memory: counts {format_bytes(counts_nbytes(counts))}, model ~{format_bytes(need)}")
    check_memory(counts_nbytes(counts) + 2 * need, cfg.scale.max_memory, "solving the sparse model",
                 "raise max_memory, or use a smaller vocab_size or context")
    g = cfg.gradient
    log(f"[4/4] solving ({g.solver})")
    from_scratch = g.effective_init in ("zeros", "random")  # never reads the explicit weights
    held = [] if from_scratch or m.lambdas is not None else heldout_lines(valid, m.effective_lambda_tokens, tok)
    discount = m.discount[0] if m.discount is not None and len(m.discount) == 1 else m.discount
    params = fit(counts, tok.encode_batch(held), discount=discount, prune=m.prune,
                 lambdas=m.lambdas, refit=held_counts, max_memory=cfg.scale.max_memory, log=log)
    if held_counts is not None:
        counts = counts + held_counts
    config = {**cfg.flat(), "context": m.effective_context, "order": order,
              "vocab_size": tok.vocab_size,
              "discounts": params.info.get("discounts")}
    stats = {"name": train_corpus.name, "sequences": counts.n_sequences, "tokens": counts.n_tokens,
             "sha256": digest.hexdigest()}  # = TextCorpus.sha256() of the training text
    model = LanguageModel(tok, params, config, stats)
    if m.prune_entropy is not None:
        before = n_ngrams(model)
        model = prune_entropy(model, m.prune_entropy)
        log(f"      entropy pruning at {m.prune_entropy:g}: {before} -> {n_ngrams(model)} n-grams")
    if g.solver != "explicit":
        vlines = heldout_lines(valid, g.valid_tokens, tok)
        # carved held-out lines validate the descent, so they are not trained on
        tlines = [x for i, x in enumerate(train_corpus)
                  if not carved or i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
        model = LanguageModel(tok, finetune(params, tok, tlines, vlines, g, seed=cfg.spm.seed,
                                            max_memory=cfg.scale.max_memory),
                              {**config, "init": g.effective_init, "lr": g.effective_lr}, stats)
    log(f"      done in {time.time() - t0:.1f}s: {model.describe()}")
    return model
