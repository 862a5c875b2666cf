"""Options: one frozen dataclass per stage holds every option's name, type, default, range and help.

The Python API takes these fields as keyword arguments (``lmkit.train(context=3, ...)``) and the
CLI flags are generated from them (``--context 3``): one definition, the same names and defaults.
Unknown keys fail fast with the closest match::

    >>> TrainConfig.from_kwargs(contxt=1)
    Traceback (most recent call last):
    lmkit.errors.InputError: unknown option 'contxt'; did you mean 'context'?

Each field's ``metadata`` carries ``help`` and, where it applies, ``min``/``max`` (inclusive
unless ``min_open``/``max_open``), ``choices`` and ``cli`` (False: API only). Values are checked
when a config is made, so a bad value never reaches the work: every number finite and in range,
the type the field declares (``"3"`` is not an int), the choice one of the listed ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import typing
from dataclasses import dataclass, field

from .errors import InputError, OptionError
from .memory import parse_size


def opt(default, help: str, **meta):
    """A config field: ``default`` and ``help`` plus checks (min, max, min_open, choices, ...)."""
    if isinstance(default, list):
        raise AssertionError("mutable defaults: use a tuple")
    return field(default=default, metadata={"help": help, **meta})


# ---- the stages' options --------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusConfig:
    """Where the text comes from (exactly one of corpus / input / dataset; none = default corpus)."""

    corpus: str | None = opt(None, "named corpus (default: shakespeare)", metavar="NAME")
    input: tuple[str, ...] | None = opt(None, "UTF-8 text files or folders of .txt", metavar="PATH")
    dataset: str | None = opt(None, "HuggingFace dataset name[:config], or a local "
                              ".txt/.jsonl/.parquet/.csv file or folder", metavar="NAME")
    split: str = opt("train", "split to read")
    text_field: str = opt("text", "dataset column holding the text")
    streaming: bool = opt(False, "stream the dataset instead of downloading it")

    def __post_init__(self):
        check_fields(self)
        given = [k for k in ("corpus", "input", "dataset") if getattr(self, k) is not None]
        if len(given) > 1:
            raise OptionError(f"{' and '.join(given)} are exclusive; pass one source of text")


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece training options (``lmkit spm-train``; also part of ``lmkit train``)."""

    vocab_size: int = opt(4096, "pieces in the tokenizer (>= 260: 256 bytes + specials)", min=260)
    model_type: str = opt("bpe", "SentencePiece model type", choices=("bpe", "unigram"))
    input_sentence_size: int = opt(2_000_000, "lines sampled (seeded) to train the tokenizer; "
                                   "0 = all", min=0)
    seed: int = opt(0, "random seed (tokenizer sample, gradient solver)", min=0)

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class ModelConfig:
    """Which feature groups, and how the closed form is smoothed and weighted."""

    context: int | None = opt(None, "window groups: tokens 1..K back (default: 3 with no model "
                              "option, where the rich model uses tokens 2..K; 0 when only order "
                              "is given)", min=0, max=64)
    order: int | None = opt(None, "n-gram order N: modified Kneser-Ney over suffix groups 1..N-1 "
                            "(default with no model option: by the training text's size, 5 up to "
                            "4M tokens, one more per doubling, at most 7; none when only context "
                            "is given)", min=2, max=64)
    prune: tuple[int, ...] | None = opt(None, "n-gram count thresholds per order 1..N (start with "
                                        "0, non-decreasing; a shorter list repeats its last "
                                        "value): n-grams with count <= T are dropped. Below the "
                                        "top order lmkit compares adjusted (continuation) counts, "
                                        "lmplz --prune raw counts (docs/ngram.md)", min=0,
                                        metavar="T")
    prune_entropy: float | None = opt(None, "entropy-prune the trained n-gram model (Stolcke "
                                      "1998): drop n-grams whose removal raises perplexity by "
                                      "less than this relative amount, e.g. 1e-7 (= lmkit prune)",
                                      min=0.0, metavar="THETA")
    discount: tuple[float, ...] | None = opt(
        None, "absolute discount(s) in (0, 1) per window group (default n1/(n1+2 n2)); with "
        "order: 1 or 3 values D1 D2 D3+ (default per order from count-of-counts)",
        min=0.0, min_open=True)
    lambdas: tuple[float, ...] | None = opt(None, "group weights (default: fitted on held-out "
                                            "text)", min=0.0)
    lambda_tokens: int | None = opt(None, "held-out tokens used to fit the lambdas (default: "
                                    "10000; 5000 for the rich model, whose search costs more "
                                    "per token)", min=1)
    rich: bool | None = opt(None, "the feature-rich model: MKN (order, default 5) + windows "
                            "2..K (context K, default 3) + skip-grams + cluster histories + line "
                            "positions, one weight per group x entry count (default: on with no other model "
                            "option)")

    def __post_init__(self):
        check_fields(self)
        if self.prune_entropy is not None and (self.effective_order is None or self.n_groups
                                               != self.effective_order - 1):
            raise OptionError("prune_entropy needs a pure n-gram model; pass order N without "
                              "context")
        if self.prune is not None and self.effective_order is None:
            raise OptionError(f"prune {list(self.prune)} needs n-gram groups; add order")
        if self.prune is not None and len(self.prune) > self.effective_order:
            raise OptionError(f"prune has {len(self.prune)} values but an order-"
                              f"{self.effective_order} model has {self.effective_order} orders; "
                              f"pass at most {self.effective_order}")
        if self.rich:
            given = [k for k in ("lambdas", "prune", "prune_entropy") if getattr(self, k) is not None]
            if given:
                raise OptionError(f"rich takes no {' or '.join(given)}: pass order N (and "
                                  "context K) for a plain model")
        n = self.n_groups
        if self.lambdas is not None and len(self.lambdas) != n:
            raise OptionError(f"lambdas needs {n} values (one per feature group), got "
                              f"{len(self.lambdas)}")
        if n == 0:
            raise OptionError("context 0 without order leaves no features; pass context >= 1 "
                              "or order >= 2")

    # No model option: the feature-rich model (rich.py; docs/quality.md): MKN order 5 + windows
    # 2..3 + skip-grams + cluster histories + line positions. order alone = exact MKN (ARPA-exportable); context
    # alone = the paper's window-only model; order and context = MKN + windows.
    DEFAULT_ORDER, DEFAULT_CONTEXT = 5, 3
    # The rich model's n-gram order grows with its training text (docs/scale.md, "Quality at
    # scale"): MKN's gain from a longer history grows with how often long histories recur
    # (KenLM order 5 -> 6 on Debian docs: -1.2 % at 2M tokens, -1.8 % at 5M, -3.8 % at 18.9M),
    # and so does the default model's (order 5 -> 7: -0.4 % at 2M, -3.0 % at 18.9M). DEFAULT_ORDER
    # up to RICH_ORDER_TOKENS training tokens, one more each time they double, at most
    # RICH_MAX_ORDER (each order adds stored values and memory).
    RICH_ORDER_TOKENS, RICH_MAX_ORDER = 4_000_000, 7
    DEFAULT_LAMBDA_TOKENS, DEFAULT_RICH_LAMBDA_TOKENS = 10000, 5000

    @classmethod
    def rich_order(cls, n_tokens: int) -> int:
        """The feature-rich model's n-gram order for ``n_tokens`` training tokens (targets,
        end-of-line marks included) when ``order`` is not given: ``DEFAULT_ORDER`` below
        ``RICH_ORDER_TOKENS``, one more from there and per doubling after it, at most
        ``RICH_MAX_ORDER``. E.g. 1.4M -> 5, 4M -> 6, 8M -> 7, 100M -> 7."""
        if n_tokens < cls.RICH_ORDER_TOKENS:
            return cls.DEFAULT_ORDER
        # exact doublings in integers (no float rounding at the boundaries)
        extra = 1 + (int(n_tokens) // cls.RICH_ORDER_TOKENS).bit_length() - 1
        return min(cls.DEFAULT_ORDER + extra, max(cls.RICH_MAX_ORDER, cls.DEFAULT_ORDER))

    @property
    def effective_lambda_tokens(self) -> int:
        if self.lambda_tokens is not None:
            return self.lambda_tokens
        return self.DEFAULT_RICH_LAMBDA_TOKENS if self.effective_rich else self.DEFAULT_LAMBDA_TOKENS

    @property
    def effective_rich(self) -> bool:
        if self.rich is not None:
            return self.rich
        return all(getattr(self, k) is None for k in ("order", "context", "lambdas", "prune",
                                                     "prune_entropy"))

    @property
    def effective_context(self) -> int:
        if self.context is not None:
            return self.context
        return self.DEFAULT_CONTEXT if self.order is None else 0

    @property
    def effective_order(self) -> int | None:
        if self.order is not None or self.context is not None:
            return self.order
        return self.DEFAULT_ORDER

    @property
    def n_groups(self) -> int:
        return self.effective_context + (self.effective_order - 1 if self.effective_order else 0)


@dataclass(frozen=True)
class ScaleConfig:
    """How counting runs: processes, engine, memory."""

    workers: int | None = opt(None, "processes that tokenize and count (default: every core; "
                              "1 for the default model on engine local); with engine dask, the "
                              "LocalCluster's workers", min=1)
    engine: str = opt("local", "count on this machine or on a Dask cluster", choices=("local", "dask"))
    scheduler: str | None = opt(None, "Dask scheduler address, e.g. tcp://10.0.0.5:8786 "
                                "(default: start a LocalCluster)", metavar="ADDRESS")
    chunk_lines: int = opt(10000, "lines per counting chunk", min=1)
    workers_read: bool | None = opt(None, "engine dask, pure n-gram model from text files: the "
                                    "workers read the files themselves (every worker must see "
                                    "the same paths); default: yes on a LocalCluster, no with a "
                                    "scheduler (this process sends the text)")
    max_memory: str | None = opt(None, "memory limit, e.g. 8G (default: 80%% of available RAM)",
                                 metavar="SIZE")
    spill_dir: str | None = opt(None, "folder for the build's temporary files (default: "
                                "system temp); lmkit folders left there by killed builds "
                                "are removed first",
                                metavar="DIR")
    verbose: bool = opt(True, "progress banners and bars on stderr")

    def __post_init__(self):
        check_fields(self)
        if self.scheduler is not None and self.engine != "dask":
            raise OptionError("scheduler needs engine dask; add engine dask or drop scheduler")
        if self.max_memory is not None:
            parse_size(self.max_memory)


SOLVERS = ("explicit", "gradient", "warm", "residual", "transformer")
NEURAL_SOLVERS = ("residual", "transformer")
#: learning rates that work per solver: a warm start must stay near the explicit optimum
DEFAULT_LR = {"gradient": 3e-3, "warm": 3e-4}


@dataclass(frozen=True)
class GradientConfig:
    """The iterative baseline (``solver gradient``) and the warm start (``solver warm``)."""

    solver: str = opt("explicit", "explicit: count and solve; gradient: gradient descent from "
                      "init; warm: gradient fine-tune from the explicit solution; residual: a "
                      "small transformer paired with the frozen explicit model (see hybrid); "
                      "transformer: the same network on its own (residual/transformer need "
                      "the neural extra and max_seconds)", choices=SOLVERS)
    init: str | None = opt(None, "gradient init (default: zeros for gradient, explicit for warm); "
                           "transformer: random (default) or explicit (output bias from the "
                           "unigram, embeddings from the bigram PMI of the training lines); "
                           "residual with hybrid mix: explicit (default) or random",
                           choices=("zeros", "random", "explicit"))
    epochs: int = opt(10, "gradient: max passes over the data", min=1)
    max_seconds: float | None = opt(None, "gradient: training time budget in seconds",
                                    min=0.0, min_open=True)
    lr: float | None = opt(None, "gradient: learning rate (default 0.003 for gradient, 0.0003 "
                           "for warm); residual/transformer: peak AdamW rate (default 0.001, "
                           "0.0003 for hybrid residual), decayed along a cosine to the end of "
                           "max_seconds", min=0.0, min_open=True)
    batch_size: int = opt(1024, "gradient: minibatch size", min=1)
    optimizer: str = opt("adam", "gradient: lazy Adam or SGD with momentum 0.9",
                         choices=("adam", "sgd"))
    patience: int = opt(2, "gradient: stop after this many validations without improvement", min=1)
    l2: float = opt(0.0, "gradient: L2 penalty on W", min=0.0)
    lr_decay: float = opt(1.0, "gradient: learning rate multiplied by this each epoch "
                          "(1 = constant)", min=0.0, min_open=True, max=1.0)
    eval_every: int = opt(0, "gradient: steps between validations (0 = once per epoch)", min=0)
    valid_tokens: int = opt(20000, "gradient: validation tokens for early stopping", min=1)
    random_scale: float = opt(0.01, "gradient: std of the random init", min=0.0)

    def __post_init__(self):
        check_fields(self)
        if self.solver == "explicit" and self.init is not None:
            raise OptionError(f"init {self.init} needs an iterative solver but solver is "
                              "explicit; pass solver gradient (or warm for init explicit)")
        if self.solver in NEURAL_SOLVERS and self.max_seconds is None:
            raise OptionError(f"solver {self.solver} trains by a CPU-time budget; add max_seconds "
                              "(e.g. 300)")
        if self.solver in NEURAL_SOLVERS and self.init not in (None, "random", "explicit"):
            raise OptionError(f"solver {self.solver} starts from init random or explicit, got "
                              f"init {self.init}")
        if self.solver == "warm" and self.init not in (None, "explicit"):
            raise OptionError(f"solver warm starts from the explicit solution, got init "
                              f"{self.init}; use solver gradient for zeros/random init")
        unused = [k for k in self.unused_fields() if getattr(self, k) != _DEFAULT_GRADIENT[k]]
        if unused:
            fix = "drop it, or pass solver gradient" if self.solver == "explicit" else "drop it"
            raise OptionError(f"{unused[0]} is for solver gradient or warm"
                              f"{'' if unused[0] in GRADIENT_ONLY else ' (and the neural solvers)'}"
                              f", not solver {self.solver}; {fix}")

    def unused_fields(self) -> tuple:
        """The fields the chosen solver never reads (given one, a run refuses it, one line)."""
        if self.solver == "explicit":
            return GRADIENT_ONLY + ("max_seconds", "lr")
        return GRADIENT_ONLY if self.solver in NEURAL_SOLVERS else ()

    @property
    def effective_init(self) -> str | None:
        """The network's or the weights' start; for solver residual see ``NeuralConfig``."""
        if self.solver == "transformer":
            return self.init or "random"
        if self.solver == "explicit" or self.solver in NEURAL_SOLVERS:
            return None
        return self.init or ("explicit" if self.solver == "warm" else "zeros")

    @property
    def effective_lr(self) -> float | None:
        if self.solver in NEURAL_SOLVERS:
            return self.lr  # None: lmkit.neural.fit.default_schedule picks it from the budget
        if self.solver == "explicit":
            return None
        return self.lr or DEFAULT_LR[self.solver]


#: GradientConfig fields only the dense gradient solvers (gradient, warm) read
GRADIENT_ONLY = ("epochs", "batch_size", "optimizer", "patience", "l2", "lr_decay", "eval_every",
                 "valid_tokens", "random_scale")
_DEFAULT_GRADIENT = {f.name: f.default for f in dataclasses.fields(GradientConfig)}


#: how ``solver residual`` pairs the network with the explicit model (``NeuralConfig.hybrid``)
HYBRIDS = ("mix", "residual")


@dataclass(frozen=True)
class NeuralConfig:
    """``solver residual``: which explicit model the transformer is paired with, and how."""

    base: str | None = opt(None, "residual: the explicit model folder to build on (default: "
                           "train one with the model options first)", metavar="DIR")
    hybrid: str = opt("mix", "residual: mix: the network trained on its own (init explicit) "
                      "and mixed linearly with the frozen explicit model, the weight fitted "
                      "on valid at every checkpoint, the best mixture kept (a mixture folder); "
                      "residual: the network trained on the explicit model's log-probabilities "
                      "(log_softmax(a log P_explicit + f))", choices=HYBRIDS)
    crossfit: int = opt(4, "residual with hybrid residual: the training lines' explicit term "
                        "comes from k models that did not count them, each on (k-1)/k of the "
                        "lines (0 = the base model itself, which has seen them and overfits)",
                        min=0, max=16)
    learn_scale: bool = opt(True, "residual with hybrid residual: learn a scalar on the "
                            "explicit term")
    warmup: int | None = opt(None, "residual/transformer: warm-up steps of the learning rate "
                             "(default 100); the rate then decays along a cosine to a tenth of "
                             "its peak at the end of max_seconds", min=1)

    def __post_init__(self):
        check_fields(self)
        if self.crossfit == 1:
            raise OptionError("crossfit 1 leaves no line out; pass 0 (off) or k >= 2")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``lmkit train`` takes: the stage configs, flattened (field names are unique)."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    spm: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer: str | None = None  # a trained tokenizer (PREFIX.model) to use instead of training one
    model: ModelConfig = field(default_factory=ModelConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    neural: NeuralConfig = field(default_factory=NeuralConfig)

    PARTS = ("corpus", "spm", "model", "scale", "gradient", "neural")

    def __post_init__(self):
        check_neural(self.gradient, self.neural)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "TrainConfig":
        """Build from flat keyword arguments (``context=3, lr=1e-3, ...``); unknown keys fail."""
        kwargs = dict(kwargs)
        tok_path = kwargs.pop("tokenizer", None)
        clash = [k for k in ("vocab_size", "model_type", "input_sentence_size") if k in kwargs]
        if tok_path is not None and clash:
            raise OptionError(f"{clash[0]} applies to training a SentencePiece model, but tokenizer {tok_path} is "
                              f"given; drop {clash[0]} or drop tokenizer")
        if tok_path is not None and not isinstance(tok_path, (str, bytes)) and not hasattr(tok_path, "__fspath__"):
            raise OptionError(f"tokenizer must be a path to a .model file, got {type(tok_path).__name__}")
        parts = {}
        for name, klass in zip(cls.PARTS, TRAIN_PARTS):
            names = field_names(klass)
            parts[name] = make(klass, {k: kwargs.pop(k) for k in list(kwargs) if k in names})
        reject_unknown(kwargs, train_option_names())
        return cls(tokenizer=None if tok_path is None else str(tok_path), **parts)

    def flat(self) -> dict:
        """All options as one flat dict (JSON-able: tuples become lists)."""
        out = {}
        for name in self.PARTS:
            out.update(dataclasses.asdict(getattr(self, name)))
        out["tokenizer"] = self.tokenizer
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def check_neural(g: GradientConfig, n: NeuralConfig) -> None:
    """Every neural option takes effect on the solver given or is refused (``OptionError``,
    one line): ``base`` / ``hybrid`` need solver residual, ``crossfit`` / ``learn_scale``
    hybrid residual, ``warmup`` a neural solver, ``init`` no hybrid residual (its network
    starts at exactly 0)."""
    d = NeuralConfig()
    given = [k for k in ("base", "hybrid", "crossfit", "learn_scale", "warmup")
             if getattr(n, k) != getattr(d, k)]
    if g.solver not in NEURAL_SOLVERS:
        if given:
            raise OptionError(f"{given[0]} is for solver residual or transformer, not solver "
                              f"{g.solver}; drop it")
        return
    if g.solver == "transformer":
        wrong = [k for k in given if k != "warmup"]
        if wrong:
            raise OptionError(f"{wrong[0]} is for solver residual (a network paired with an "
                              "explicit model), not solver transformer; drop it")
        return
    if n.hybrid == "mix":
        wrong = [k for k in given if k in ("crossfit", "learn_scale")]
        if wrong:
            raise OptionError(f"{wrong[0]} is for hybrid residual (the network trained on the "
                              "explicit model's log-probabilities); drop it, or add hybrid residual")
    elif g.init is not None:
        raise OptionError("init is for hybrid mix and solver transformer, not hybrid residual "
                          "(its network starts at exactly 0); drop init or use hybrid mix")


TRAIN_PARTS = (CorpusConfig, TokenizerConfig, ModelConfig, ScaleConfig, GradientConfig, NeuralConfig)


def train_option_names() -> list[str]:
    return [n for k in TRAIN_PARTS for n in field_names(k)] + ["tokenizer"]


@dataclass(frozen=True)
class LoadConfig:
    """Loading a model folder (``lmkit.load`` / ``LanguageModel.load``)."""

    mmap: bool = opt(False, "map the model's params.npz instead of reading it into memory: no "
                     "copy and pages shared between processes, but the file must not be changed "
                     "in place while in use (see docs/guarantees.md)")

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class SampleConfig:
    """``lmkit generate`` / ``LanguageModel.sample``."""

    max_tokens: int = opt(100, "tokens to sample per sample (at most)", min=0, max=1_000_000)
    temperature: float = opt(1.0, "softmax temperature; 0 = greedy", min=0.0, max=1e6)
    top_k: int = opt(0, "keep the k most likely tokens; 0 = no limit", min=0)
    top_p: float = opt(1.0, "nucleus: smallest set with this probability mass, in (0, 1]",
                       min=0.0, min_open=True, max=1.0)
    seed: int = opt(0, "random seed", min=0, max=2**63 - 1)
    num_samples: int = opt(1, "number of samples", min=1, max=100_000)

    def __post_init__(self):
        check_fields(self)
        if 0 < self.temperature < 1e-6:
            raise OptionError(f"temperature {self.temperature!r} is too small to be numerically "
                              "meaningful; pass 0 for greedy or a value >= 1e-6")


@dataclass(frozen=True)
class ScoreConfig:
    """``lmkit score`` / ``docscore.score_file``: what to score and how."""

    input: tuple[str, ...] | None = opt(None, "text or .jsonl files (or folders of .txt)",
                                        metavar="PATH")
    dataset: str | None = opt(None, "HuggingFace dataset, or a local .jsonl/.parquet/.csv file "
                              "(streamed)", metavar="NAME")
    split: str = opt("train", "dataset split")
    format: str = opt("text", "input format", choices=("text", "jsonl"))
    text_field: str = opt("text", "jsonl/dataset field holding the text")
    id_field: str | None = opt(None, "jsonl/dataset field copied to each result as id", metavar="F")
    unit: str = opt("line", "score each line, or each document (text: blank-line separated; "
                    "jsonl: each record)", choices=("line", "document"))
    workers: int = opt(1, "scoring processes", min=1, max=1024)

    def __post_init__(self):
        check_fields(self)
        if (self.input is None) == (self.dataset is None):
            raise OptionError("pass exactly one of input or dataset")


@dataclass(frozen=True)
class InterpolateConfig:
    """``lmkit interpolate``: how models that share a tokenizer are combined."""

    method: str = opt("linear", "linear mixture (EM weights) or log-linear merge (lambdas "
                      "refitted)", choices=("linear", "loglinear"))
    weights: tuple[float, ...] | None = opt(None, "linear: one weight per model (default: fitted "
                                            "by EM on held-out text)", min=0.0, metavar="W")
    heldout_tokens: int = opt(20000, "held-out tokens used to fit weights or lambdas", min=1)

    def __post_init__(self):
        check_fields(self)
        if self.weights is not None and self.method != "linear":
            raise OptionError("weights is for method linear; the log-linear merge refits the "
                              "lambda of each group on held-out text")


ADAPT_MODES = ("cache", "counts", "counts+cache")


@dataclass(frozen=True)
class AdaptConfig:
    """Adaptive scoring (``lmkit eval --adapt``, ``lmkit score --adapt``; docs/adapt.md)."""

    adapt: bool = opt(False, "score adaptively: every token by the static model mixed with a "
                      "cache of the text already scored (opt-in; the static number is the "
                      "KenLM-comparable one)")
    cache_order: int | None = opt(None, "cache history lengths 0..N-1 (default: 8); a value "
                                  "other than the default needs cache_fit", min=1, max=32)
    cache_window: int | None = opt(None, "recency levels: orders 0..2 counted over the last N "
                                   "tokens only (default: 500; 0 = none); a value other than "
                                   "the default needs cache_fit", min=0)
    context_lines: int | None = opt(None, "how many previous lines a cache history may reach "
                                    "into (default: 1; 0 = histories stop at the line start)",
                                    min=0)
    cache_fit: bool = opt(False, "fit the cache weights on the valid split of the corpus first "
                          "(default: the weights chosen on the default corpus's valid split)")
    adapt_mode: str | None = opt(None, "what adapts: cache = the static model mixed with a cache "
                                 "of the scored text; counts = the n-gram model itself re-solved "
                                 "exactly on train + the lines scored so far (lmkit train --order "
                                 "N models); counts+cache = both (default: cache)",
                                 choices=ADAPT_MODES)
    # API only: {"a": [...], "b": [...], "d": [...], "e": [...]} (cache.CacheWeights.to_json)
    cache_weights: dict | None = None

    DEFAULT_CACHE_ORDER, DEFAULT_CACHE_WINDOW, DEFAULT_CONTEXT_LINES = 8, 500, 1

    def __post_init__(self):
        check_fields(self)
        cache_given = [k for k in ("cache_order", "cache_window", "context_lines", "cache_weights")
                       if getattr(self, k) is not None] + (["cache_fit"] if self.cache_fit else [])
        given = cache_given + (["adapt_mode"] if self.adapt_mode is not None else [])
        if given and not self.adapt:
            verb = "applies" if len(given) == 1 else "apply"
            raise OptionError(f"{' and '.join(given)} only {verb} to adaptive scoring; add adapt "
                              "(the static model reads each line on its own)")
        if cache_given and self.adapt_mode == "counts":
            verb = "sets" if len(cache_given) == 1 else "set"
            raise OptionError(f"{' and '.join(cache_given)} {verb} the cache, and adapt_mode counts "
                              "has none; use adapt_mode counts+cache")
        if self.cache_fit and self.cache_weights is not None:
            raise OptionError("cache_fit and cache_weights are exclusive; pass one")
        for name, default in (("cache_order", self.DEFAULT_CACHE_ORDER),
                              ("cache_window", self.DEFAULT_CACHE_WINDOW)):
            value = getattr(self, name)
            if value not in (None, default) and not self.cache_fit and self.cache_weights is None:
                raise OptionError(f"{name} {value} has no default weighting (it was chosen for "
                                  f"{default}); add cache_fit")

    @property
    def effective_adapt_mode(self) -> str:
        return "cache" if self.adapt_mode is None else self.adapt_mode

    @property
    def effective_context_lines(self) -> int:
        return self.DEFAULT_CONTEXT_LINES if self.context_lines is None else self.context_lines

    @property
    def effective_cache_window(self) -> int:
        return self.DEFAULT_CACHE_WINDOW if self.cache_window is None else self.cache_window

    @property
    def effective_cache_order(self) -> int:
        return self.DEFAULT_CACHE_ORDER if self.cache_order is None else self.cache_order


@dataclass(frozen=True)
class EvalCorpusConfig(CorpusConfig):
    """Where the text comes from (as ``CorpusConfig``; ``lmkit eval`` reads the test split)."""

    split: str = opt("test", "split to read")


@dataclass(frozen=True)
class HeldoutCorpusConfig(CorpusConfig):
    """Where the held-out text comes from (as ``CorpusConfig``; the valid split)."""

    split: str = opt("valid", "split to read")


@dataclass(frozen=True)
class EncodeConfig:
    """``lmkit spm-encode`` / ``spm-decode``: token ids or pieces on the id side."""

    output_format: str = opt("id", "spm-encode: write token ids or pieces", choices=("id", "piece"))
    input_format: str = opt("id", "spm-decode: read token ids or pieces", choices=("id", "piece"))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class PromptConfig:
    """``lmkit generate``: the prompt (one of prompt / prompt_file)."""

    prompt: str = opt("", "start of the text")
    prompt_file: str | None = opt(None, "one prompt per line; num_samples each", metavar="F")

    def __post_init__(self):
        check_fields(self)
        if self.prompt and self.prompt_file is not None:
            raise OptionError("prompt and prompt_file are exclusive; pass one")


@dataclass(frozen=True)
class InspectConfig:
    """``lmkit inspect`` / ``LanguageModel.inspect``: a token's strongest next tokens per group."""

    token: str = opt(None, "a piece or text that is one piece", required=True)
    top: int = opt(10, "entries per group", min=1)

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class NextConfig:
    """``lmkit next`` / ``LanguageModel.top_next``: the most probable next tokens."""

    context: str = opt("", "text: the start of a sequence")
    top: int = opt(10, "how many", min=1)

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class ExportArpaConfig:
    """``lmkit export-arpa`` / ``ngram.arpa.write_arpa``: the ARPA file's words."""

    words: str = opt("ids", "ARPA words: token ids or SentencePiece pieces (readable; for "
                     "`spm_encode --output_format=piece | query` and ARPA-reading decoders)",
                     choices=("ids", "pieces"))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class ImportArpaConfig:
    """``lmkit import-arpa`` / ``ngram.arpa.import_arpa``: what the ARPA file's words are."""

    words: str = opt("auto", "ARPA words are token ids or pieces (auto: detect)",
                     choices=("auto", "ids", "pieces"))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class PruneConfig:
    """``lmkit prune`` / ``ngram.prune.prune_entropy``: entropy pruning (Stolcke 1998)."""

    threshold: float = opt(None, "prune n-grams whose removal raises perplexity by less than "
                           "this, relatively (e.g. 1e-7; inf keeps the unigrams only)", min=0.0,
                           finite=False, required=True)

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class OutputConfig:
    """How a verb prints its result."""

    json: bool = opt(False, "print JSON (one object or list) instead of text", negatable=False)

    def __post_init__(self):
        check_fields(self)


# ---- generic machinery ----------------------------------------------------------------------
def field_names(klass) -> list[str]:
    return [f.name for f in dataclasses.fields(klass)]


def reject_unknown(kwargs: dict, known) -> None:
    """Raise ``OptionError`` naming the first unknown key and its closest known one."""
    for key in kwargs:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(sorted(known))}"
        raise OptionError(f"unknown option {key!r}{hint}")


def make(klass, kwargs: dict):
    """``klass(**kwargs)`` with unknown keys refused by name (not a bare TypeError)."""
    reject_unknown({k: v for k, v in kwargs.items() if k not in field_names(klass)}, field_names(klass))
    return klass(**kwargs)


def _parse_annotation(ann: str):
    """'int | None' -> (int, False, True); 'tuple[float, ...] | None' -> (float, True, True)."""
    optional = ann.endswith("| None")
    core = ann.replace("| None", "").strip()
    seq = core.startswith("tuple[")
    if seq:
        core = core[len("tuple["):].split(",")[0].strip()
    return {"int": int, "float": float, "str": str, "bool": bool}[core], seq, optional


def field_spec(f: dataclasses.Field):
    return _parse_annotation(f.type if isinstance(f.type, str) else f.type.__name__)


def check_value(name: str, value, f: dataclasses.Field):
    """Validate one value against its field (type, finiteness, range, choices); returns it
    normalised (lists become tuples, ints given for float fields become floats)."""
    scalar, seq, optional = field_spec(f)
    meta = f.metadata
    if value is None:
        if meta.get("required"):
            raise OptionError(f"{name} is required")
        if optional:
            return None
        raise OptionError(f"{name} must not be None")
    if seq:
        if isinstance(value, (str, bytes)) or not isinstance(value, typing.Iterable):
            value = [value]  # a single value for a list option
        items = tuple(_check_scalar(f"{name}", v, scalar, meta) for v in value)
        if not items:
            raise OptionError(f"{name} needs at least one value")
        return items
    return _check_scalar(name, value, scalar, meta)


def _check_scalar(name, v, scalar, meta):
    if scalar is bool:
        if not isinstance(v, bool):
            raise OptionError(f"{name} must be true or false, got {v!r}")
        return v
    if scalar is str:
        if hasattr(v, "__fspath__"):
            v = str(v)
        if not isinstance(v, str):
            raise OptionError(f"{name} must be a string, got {type(v).__name__} {v!r}")
    elif scalar is int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise OptionError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
        v = int(v)
    elif scalar is float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise OptionError(f"{name} must be a number, got {type(v).__name__} {v!r}")
        v = float(v)
        if math.isnan(v) or (math.isinf(v) and meta.get("finite", True)):
            raise OptionError(f"{name} must be a finite number, got {v!r}")
    choices = meta.get("choices")
    if choices is not None and v not in choices:
        raise OptionError(f"{name} must be one of {', '.join(map(str, choices))}, got {v!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (v < lo or (meta.get("min_open") and v == lo)):
        op = ">" if meta.get("min_open") else ">="
        raise OptionError(f"{name} must be {op} {lo}, got {v!r}")
    if hi is not None and (v > hi or (meta.get("max_open") and v == hi)):
        op = "<" if meta.get("max_open") else "<="
        raise OptionError(f"{name} must be {op} {hi}, got {v!r}")
    return v


def check_fields(cfg) -> None:
    """Validate and normalise every field of a frozen config in place (from ``__post_init__``)."""
    for f in dataclasses.fields(cfg):
        if "help" not in f.metadata:
            continue
        object.__setattr__(cfg, f.name, check_value(f.name, getattr(cfg, f.name), f))


def check_option(klass, name: str, value):
    """``value`` checked as option ``name`` of ``klass`` (type, range, choices), normalised: for
    a library function that takes the option as a plain argument."""
    return check_value(name, value, {f.name: f for f in dataclasses.fields(klass)}[name])


def options(klass) -> list[dataclasses.Field]:
    """The user-facing fields of a config class (those with help text)."""
    return [f for f in dataclasses.fields(klass) if "help" in f.metadata and f.metadata.get("cli", True)]


#: every config class whose fields are options of a verb (the CLI's flags come from these)
VERB_CONFIGS = (*TRAIN_PARTS, EvalCorpusConfig, HeldoutCorpusConfig, LoadConfig, SampleConfig,
                ScoreConfig, InterpolateConfig, AdaptConfig, EncodeConfig, PromptConfig,
                InspectConfig, NextConfig, ExportArpaConfig, ImportArpaConfig, PruneConfig,
                OutputConfig)


def option_names() -> set[str]:
    """The name of every option of every verb (``VERB_CONFIGS``), and ``tokenizer``."""
    return {f.name for k in VERB_CONFIGS for f in options(k)} | {"tokenizer"}


__all__ = ["AdaptConfig", "CorpusConfig", "TokenizerConfig", "ModelConfig", "ScaleConfig", "GradientConfig",
           "NeuralConfig",
           "TrainConfig", "SampleConfig", "reject_unknown", "make", "InputError"]
