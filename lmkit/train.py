"""Training pipeline: corpus -> tokenizer -> sparse counts -> fit -> ``LanguageModel``.

Each stage is a function of its own, callable alone; ``train`` only wires them:

1. ``load_text``: the train split of a named corpus, own text files, or a ``datasets`` corpus,
   and the held-out lines: the corpus's ``valid`` split when it has one, else every 20th block
   of consecutive lines of the training text (``holdout_block``; ``kept`` drops them from the
   training lines; their counts are added back once the lambdas are chosen: no text is lost);
2. ``make_tokenizer``: SentencePiece trained on the train split (or loaded from ``tokenizer=``);
3. ``count_corpus``: chunked sparse co-occurrence counts per feature group (``counts.py``), in
   this process, in worker processes or on Dask (``encoded``: the lines as token-id chunks);
4. ``solve.fit``: the closed form, then the group weights on held-out text;
5. for ``solver`` gradient/warm: ``gradient.finetune`` trains the dense form by gradient descent;
   for ``solver`` residual/transformer: ``lmkit.neural`` trains a small transformer for a
   CPU-time budget (mixed linearly with the explicit model, ``hybrid mix``; on top of it,
   ``hybrid residual``; or alone).

``route(cfg)`` names the build a configuration takes, one function each (``ROUTES``): ``rich``
(the default feature-rich model, ``rich.py``), ``ngram-bounded`` / ``ngram-dask`` (a pure n-gram
model built in buckets within ``max_memory`` / on Dask), ``ngram`` / ``spilling`` / ``dask``
(every other model, counted in one flat buffer / by spilling worker processes / on Dask, then
``solve.fit``) and ``neural``. Each route declares the scale options it honours (``HONOURS``);
``check_scale`` refuses any other one given, with one line, before any work, and the manifest
records only the options that took effect. The ``[1/4]`` banner names the route.

Options: ``config.TrainConfig`` (one definition shared with the CLI flags).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time

from . import corpus as corpus_mod
from . import compact, rich
from .config import NEURAL_SOLVERS, CorpusConfig, NeuralConfig, ScaleConfig, TrainConfig
from .counts import Counts, count_ngrams
from .distributed import count_corpus_dask
from .errors import InputError, OptionError
from .features import Suffix, make_groups
from .gradient import finetune
from .io.scratch import make_temp_dir, sweep_stale
from .memory import check_memory, format_bytes
from .model import LanguageModel
from .ngram.build import build_ngram_from_chunks
from .ngram.dask import build_ngram_dask
from .parallel import check_workers, count_corpus_parallel, counts_nbytes, line_chunks
from .progress import bar, log, reporting
from .ngram.prune import n_ngrams, prune_entropy
from .rich_build import build_rich
from .solve import fit, model_nbytes
from .tokenizer import Tokenizer

HOLDOUT_EVERY = 20
# Carved held-out lines come in blocks of consecutive lines (every HOLDOUT_EVERY-th block of
# holdout_block(n) lines), so the weights are fitted on passages whose neighbouring lines are
# not in the training text, as with text from unseen documents; single lines carved from the
# middle of a document over-reward what the document repeats (docs/scale.md: 4M Debian-docs
# tokens, test ppl 16.24 with single lines, 16.03 with blocks of 100, 15.84 with 500). At least
# HOLDOUT_MIN_BLOCKS held-out blocks, so a small text keeps single lines (block 1).
HOLDOUT_MIN_BLOCKS = 25
HOLDOUT_MAX_BLOCK = 500


def holdout_block(n_lines: int) -> int:
    """Lines per carved block for a text of ``n_lines`` lines: ``n_lines // (HOLDOUT_EVERY *
    HOLDOUT_MIN_BLOCKS)`` within [1, HOLDOUT_MAX_BLOCK]. E.g. 250,000 lines -> 500;
    40,000 -> 80; 900 -> 1."""
    return max(1, min(HOLDOUT_MAX_BLOCK, n_lines // (HOLDOUT_EVERY * HOLDOUT_MIN_BLOCKS)))


def is_heldout(i: int, block: int) -> bool:
    """Whether line ``i`` (0-based) is carved out: the last block of every ``HOLDOUT_EVERY``."""
    return (i // block) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def load_text(cfg: CorpusConfig, heldout: bool = True):
    """``(train_corpus, valid, carved)``: the training text, held-out lines, and whether the
    held-out lines were carved out of the training text: ``False``, or the lines per carved
    block (``holdout_block`` of the text's line count; every ``HOLDOUT_EVERY``-th block is
    held out). ``heldout=False``: no held-out lines are needed (``valid`` is empty, nothing is
    read)."""
    train_corpus = corpus_mod.load_corpus(corpus=cfg.corpus, input=cfg.input, dataset=cfg.dataset,
                                          split=cfg.split, text_field=cfg.text_field,
                                          streaming=cfg.streaming)
    train_corpus.check_nonempty()
    if not heldout:
        return train_corpus, [], False
    if cfg.input is None and cfg.dataset is None:  # a named corpus has its own valid split
        return train_corpus, corpus_mod.load_corpus(corpus=cfg.corpus or "shakespeare",
                                                    split="valid"), False
    block = holdout_block(sum(1 for _ in train_corpus))
    valid = [x for i, x in enumerate(train_corpus) if is_heldout(i, block)]
    return train_corpus, valid, block


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

    Models with n-gram (suffix) groups, engine local, no ``max_memory``: one flat buffer in this
    process (``counts.count_ngrams``: one sort per order, no partial sums to merge);
    ``engine="dask"``: chunks counted on a Dask cluster (``distributed.py``); otherwise
    ``workers`` processes, partial sums spilled to disk above ``max_memory`` (``parallel.py``).
    """
    if counter(groups, scale) == "ngram":
        return count_ngrams(encoded(lines, tokenizer, scale.chunk_lines, desc),
                            tokenizer.vocab_size, groups, tokenizer.bos_id, tokenizer.eos_id)
    with bar(desc=desc) as b:
        if scale.engine == "dask":
            return count_corpus_dask(lines, tokenizer, groups, chunk_lines=scale.chunk_lines,
                                     scheduler=scale.scheduler, n_workers=scale.workers,
                                     progress=b.update, log=log)
        return count_corpus_parallel(lines, tokenizer, groups, chunk_lines=scale.chunk_lines,
                                     workers=check_workers(scale.workers),
                                     max_memory=scale.max_memory, spill_dir=scale.spill_dir,
                                     progress=b.update, log=log)


def counter(groups: list, scale: ScaleConfig) -> str:
    """How ``count_corpus`` counts ``groups``: ``"ngram"`` (one flat buffer in this process),
    ``"dask"`` (on a Dask cluster) or ``"spilling"`` (worker processes, spilling partial sums)."""
    if scale.engine == "dask":
        return "dask"
    if any(isinstance(g, Suffix) for g in groups) and scale.max_memory is None:
        return "ngram"
    return "spilling"


def encoded(lines, tokenizer: Tokenizer, chunk_lines: int, desc: str = "count"):
    """Token-id sequences of ``lines``, one list per chunk of ``chunk_lines`` lines, with a
    progress bar of the tokens (ids + one EOS per line) encoded so far."""
    with bar(desc=desc) as b:
        for chunk in line_chunks(lines, chunk_lines):
            seqs = tokenizer.encode_batch(chunk)
            b.update(sum(map(len, seqs)) + len(seqs))
            yield seqs


def kept(lines, carved):
    """The training lines: all of them, or (``carved``: the block size ``load_text`` gave,
    ``True`` = 1) all but the held-out blocks."""
    if not carved:
        return iter(lines)
    block = int(carved)
    return (x for i, x in enumerate(lines) if not is_heldout(i, block))


def _discount(m):
    """``--discount``: one value as a scalar (every order / group), several as a tuple, or None."""
    return m.discount[0] if m.discount is not None and len(m.discount) == 1 else m.discount


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
    ``config.TrainConfig``; unknown names fail with the closest match. First removes, from
    ``spill_dir`` (default TMPDIR), the temporary folders stopped lmkit processes left there
    (``io.scratch.sweep_stale``: only folders whose marker names a process that no longer
    runs; one log line each)."""
    cfg = config if config is not None else TrainConfig.from_kwargs(**options)
    if config is not None and options:
        raise TypeError("pass either a TrainConfig or keyword options, not both")
    with reporting(cfg.scale.verbose):
        return _train(cfg, sweep=True)


# ---- routes: which build a configuration takes ------------------------------------------------
def plain_groups(cfg: TrainConfig) -> list:
    """The feature groups of a counted (not rich, not neural) model."""
    m = cfg.model
    order = m.effective_order
    if cfg.gradient.solver in ("gradient", "warm") and m.order is None:
        order = None  # the dense gradient baseline is the paper's window-only model
    return make_groups(m.effective_context, order)


def route(cfg: TrainConfig) -> str:
    """The name of the build ``cfg`` takes (one function each, ``ROUTES``):

    - ``neural``: ``solver`` residual/transformer (``lmkit.neural``);
    - ``rich``: the feature-rich default model, one flat buffer of the text, its groups counted
      and solved in this process, in ``workers`` processes or on Dask, the model's arrays
      memory-mapped under ``max_memory`` (``rich_build.py``);
    - ``ngram-dask`` / ``ngram-bounded``: a pure n-gram model (MKN, lambdas 1, no pruning)
      built on Dask workers (``ngram/dask.py``) or in buckets within ``max_memory``
      (``ngram/build.py``);
    - ``ngram`` / ``spilling`` / ``dask``: every other model, counted (``count_corpus``: in one
      flat buffer here, by worker processes that spill, or on Dask), then ``solve.fit``, then
      the gradient solvers or entropy pruning when asked.
    """
    m, g, s = cfg.model, cfg.gradient, cfg.scale
    if g.solver in NEURAL_SOLVERS:
        return "neural"
    if m.effective_rich:
        if g.solver == "explicit":
            return "rich"
        if m.rich:
            raise OptionError(f"rich is solved in closed form; drop solver {g.solver} or rich")
    groups = plain_groups(cfg)
    suffix = any(isinstance(x, Suffix) for x in groups)
    if suffix and g.solver in ("gradient", "warm"):  # finetune would refuse after counting
        raise OptionError("the gradient solver handles context (window) groups only, not order; "
                          "drop order or use solver explicit")
    pure = all(isinstance(x, Suffix) for x in groups) and m.lambdas is None
    if pure and m.prune is None and m.prune_entropy is None and g.solver == "explicit":
        if s.engine == "dask":
            return "ngram-dask"
        if s.max_memory is not None:
            return "ngram-bounded"
    return counter(groups, s)


# The scale options each route honours; any other one given (not at its default) is refused
# (``check_scale``) and the manifest records only these.
SCALE_OPTIONS = ("workers", "engine", "scheduler", "spill_dir", "max_memory", "workers_read",
                 "chunk_lines")
HONOURS = {
    "rich": {"workers", "engine", "scheduler", "spill_dir", "max_memory", "chunk_lines"},
    "ngram": {"chunk_lines"},
    "ngram-bounded": {"chunk_lines", "max_memory", "spill_dir"},
    "ngram-dask": {"engine", "scheduler", "workers", "chunk_lines", "workers_read"},
    "spilling": {"workers", "max_memory", "spill_dir", "chunk_lines"},
    "dask": {"engine", "scheduler", "workers", "chunk_lines", "max_memory"},
    "neural": set(),  # and, when it trains its explicit base first, that base's route's
}
ROUTE_TEXT = {"rich": "default (feature-rich)", "ngram": "in-memory n-gram",
              "ngram-bounded": "bounded n-gram", "ngram-dask": "n-gram on Dask",
              "spilling": "multi-process counting", "dask": "Dask counting",
              "neural": "neural"}
# what to do instead, per (route, option); parameter names become flags in the CLI (to_flags)
_INSTEAD = {
    ("rich", "spill_dir"): "drop it (on a Dask cluster at a scheduler address the suffix "
                           "chain's windows are spilled on the cluster, in its own TMPDIR), or "
                           "add max_memory SIZE",
    ("rich", "workers"): "drop it (the cluster at scheduler brings its own worker processes)",
    ("ngram-dask", "workers"): "drop it (the cluster at scheduler brings its own worker "
                               "processes)",
    ("dask", "workers"): "drop it (the cluster at scheduler brings its own worker processes)",
    ("rich", "workers_read"): "drop it (this process reads the text of the default model)",
    ("ngram", "workers"): "drop it (one process counts the n-grams in memory), or add engine "
                          "dask to count on Dask",
    ("ngram", "spill_dir"): "drop it, or add max_memory SIZE to count within a memory limit",
    ("ngram-bounded", "workers"): "drop it (the bounded build runs in one process), or use "
                                  "engine dask instead of max_memory",
    ("ngram-dask", "max_memory"): "drop it (the Dask cluster sets its own memory limits), or "
                                  "use engine local",
    ("ngram-dask", "spill_dir"): "drop it (Dask spills by its own settings), or use engine local "
                                 "with max_memory",
    ("dask", "spill_dir"): "drop it (Dask spills by its own settings)",
    "workers_read": "drop it (it is for engine dask with a pure n-gram model: order N alone)",
    "neural": "drop it (the network trains in this process)",
}


def _trains_base(cfg: TrainConfig) -> bool:
    """``solver residual`` without ``base``: an explicit model is trained first."""
    return (route(cfg) == "neural" and cfg.gradient.solver == "residual"
            and cfg.neural.base is None)


def honoured(cfg: TrainConfig) -> set:
    """The scale options the route of ``cfg`` honours (``HONOURS``, less those this
    configuration would not use: on the default route ``spill_dir`` on a Dask cluster at a
    scheduler address without max_memory;
    on every Dask route ``workers`` when a scheduler's cluster brings its own)."""
    if _trains_base(cfg):
        return honoured(_base_config(cfg))  # they go to the base model's build
    r, s = route(cfg), cfg.scale
    ok = HONOURS[r]
    if r == "rich":
        # spilled here: the suffix chain's windows (always, engine local or a LocalCluster,
        # which shares this disk), the training counts when held-out lines are carved (the
        # same), the model's arrays under max_memory
        if s.max_memory is None and s.engine == "dask" and s.scheduler is not None:
            ok = ok - {"spill_dir"}
    if s.scheduler is not None and "scheduler" in ok:
        ok = ok - {"workers"}  # every Dask route: that cluster brings its own workers
    return ok


def check_scale(cfg: TrainConfig) -> str:
    """The route of ``cfg``; ``OptionError`` (one line) for a scale option given to a route that
    would not use it: every option takes effect or is refused, none is silently ignored.
    ``workers`` 1 is what the routes that do not take ``workers`` do anyway: accepted."""
    r = route(cfg)
    if _trains_base(cfg):
        check_scale(_base_config(cfg))
        return r
    ok, default = honoured(cfg), ScaleConfig()
    for name in SCALE_OPTIONS:
        value = getattr(cfg.scale, name)
        if name in ok or value == getattr(default, name) or (name == "workers" and value == 1):
            continue
        shown = (name if value else f"{name} false") if isinstance(value, bool) else \
            f"{name} {value}"
        instead = _INSTEAD.get((r, name)) or _INSTEAD.get(name) or _INSTEAD.get(r, "drop it")
        # the rich route's name is also an option's (to_flags would make it --rich)
        raise OptionError(f"{shown} is not supported on the {ROUTE_TEXT[r]} route"
                          f"{'' if r == 'rich' else f' ({r})'}; {instead}")
    return r


def _used_options(cfg: TrainConfig) -> dict:
    """``cfg.flat()`` without the scale options the route did not use (the manifest's copy)."""
    ok = honoured(cfg)
    if "workers" not in ok and cfg.scale.workers == 1:
        ok = ok | {"workers"}
    return {k: v for k, v in cfg.flat().items() if k not in SCALE_OPTIONS or k in ok}


def _train(cfg: TrainConfig, sweep: bool = False) -> LanguageModel:
    r = check_scale(cfg)
    if sweep:  # once the options are accepted (a refused spill_dir is not touched): the
        # temporary folders a killed build left (SIGKILL, the OOM killer could not remove
        # them) go first, from the folder this build's go to (io/scratch.py: only ours)
        sweep_stale(cfg.scale.spill_dir, log=log)
    return ROUTES[r](cfg, r)


# ---- shared steps -----------------------------------------------------------------------------
def _start(cfg: TrainConfig, r: str, heldout: bool = True):
    """Read the text, print the banner, make the tokenizer: ``(corpus, valid, carved, tok)``."""
    train_corpus, valid, carved = load_text(cfg.corpus, heldout=heldout)
    log(f"[1/4] corpus {train_corpus.name} (route {r}: {ROUTE_TEXT[r]})")
    return train_corpus, valid, carved, make_tokenizer(cfg, train_corpus)


def _finish(cfg, tok, params, extra: dict, stats: dict, t0: float, model=None) -> LanguageModel:
    """The ``LanguageModel``: options that took effect + ``extra`` as its config, ``stats`` as
    its corpus record (name, sequences, tokens, sha256 of the training text)."""
    if model is None:
        config = {**_used_options(cfg), **extra, "vocab_size": tok.vocab_size,
                  "discounts": params.info.get("discounts")}
        model = LanguageModel(tok, params, config, stats)
    log(f"      done in {time.time() - t0:.1f}s")  # the caller says what was built
    return model


def describe_build(model) -> str:
    """What ``lmkit train`` says it wrote: ``model.describe()`` (``LanguageModel.describe``)."""
    return model.describe()


def _stats(name, n_seq, n_tok, digest) -> dict:
    return {"name": name, "sequences": n_seq, "tokens": n_tok, "sha256": digest.hexdigest()}


# ---- one function per route ------------------------------------------------------------------
def _train_neural(cfg: TrainConfig, r: str = "neural"):
    """``solver residual``: a small transformer paired with the frozen explicit model (the one at
    ``neural.base``, or one trained first with the model options): ``hybrid mix`` (default)
    trains it on its own and mixes it linearly with that model (a ``MixtureModel``),
    ``hybrid residual`` trains it on the model's log-probabilities; ``solver transformer``: the
    network alone. All train for ``max_seconds`` CPU seconds (``lmkit.neural``), with the
    budget schedule (warm-up, cosine decay to the budget's end)."""
    from . import neural  # optional dependency: PyTorch (the neural extra)
    neural.require_torch()
    g, n = cfg.gradient, cfg.neural
    train_corpus, valid, carved = load_text(cfg.corpus)
    if not valid:  # refused before an explicit base is trained for nothing
        raise InputError(
            f"the training text has fewer than {HOLDOUT_EVERY} non-blank lines, so no held-out "
            "lines are carved for the network's checkpoints; give at least "
            f"{HOLDOUT_EVERY} lines (split a single long line into lines)" if carved else
            "the held-out split is empty; the network's checkpoints need held-out lines")
    lines = list(kept(train_corpus, carved))
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
        base = _train(_base_config(cfg))
    if n.hybrid == "mix":
        init = g.init or "explicit"
        log(f"[2/2] training a transformer ({init} init) for {g.max_seconds:g} CPU s, mixed "
            "with the explicit model (weight fitted on valid at every checkpoint)")
        return neural.train_mixed(base, lines, list(valid), init=init, **options)
    log(f"[2/2] training the residual transformer for {g.max_seconds:g} CPU s "
        f"(crossfit {n.crossfit})")
    return neural.train_residual(base, lines, list(valid), learn_scale=n.learn_scale,
                                 crossfit=n.crossfit, **options)


def _base_config(cfg: TrainConfig) -> TrainConfig:
    """The explicit model ``solver residual`` trains first (same model options, solved)."""
    return dataclasses.replace(cfg, neural=NeuralConfig(), gradient=dataclasses.replace(
        cfg.gradient, solver="explicit", max_seconds=None, init=None, lr=None))


def _check_spill_dir(folder) -> None:
    """``OptionError`` (one line) unless ``folder`` takes a temporary folder (made, removed)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix="lmkit-check-", dir=folder))
    except OSError as e:
        raise OptionError(f"spill_dir {folder}: cannot create temporary files there "
                          f"({e.strerror or e}); pass an existing, writable folder") from None


def _train_rich(cfg: TrainConfig, r: str = "rich") -> LanguageModel:
    """The feature-rich model (``rich.py``): one flat buffer of the encoded text, counted for
    every group (clusters from its bigram counts), solved, weights fitted on held-out text;
    the groups in ``workers`` processes or on Dask, within ``max_memory`` (``rich_build.py``:
    the same model on every one of these)."""
    t0 = time.time()
    m = cfg.model
    order = m.order  # None: by the training text's size (ModelConfig.rich_order)
    context = m.DEFAULT_CONTEXT if m.context is None else m.context
    s = cfg.scale
    if s.spill_dir is not None:  # before any work: the folder must take temporary files
        _check_spill_dir(s.spill_dir)
    train_corpus, valid, carved, tok = _start(cfg, r)
    # workers: processes on engine local (default 1: this process), the LocalCluster's size
    # on Dask (default: every core, as the other Dask routes)
    dask = s.engine == "dask"
    workers = check_workers(s.workers) if dask else (s.workers or 1)
    where = (f"on Dask ({s.scheduler or f'LocalCluster of {workers}'})" if dask else
             f"in {workers} worker processes" if workers > 1 else "in this process")
    log(f"[3/4] counting the feature-rich model: n-grams 1..{order or 'N by size'}, windows "
        f"{rich.DEFAULT_FIRST_WINDOW}..{context}, "
        f"skip-grams, cluster histories, line positions ({where}"
        f"{f', max_memory {s.max_memory}' if s.max_memory else ''})")
    digest = hashlib.sha256()
    lines = kept(_hashing(train_corpus, digest), carved)
    kw = dict(order=order, context=context, seed=cfg.spm.seed, piece_bytes=tok.piece_bytes())
    chunk = cfg.scale.chunk_lines
    held = tok.encode_batch(heldout_lines(valid, m.effective_lambda_tokens, tok))
    # one group's counts at a time (rich_build.py): the same model as rich.count_rich +
    # rich.fit_rich, without every group's counts in memory next to the model
    params, tables, n_seq, n_tok = build_rich(
        encoded(lines, tok, chunk), tok.vocab_size, tok.bos_id, tok.eos_id, held,
        refit_chunks=encoded(valid, tok, chunk, desc="count held-out") if carved else None,
        discount=_discount(m), max_memory=s.max_memory, workers=workers, engine=s.engine,
        scheduler=s.scheduler, spill_dir=s.spill_dir, log=log, **kw)
    order = 1 + sum(isinstance(g, Suffix) for g in params.groups)  # the order built
    log("      cluster tables of "
        + " and ".join(str(int(t.max()) + 1) for t in tables if t is not None) + " clusters")
    # compact folder: drop the entries that carry no weight, float32 values (compact.py);
    # under max_memory group by group onto disk, memory-mapped (the files are unlinked at
    # once: the mappings keep them until the model is written and freed)
    folder = (make_temp_dir("lmkit-compact-", dir=s.spill_dir)
              if s.max_memory is not None else None)
    try:
        params = compact.compact_rich(params, held, tok.bos_id, tok.eos_id, log=log,
                                      folder=folder)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return _finish(cfg, tok, params, {"context": context, "order": order, "rich": True},
                   _stats(train_corpus.name, n_seq, n_tok, digest), t0)


def _train_ngram_bounded(cfg: TrainConfig, r: str = "ngram-bounded") -> LanguageModel:
    """A pure n-gram model within ``max_memory``: histories split into buckets by their newest
    token, counted, spilled and solved one bucket at a time (``ngram/build.py``)."""
    t0 = time.time()
    m, s = cfg.model, cfg.scale
    train_corpus, _, _, tok = _start(cfg, r, heldout=False)  # lambdas stay 1: no held-out text
    digest = hashlib.sha256()  # the corpus hash, taken as counting reads every line once
    lines = _hashing(train_corpus, digest)
    log(f"[3/4] counting and solving {', '.join(g.name for g in plain_groups(cfg))} in "
        f"buckets (max_memory {s.max_memory})")
    params, n_seq, n_tok = build_ngram_from_chunks(
        encoded(lines, tok, s.chunk_lines), m.effective_order, tok.vocab_size, tok.bos_id,
        tok.eos_id, max_memory=s.max_memory, discount=_discount(m), spill_dir=s.spill_dir,
        log=log)
    return _finish(cfg, tok, params, {"context": 0},
                   _stats(train_corpus.name, n_seq, n_tok, digest), t0)


def _train_ngram_dask(cfg: TrainConfig, r: str = "ngram-dask") -> LanguageModel:
    """A pure n-gram model built on Dask: the bounded build's partitions counted and solved on
    the workers (``ngram/dask.py``), which read the text files themselves where they can."""
    t0 = time.time()
    m, s = cfg.model, cfg.scale
    train_corpus, _, _, tok = _start(cfg, r, heldout=False)
    digest = hashlib.sha256()
    lines = _hashing(train_corpus, digest)
    log(f"[3/4] counting and solving {', '.join(g.name for g in plain_groups(cfg))} on Dask")
    files = train_corpus.files if cfg.corpus.dataset is None else None  # plain text files
    read = s.workers_read
    files = files if (s.scheduler is None if read is None else read) else None
    with bar(desc="count") as b:
        params, n_seq, n_tok = build_ngram_dask(
            lines, tok, m.effective_order, files=files, discount=_discount(m),
            chunk_lines=s.chunk_lines, scheduler=s.scheduler, n_workers=s.workers,
            progress=b.update, log=log)
    if files:  # the workers read the text: this process reads it once more, for its hash
        for _ in lines:
            pass
    return _finish(cfg, tok, params, {"context": 0},
                   _stats(train_corpus.name, n_seq, n_tok, digest), t0)


def _train_counted(cfg: TrainConfig, r: str) -> LanguageModel:
    """Routes ``ngram``, ``spilling``, ``dask``: count (``count_corpus``), solve and fit the
    lambdas (``solve.fit``); then entropy pruning, or the gradient solvers, when asked."""
    t0 = time.time()
    m, g = cfg.model, cfg.gradient
    groups = plain_groups(cfg)
    order = next((x.m + 1 for x in reversed(groups) if isinstance(x, Suffix)), None)
    # a pure n-gram model keeps its lambdas at 1: it needs no held-out text
    pure_ngram = all(isinstance(x, Suffix) for x in groups) and m.lambdas is None
    train_corpus, valid, carved, tok = _start(cfg, r, heldout=not pure_ngram)
    log(f"[3/4] counting {', '.join(x.name for x in groups)}")
    digest = hashlib.sha256()  # the corpus hash, taken as counting reads every line once
    lines = kept(_hashing(train_corpus, digest), carved)
    counts = count_corpus(lines, tok, groups, cfg.scale)
    held_counts = count_corpus(valid, tok, groups, cfg.scale, desc="count held-out") if carved else None
    log(f"      {counts.n_sequences} sequences, {counts.n_tokens} tokens, "
        f"{sum(F.nnz for F in counts.F)} non-zero counts")
    need = model_nbytes(counts)  # the counts stay alive while the model is built
    log(f"      memory: counts {format_bytes(counts_nbytes(counts))}, model ~{format_bytes(need)}")
    check_memory(counts_nbytes(counts) + 2 * need, cfg.scale.max_memory, "solving the sparse model",
                 "raise max_memory, or use a smaller vocab_size or context")
    log(f"[4/4] solving ({g.solver})")
    from_scratch = g.effective_init in ("zeros", "random")  # never reads the explicit weights
    held = [] if from_scratch or m.lambdas is not None else heldout_lines(valid, m.effective_lambda_tokens, tok)
    params = fit(counts, tok.encode_batch(held), discount=_discount(m), prune=m.prune,
                 lambdas=m.lambdas, refit=held_counts, max_memory=cfg.scale.max_memory, log=log)
    if held_counts is not None:
        counts = counts + held_counts
    config = {**_used_options(cfg), "context": m.effective_context, "order": order,
              "vocab_size": tok.vocab_size, "discounts": params.info.get("discounts")}
    # = TextCorpus.sha256() of the training text
    stats = _stats(train_corpus.name, counts.n_sequences, counts.n_tokens, digest)
    model = LanguageModel(tok, params, config, stats)
    if m.prune_entropy is not None:
        before = n_ngrams(model)
        model = prune_entropy(model, m.prune_entropy)
        log(f"      entropy pruning at {m.prune_entropy:g}: {before} -> {n_ngrams(model)} n-grams")
    if g.solver != "explicit":
        vlines = heldout_lines(valid, g.valid_tokens, tok)
        # carved held-out lines validate the descent, so they are not trained on
        tlines = list(kept(train_corpus, carved))
        model = LanguageModel(tok, finetune(params, tok, tlines, vlines, g, seed=cfg.spm.seed,
                                            max_memory=cfg.scale.max_memory),
                              {**config, "init": g.effective_init, "lr": g.effective_lr}, stats)
    return _finish(cfg, tok, params, {}, stats, t0, model)


ROUTES = {"neural": _train_neural, "rich": _train_rich, "ngram-bounded": _train_ngram_bounded,
          "ngram-dask": _train_ngram_dask, "ngram": _train_counted, "spilling": _train_counted,
          "dask": _train_counted}
