"""The ``lmkit`` command line: one verb per pipeline stage, flags generated from ``config.py``.

Data goes to stdout, progress and logs to stderr. A user error prints one line
``lmkit: error: <problem>; <fix>`` on stderr and exits with code 2 (no traceback).

    lmkit spm-train    (--corpus NAME | --input PATH... | --dataset NAME) --output PREFIX
    lmkit spm-encode   --model PREFIX.model [--output-format id|piece] [--input F] [--output F]
    lmkit spm-decode   --model PREFIX.model [--input-format id|piece] [--input F] [--output F]
    lmkit train        (corpus flags) --output DIR [--context 3] [--order N] [--vocab-size 4096]
    lmkit eval DIR     (corpus flags, default --corpus shakespeare --split test) [--json]
    lmkit generate DIR [--prompt TEXT | --prompt-file F] [--max-tokens 100] [--temperature 1.0]
    lmkit inspect DIR  --token TEXT [--top 10]
    lmkit export-arpa DIR OUT.arpa   (n-gram models: words are token ids, log10, KenLM-readable)
    lmkit verify DIR   (every array validated, and every file against its sha256)

``tokenizer train`` and ``tokenize encode|decode`` are the old names of the ``spm-*`` verbs;
they still work (with a note on stderr) for one release.

Every flag of ``train``, the corpus flags, the tokenizer flags and the sampling flags are made
from the fields of ``TrainConfig``, ``CorpusConfig``, ``TokenizerConfig`` and ``SampleConfig``:
``--vocab-size`` is ``vocab_size``, with the same default, range and help.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import shlex
import signal
import sys
import tempfile
import warnings
from pathlib import Path

from . import config as C
from .corpus import load_corpus, read_lines, sequences
from .errors import (InputError, LmkitError, MemoryLimitError, OptionError, OptionWarning,
                     OutputError, WorkerDiedError)
from .io import files
from .io.files import atomic_write
from .progress import reporting

# Each verb imports the modules it runs inside its function (issue 21, "Start-up" in
# docs/speed.md): `lmkit spm-encode` need not import SciPy, numba or the solvers, and `lmkit
# eval` not the builders. tests/test_startup.py pins what `import lmkit.cli` leaves out.

_TYPES = {int: int, float: float, str: str}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``lmkit: error: ...``, exit 2) instead of a usage block."""

    def error(self, message):
        self.exit(2, f"lmkit: error: {message}; see `{self.prog} --help`\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(p: argparse.ArgumentParser, klass, *, skip=()) -> None:
    """One flag per user-facing field of the config ``klass`` (type, nargs, choices, help)."""
    group = p.add_argument_group(klass.__doc__.split("\n")[0].rstrip("."))
    for f in C.options(klass):
        if f.name in skip:
            continue
        scalar, seq, _ = C.field_spec(f)
        meta = f.metadata
        text = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        shown = ("" if f.default is None or meta.get("negatable") is False
                 else f" (default: {text if text != '' else 'empty'})")
        # options not given stay absent (SUPPRESS), so the config supplies its own default and
        # can tell "given" from "defaulted" (e.g. vocab_size next to a trained tokenizer)
        kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + shown}
        if meta.get("required"):
            kw["required"] = True
        if scalar is bool:
            kw["action"] = ("store_true" if meta.get("negatable") is False
                            else argparse.BooleanOptionalAction)
        else:
            kw["type"] = _TYPES[scalar]
            if seq:
                kw["nargs"] = "+"
            if "choices" in meta:
                kw["choices"] = meta["choices"]
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
        group.add_argument(flag(f.name), **kw)


def values(a, klass) -> dict:
    """The fields of ``klass`` picked out of the parsed namespace ``a``."""
    return {f.name: getattr(a, f.name) for f in C.options(klass) if hasattr(a, f.name)}


def config_of(a, klass):
    """The config ``klass`` from the options given in ``a``, the rest its defaults (checked)."""
    return C.make(klass, values(a, klass))


# quoted values ('input', "x"), `commands` and paths (a/input/b.txt) are never flags
_VERBATIM = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|\S*/\S*")


def to_flags(message: str) -> str:
    """Parameter names in an option error become the CLI's flags (the one place that maps them):
    ``"pass vocab_size 512"`` -> ``"pass --vocab-size 512"``, outside quotes and paths."""
    names = C.option_names()

    def words(text: str) -> str:
        return re.sub(r"(?<![\w-])([a-z][a-z_0-9]*)(?![\w-])",
                      lambda m: flag(m.group(1)) if m.group(1) in names else m.group(1), text)

    out, end = [], 0
    for m in _VERBATIM.finditer(message):
        out += [words(message[end:m.start()]), m.group()]
        end = m.end()
    return "".join(out) + words(message[end:])


#: errors whose messages name options by parameter name (errors.OptionError); shown as flags
OPTION_ERRORS = (OptionError, MemoryLimitError, WorkerDiedError, OutputError)


# ---- the parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="lmkit", description="Train softmax language models without "
                "backpropagation: count, then solve.")
    sub = ap.add_subparsers(dest="verb", required=True, parser_class=Parser)
    _tokenizer_verbs(sub)
    _model_verbs(sub)
    _companion_verbs(sub)
    return ap


def _tokenizer_verbs(sub) -> None:
    """spm-train, spm-encode, spm-decode, and their old names (kept for one release)."""
    _spm_train_args(sub.add_parser("spm-train", help="train a SentencePiece tokenizer on the "
                                   "train split"))
    for action in ("encode", "decode"):
        _tokenize_args(sub.add_parser(f"spm-{action}", help=f"{action} text, one line in, one line out"),
                       action)
    tk = sub.add_parser("tokenizer", help="old name of spm-train")
    _spm_train_args(tk.add_subparsers(dest="action", required=True, parser_class=Parser)
                    .add_parser("train", help="= spm-train"))
    tz = sub.add_parser("tokenize", help="old name of spm-encode / spm-decode")
    tz_sub = tz.add_subparsers(dest="action", required=True, parser_class=Parser)
    for action in ("encode", "decode"):
        _tokenize_args(tz_sub.add_parser(action, help=f"= spm-{action}"), action)


def _model_verbs(sub) -> None:
    """train, and what a model does: eval, generate, inspect, next, vocab, verify."""
    tr = sub.add_parser("train", help="train a language model (count, then solve)")
    tr.add_argument("--output", required=True, metavar="DIR", help="model folder to write")
    tr.add_argument("--tokenizer", metavar="PREFIX.model",
                    help="use this tokenizer instead of training one")
    for klass in C.TRAIN_PARTS:
        add_options(tr, klass)

    ev = _model_verb(sub, "eval", "perplexity and bits per byte on held-out text")
    for klass in (C.EvalCorpusConfig, C.AdaptConfig, C.LoadConfig, C.OutputConfig):
        add_options(ev, klass)
    ge = _model_verb(sub, "generate", "sample text")
    for klass in (C.PromptConfig, C.SampleConfig, C.LoadConfig, C.OutputConfig):
        add_options(ge, klass)
    ins = _model_verb(sub, "inspect", "strongest next tokens of a token, per feature group")
    for klass in (C.InspectConfig, C.OutputConfig):
        add_options(ins, klass)
    nx = _model_verb(sub, "next", "the most probable next tokens after a context")
    for klass in (C.NextConfig, C.OutputConfig, C.LoadConfig):
        add_options(nx, klass)
    add_options(_model_verb(sub, "vocab", "the model's pieces: id, piece (one per line)"),
                C.OutputConfig)
    _model_verb(sub, "verify", "check a model folder's files against the sha256s in its "
                "manifest (loading validates every array but skips this hash)")


def _model_verb(sub, name: str, text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text)
    p.add_argument("model", metavar="DIR")
    return p


def _companion_verbs(sub) -> None:
    """The KenLM companion: scoring at scale, ARPA in and out, mixing, pruning."""
    ea = _model_verb(sub, "export-arpa", "write an n-gram model (--order N) as an ARPA file")
    ea.add_argument("output", metavar="OUT.arpa")
    add_options(ea, C.ExportArpaConfig)

    sc = _model_verb(sub, "score", "per-line or per-document scores as JSON Lines")
    sc.add_argument("--output", required=True, metavar="F.jsonl", help="results, one JSON object per unit")
    add_options(sc, C.ScoreConfig)
    add_options(sc, C.AdaptConfig, skip=("cache_fit",))

    ia = sub.add_parser("import-arpa", help="an ARPA back-off model (lmplz, SRILM) as an lmkit model")
    ia.add_argument("arpa", metavar="FILE.arpa")
    ia.add_argument("--tokenizer", required=True, metavar="TOK.model",
                    help="the tokenizer whose pieces or ids are the ARPA's words (or a model folder)")
    add_options(ia, C.ImportArpaConfig)
    ia.add_argument("--output", required=True, metavar="DIR")

    ip = sub.add_parser("interpolate", help="mix models that share a tokenizer")
    ip.add_argument("models", nargs="+", metavar="DIR")
    ip.add_argument("--output", required=True, metavar="DIR")
    add_options(ip, C.InterpolateConfig)
    add_options(ip, C.HeldoutCorpusConfig)

    pr = _model_verb(sub, "prune", "entropy-prune an n-gram model (Stolcke 1998)")
    add_options(pr, C.PruneConfig)
    pr.add_argument("--output", required=True, metavar="DIR")


def _spm_train_args(p) -> None:
    add_options(p, C.CorpusConfig)
    add_options(p, C.TokenizerConfig)
    p.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.vocab")


def _tokenize_args(t, action: str) -> None:
    t.add_argument("--model", required=True, metavar="PREFIX.model",
                   help="a tokenizer .model file or a model folder")
    add_options(t, C.EncodeConfig, skip=("input_format",) if action == "encode" else ("output_format",))
    t.add_argument("--input", help="input file (default: stdin)")
    t.add_argument("--output", help="output file (default: stdout)")


# ---- outputs: checked before the work, never one of the inputs --------------------------------
def _inputs(a) -> tuple[list, list]:
    """``(files or text folders, model folders)`` the verb of ``a`` reads: every output is
    checked against them (``io.files.check_not_input``). stdin counts when no input is given."""
    paths, models = [], list(getattr(a, "models", None) or [])
    given = getattr(a, "input", None)
    paths += [given] if isinstance(given, str) else list(given or [])
    if getattr(a, "verb", "") in ("spm-encode", "spm-decode", "tokenize") and given is None:
        paths.append("/dev/stdin")  # `spm-encode --output F < F`
    for name in ("dataset", "arpa", "prompt_file"):
        if getattr(a, name, None):
            paths.append(getattr(a, name))
    for name in ("model", "tokenizer"):  # a model folder, or a tokenizer file
        p = getattr(a, name, None)
        if p:
            (models if Path(p).is_dir() else paths).append(p)
    return paths, models


def check_output(a, path=None, *, folder: bool = False) -> Path:
    """``io.files.check_output_writable`` of ``path`` (default ``a.output``) against every input
    of the verb: one check, before any work, for every verb that writes."""
    from .io import store
    paths, models = _inputs(a)
    return files.check_output_writable(a.output if path is None else path, folder=folder,
                                       is_ours=store.is_model_folder if folder else None,
                                       inputs=paths, models=models)


def _say(text: str, output) -> None:
    """The verb's summary line: on stdout, or on stderr when the output itself is stdout
    (``--output /dev/stdout``), so that the data stays data."""
    print(text, file=sys.stderr if files.same_as_stdout(output) else sys.stdout)


# ---- verbs ----------------------------------------------------------------------------------
def cmd_spm_train(a) -> None:
    from .tokenizer import Tokenizer
    src = C.make(C.CorpusConfig, values(a, C.CorpusConfig))
    opts = C.make(C.TokenizerConfig, values(a, C.TokenizerConfig))
    for suffix in (".model", ".vocab"):  # fail before training, not after
        check_output(a, a.output + suffix)
    lines = load_corpus(**dataclasses.asdict(src)).check_nonempty()
    tok = Tokenizer.train(lines, **dataclasses.asdict(opts))
    path = tok.save(a.output)
    print(f"wrote {path} (vocab {tok.vocab_size}, {opts.model_type}, sha256 {tok.sha256[:12]})")


def _load_tokenizer(path: str):
    from .tokenizer import Tokenizer
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.model"
    return Tokenizer.load(p)


def _write_output(a, text: str) -> None:
    """Write to stdout, or to ``a.output`` via ``io.files.atomic_write`` (never half-written)."""
    if a.output is None:
        sys.stdout.write(text)
        return
    paths, models = _inputs(a)
    atomic_write(a.output, text, inputs=paths, models=models)


_ASCII_ID = re.compile(r"[0-9]+")


def cmd_tokenize(a) -> None:
    if a.output is not None:
        check_output(a)
    tok = _load_tokenizer(a.model)
    fmt = config_of(a, C.EncodeConfig)
    out = []
    name = a.input or "stdin"
    # encode reads text by the one line rule (a line per sequence); decode reads ids/pieces,
    # one output text per input line, an empty line decoding to the empty text
    for line in (sequences(read_lines(a.input), name) if a.action == "encode"
                 else (x.removesuffix("\n") for x in read_lines(a.input))):
        if a.action == "encode":
            items = tok.encode_pieces(line) if fmt.output_format == "piece" else map(str, tok.encode(line))
            out.append(" ".join(items))
        elif fmt.input_format == "piece":
            out.append(tok.decode_pieces(line.split()))
        else:
            items = line.split()
            if not all(_ASCII_ID.fullmatch(x) for x in items):  # not "1_000", "٣٤٥" or "５００"
                raise InputError(f"not a list of integer ids: {line[:60]!r}; ids are ASCII "
                                 "digits 0-9 separated by spaces, pass --input-format piece "
                                 "for pieces")
            ids = [int(x) for x in items]
            out.append(tok.decode(ids))
    _write_output(a, "".join(x + "\n" for x in out))


def cmd_train(a) -> None:
    from .train import describe_build, train
    skip = {"verb", "output", "argv", "action"}
    cfg = C.TrainConfig.from_kwargs(**{k: v for k, v in vars(a).items() if k not in skip})
    check_output(a, folder=True)  # fail before training, not after
    model = train(cfg)
    path = model.save(a.output, command="lmkit " + " ".join(shlex.quote(x) for x in a.argv))
    print(f"wrote {path}: {describe_build(model)}")


def _load_options(a) -> dict:
    """``LoadConfig`` fields given on the command line (checked), for ``load_model``."""
    return dataclasses.asdict(C.make(C.LoadConfig, values(a, C.LoadConfig)))


def cmd_eval(a) -> None:
    from .evaluate import evaluate
    from .load import load as load_model
    src = config_of(a, C.EvalCorpusConfig)
    ad = C.make(C.AdaptConfig, values(a, C.AdaptConfig))  # refuse bad options before loading
    adapt = {k: getattr(ad, k) for k in values(a, C.AdaptConfig)}
    r = evaluate(load_model(a.model, **_load_options(a)), **dataclasses.asdict(src), **adapt)
    if config_of(a, C.OutputConfig).json:
        print(json.dumps(r))
    else:
        if "adapt" in r:  # imported only then: adapt imports counts
            from .adapt import describe as describe_adapt
        print(f"sequences {r['sequences']}  tokens {r['tokens']}  bytes {r['bytes']}  "
              f"nll_nats {r['nll_nats']:.1f}  perplexity {r['perplexity']:.3f}  "
              f"bits_per_byte {r['bits_per_byte']:.4f}"
              + (f"  ({describe_adapt(r['adapt'])})" if "adapt" in r else ""))


def _text_arg(value, flag: str):
    """A text option as given on the command line: argv bytes that are not UTF-8 reach Python
    as lone surrogates (PEP 383); say so in the flag's terms instead of passing them on."""
    if value is None:
        return value
    for i, ch in enumerate(value):
        if "\udc80" <= ch <= "\udcff":
            raise InputError(f"{flag}: byte 0x{ord(ch) - 0xDC00:02x} at character {i} is not "
                             "UTF-8 text; pass the text in UTF-8")
    return value


def cmd_generate(a) -> None:
    from .load import load as load_model
    opts = config_of(a, C.SampleConfig)  # refuse bad values before loading
    given = config_of(a, C.PromptConfig)
    prompts = (list(sequences(read_lines(given.prompt_file), given.prompt_file))
               if given.prompt_file else [_text_arg(given.prompt, "--prompt")])
    model = load_model(a.model, **_load_options(a))
    samples = [s for p in prompts for s in model.sample(p, **dataclasses.asdict(opts))]
    print(json.dumps(samples) if config_of(a, C.OutputConfig).json else "\n".join(samples))


def cmd_export_arpa(a) -> None:
    from .model import LanguageModel
    from .ngram.arpa import write_arpa
    check_output(a)
    words = config_of(a, C.ExportArpaConfig).words
    sizes = write_arpa(LanguageModel.load(a.model), a.output, words=words)
    _say(f"wrote {a.output}: " + ", ".join(f"{v} {k}" for k, v in sizes.items())
         + ("; words are token ids (<unk> <s> </s> for the specials)" if words == "ids"
            else "; words are SentencePiece pieces"), a.output)


def _command(a) -> str:
    return "lmkit " + " ".join(shlex.quote(x) for x in a.argv)


def cmd_score(a) -> None:
    # scoring runs no BLAS, and OpenBLAS's helper threads spin for a while once numpy loads it
    # (~0.04 CPU s of a fresh `lmkit score`, docs/speed.md "A fresh `lmkit score` against a
    # fresh KenLM process"): one thread, unless the user set it; numpy is not loaded yet
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .docscore import score_file
    check_output(a)
    opts = values(a, C.ScoreConfig)
    r = score_file(a.model, a.output, **opts, **values(a, C.AdaptConfig))
    unit = opts.get("unit", "line")
    _say(f"wrote {a.output}: {r['units']} {unit}s, {r['tokens']} tokens in {r['seconds']:.1f}s "
          f"({r['units_per_s']:.0f} {unit}s/s, {r['tokens_per_s']:.0f} tokens/s); "
          f"perplexity {r['perplexity']:.3f}", a.output)


def cmd_import_arpa(a) -> None:
    from .ngram.arpa import import_arpa
    check_output(a, folder=True)
    words = config_of(a, C.ImportArpaConfig).words
    model, report = import_arpa(a.arpa, _load_tokenizer(a.tokenizer), words=words)
    path = model.save(a.output, command=_command(a))
    print(f"wrote {path}: {model.describe()}; n-grams {report['ngrams']}, "
          f"max |log10 gamma - log10 bo| {report['max_backoff_error_log10']:.2g}"
          + (f", {report['missing_pieces']} pieces not in the ARPA share p(<unk>)"
             if report["missing_pieces"] else ""))


def cmd_interpolate(a) -> None:
    from .interpolate import interpolate
    from .load import load as load_model
    from .train import heldout_lines
    check_output(a, folder=True)
    opts = C.make(C.InterpolateConfig, values(a, C.InterpolateConfig))
    src = config_of(a, C.HeldoutCorpusConfig)
    models = [load_model(m) for m in a.models]
    held = []
    if opts.weights is None or opts.method == "loglinear":
        held = heldout_lines(load_corpus(**dataclasses.asdict(src)), opts.heldout_tokens,
                             models[0].tokenizer)
    model = interpolate(models, held, method=opts.method,
                        weights="auto" if opts.weights is None else list(opts.weights))
    path = model.save(a.output, command=_command(a))
    print(f"wrote {path}: {model.describe()}")


def cmd_prune(a) -> None:
    from .model import LanguageModel
    from .ngram.prune import n_ngrams, prune_entropy
    check_output(a, folder=True)
    threshold = config_of(a, C.PruneConfig).threshold
    model = LanguageModel.load(a.model)
    pruned = prune_entropy(model, threshold)
    path = pruned.save(a.output, command=_command(a))
    print(f"wrote {path}: {n_ngrams(model)} -> {n_ngrams(pruned)} n-grams "
          f"(per order {[model.vocab_size] + pruned.params.info['ngrams_after']})")


def cmd_next(a) -> None:
    from .load import load as load_model
    context = _text_arg(getattr(a, "context", C.NextConfig.context), "--context")
    model = load_model(a.model, **_load_options(a))
    nxt = config_of(a, C.NextConfig)  # after loading: a missing model folder is named first
    top = model.top_next(context, nxt.top)
    if config_of(a, C.OutputConfig).json:
        print(json.dumps(top))
    else:
        print("\n".join(f"{p:.6f}\t{piece}" for piece, p in top))


def cmd_vocab(a) -> None:
    from .load import load as load_model
    vocab = load_model(a.model).vocab
    print(json.dumps(vocab) if config_of(a, C.OutputConfig).json
          else "\n".join(f"{i}\t{p}" for i, p in enumerate(vocab)))


def cmd_verify(a) -> None:
    from .model import LanguageModel
    sums = LanguageModel.verify(a.model)
    print(f"{a.model}: ok (" + ", ".join(f"{k} sha256 {v[:12]}" for k, v in sums.items()) + ")")


def cmd_inspect(a) -> None:
    from .model import LanguageModel
    token = _text_arg(a.token, "--token")
    model = LanguageModel.load(a.model)
    res = model.inspect(token, top=config_of(a, C.InspectConfig).top)  # checked after loading
    if config_of(a, C.OutputConfig).json:
        print(json.dumps(res))
        return
    for group, items in res.items():
        print(f"{group}: " + "  ".join(f"{p!r} {w:.2f}" for p, w in items))


def cmd_old_tokenizer(a) -> None:
    new = {"tokenizer": "spm-train", "tokenize": f"spm-{a.action}"}[a.verb]
    print(f"lmkit: note: `{a.verb} {a.action}` is now `{new}`; the old name goes in the next "
          "release", file=sys.stderr)
    (cmd_spm_train if a.verb == "tokenizer" else cmd_tokenize)(a)


def _spm_verb(action: str):
    def run(a):
        a.action = action
        cmd_tokenize(a)
    return run


VERBS = {"spm-train": cmd_spm_train, "spm-encode": _spm_verb("encode"),
         "spm-decode": _spm_verb("decode"), "tokenizer": cmd_old_tokenizer,
         "tokenize": cmd_old_tokenizer, "train": cmd_train, "eval": cmd_eval,
         "generate": cmd_generate, "inspect": cmd_inspect, "export-arpa": cmd_export_arpa,
         "score": cmd_score, "import-arpa": cmd_import_arpa, "interpolate": cmd_interpolate,
         "prune": cmd_prune, "next": cmd_next, "vocab": cmd_vocab, "verify": cmd_verify}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` clean-up runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = to_flags(str(message)) if issubclass(category, OptionWarning) else message
    print(f"lmkit: warning: {text}", file=sys.stderr)


def _no_hugepage_advice() -> None:
    """For ``lmkit train``: stop numpy advising transparent huge pages for this process's
    arrays (unless the user set ``NUMPY_MADVISE_HUGEPAGE``). Training allocates and frees large
    arrays in quick succession; where the kernel compacts memory on faults of advised pages
    (THP ``defrag = madvise``, a common default) that doubled its system CPU time (2.6 -> 1.3 s
    of 15 on the Vim docs, docs/quality.md) with no gain in user time. Scoring is the other
    way round (huge pages halve its system time), so other verbs keep numpy's default.
    Returns the call that restores the previous setting (``main`` runs it when the verb ends,
    so in-process callers keep theirs)."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return lambda: None
    import numpy as np
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:
        return lambda: None
    before = setter(False)
    return lambda: setter(before)


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full disk


def _os_error_line(e: OSError, args) -> str:
    """One line for a file-system error that no check turned into an ``LmkitError``. A full
    disk met by a temporary file of ``train`` (its spill and bucket files: numpy reports only
    "N requested and M written", with no path) names the temporary folder and the fix."""
    name = e.filename2 if getattr(e, "filename2", None) is not None else e.filename
    if name is None and getattr(args, "verb", None) == "train" and (
            e.errno in (errno.ENOSPC, errno.EDQUOT) or _SHORT_WRITE.search(str(e))):
        tmp = getattr(args, "spill_dir", None) or tempfile.gettempdir()
        return (f"{tmp}: a temporary file could not be written ({e.strerror or e}: the file "
                "system is full); free space there, or pass --spill-dir (or set TMPDIR to) a "
                "folder with more room")
    where = f"{name}: " if name is not None else ""
    return f"{where}{e.strerror or e}"


def main(argv=None) -> int:
    warnings.showwarning = _one_line_warning  # library warnings: one line, no source excerpt
    argv = sys.argv[1:] if argv is None else [str(x) for x in argv]
    args = build_parser().parse_args(argv)
    restore_pages = _no_hugepage_advice() if args.verb == "train" else (lambda: None)
    args.argv = argv  # the manifest records the command as given, also for in-process calls
    try:  # only the main thread may set handlers (in-process callers may be elsewhere)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        previous = None
    try:
        with reporting(getattr(args, "verbose", True)):
            VERBS[args.verb](args)
    except OPTION_ERRORS as e:
        print(f"lmkit: error: {to_flags(str(e))}", file=sys.stderr)
        return 2
    except LmkitError as e:
        print(f"lmkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmkit: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("lmkit: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # e.g. `lmkit spm-encode | head`
        try:  # stdout is gone: stop the interpreter's final flush from failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except OSError as e:  # a file-system error no check caught: one line, not a traceback
        print(f"lmkit: error: {_os_error_line(e, args)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("lmkit: error: out of memory; lower --max-memory, --vocab-size or --context",
              file=sys.stderr)
        return 2
    finally:
        restore_pages()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
