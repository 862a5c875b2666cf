"""Options have one home: config dataclasses validate values, refuse unknown keys, make the CLI."""
import pytest

from lmkit import config as C
from lmkit.cli import build_parser, config_of, flag, main
from lmkit.errors import InputError, OptionError


@pytest.mark.parametrize("kw, match", [
    (dict(contxt=1), r"unknown option 'contxt'; did you mean 'context'\?"),
    (dict(lamdas=[1.0]), r"unknown option 'lamdas'; did you mean 'lambdas'\?"),
    (dict(context="3"), r"context must be an integer, got str '3'"),
    (dict(vocab_size="512"), r"vocab_size must be an integer, got str '512'"),
    (dict(vocab_size=12.5), r"vocab_size must be an integer, got float 12.5"),
    (dict(lambdas=[1, float("nan"), 1]), r"lambdas must be a finite number, got nan"),
    (dict(lambdas=[1, 1]), r"lambdas needs 7 values \(one per feature group\), got 2"),
    (dict(context=3, lambdas=[1, 1]), r"lambdas needs 3 values \(one per feature group\), got 2"),
    (dict(lambda_tokens=-5), r"lambda_tokens must be >= 1, got -5"),
    (dict(order=3, prune=[0, 0, 1, 1]), r"prune has 4 values but an order-3 model has 3 orders"),
    (dict(context=2, prune=[0, 1]), r"prune \[0, 1\] needs n-gram groups; add order"),
    (dict(scheduler="tcp://x:1"), r"scheduler needs engine dask"),
    (dict(max_memory="lots"), r"lots"),
    (dict(corpus="shakespeare", input=["a.txt"]), r"corpus and input are exclusive"),
    (dict(solver="warm", init="zeros"), r"solver warm starts from the explicit solution"),
    (dict(discount=[0.0]), r"discount must be > 0.0, got 0.0"),
    # gradient options the chosen solver never reads are refused, not ignored
    (dict(lr=0.1), r"lr is for solver gradient or warm \(and the neural solvers\), not solver "
                   r"explicit; drop it, or pass solver gradient"),
    (dict(max_seconds=5), r"max_seconds is for solver gradient or warm .* not solver explicit"),
    (dict(epochs=3), r"epochs is for solver gradient or warm, not solver explicit"),
    (dict(solver="transformer", max_seconds=5, batch_size=8),
     r"batch_size is for solver gradient or warm, not solver transformer; drop it"),
    (dict(solver="residual", max_seconds=5, valid_tokens=100),
     r"valid_tokens is for solver gradient or warm, not solver residual"),
])
def test_train_options_fail_fast_naming_the_parameter(kw, match):
    with pytest.raises(InputError, match=match):
        C.TrainConfig.from_kwargs(**kw)


def test_every_gradient_option_is_read_by_the_solver_it_is_given_to():
    """Each solver accepts exactly the gradient fields it reads: the defaults of the others are
    accepted (nothing given), and the fields it reads take a non-default value."""
    read = {"gradient": C.GRADIENT_ONLY + ("max_seconds", "lr"), "warm": C.GRADIENT_ONLY +
            ("max_seconds", "lr"), "transformer": ("max_seconds", "lr"),
            "residual": ("max_seconds", "lr"), "explicit": ()}
    other = {"epochs": 3, "batch_size": 8, "optimizer": "sgd", "patience": 5, "l2": 0.1,
             "lr_decay": 0.5, "eval_every": 7, "valid_tokens": 99, "random_scale": 0.5,
             "max_seconds": 5.0, "lr": 0.01}
    for solver, fields in read.items():
        need = {"max_seconds": 5.0} if solver in C.NEURAL_SOLVERS else {}
        for k, v in other.items():
            kw = {"solver": solver, **need, k: v}
            if k in fields:
                C.GradientConfig(**kw)
            else:
                with pytest.raises(InputError, match=rf"{k} is for solver gradient or warm"):
                    C.GradientConfig(**kw)


def test_option_errors_are_value_and_type_errors():
    with pytest.raises(ValueError):
        C.TrainConfig.from_kwargs(context=-1)
    with pytest.raises(TypeError):
        C.TrainConfig.from_kwargs(context="3")


def test_train_refuses_typos_before_any_work(tmp_path):
    import lmkit
    with pytest.raises(OptionError, match="did you mean 'context'"):
        lmkit.train(input=[str(tmp_path / "missing.txt")], contxt=1)


def test_defaults_are_defined_once_and_shared_by_the_cli():
    """Every config field is a flag; flags not given are absent, so the config's default applies."""
    p = build_parser()
    a = p.parse_args(["train", "--output", "x"])
    assert set(vars(a)) == {"verb", "output", "tokenizer"}
    assert C.TrainConfig.from_kwargs(**{k: v for k, v in vars(a).items() if k not in ("verb", "output")}) \
        == C.TrainConfig()
    names = set(vars(p.parse_args(["train", "--output", "x"] + [
        arg for f in [f for k in C.TRAIN_PARTS for f in C.options(k)]
        for arg in _example(f)])))
    assert set(C.train_option_names()) <= names
    g = p.parse_args(["generate", "m", "--temperature", "0.5"])
    assert g.temperature == 0.5 and not hasattr(g, "top_p")
    assert config_of(p.parse_args(["eval", "m"]), C.EvalCorpusConfig).split == "test"  # per verb


# paths named on the command line: where a verb reads and writes, not options of the work
IO_FLAGS = {"output", "input", "model", "tokenizer"}


def _subparsers(parser, prefix=()):
    """``(verb words, parser)`` of every verb, old names and their actions included."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_every_cli_option_is_a_config_field_with_its_default():
    """Each flag of each verb is made from a config field (``config.VERB_CONFIGS``), shows that
    field's default in its help, and leaves the default to the config (argparse.SUPPRESS)."""
    import argparse
    fields = {}
    for klass in C.VERB_CONFIGS:
        for f in C.options(klass):
            fields.setdefault(f.name, []).append(f)
    checked = 0
    for verb, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.dest in {"help"} | IO_FLAGS:
                continue
            where = f"{' '.join(verb)} {action.option_strings[0]}"
            assert action.option_strings[0] == flag(action.dest), where
            assert action.dest in fields, f"{where}: not a field of config.VERB_CONFIGS"
            assert action.default is argparse.SUPPRESS, f"{where}: a default of the CLI's own"
            assert any(action.help == f.metadata["help"] + _shown(f) for f in fields[action.dest]), \
                f"{where}: help or default is not a config field's: {action.help!r}"
            checked += 1
    assert checked > 100  # every verb's options were seen


def _shown(f) -> str:
    """How a field's default reads at the end of its flag's help."""
    if f.default is None or f.metadata.get("negatable") is False:
        return ""
    text = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    return f" (default: {text if text != '' else 'empty'})"


def test_cli_defaults_are_the_config_defaults():
    """With no option given, every config a verb reads is its class's default."""
    p = build_parser()
    for argv, klasses in [(["eval", "m"], (C.EvalCorpusConfig, C.AdaptConfig, C.OutputConfig)),
                          (["generate", "m"], (C.PromptConfig, C.SampleConfig)),
                          (["next", "m"], (C.NextConfig, C.OutputConfig, C.LoadConfig)),
                          (["export-arpa", "m", "o"], (C.ExportArpaConfig,)),
                          (["import-arpa", "a", "--tokenizer", "t", "--output", "o"],
                           (C.ImportArpaConfig,)),
                          (["spm-encode", "--model", "t"], (C.EncodeConfig,)),
                          (["interpolate", "a", "--output", "o"], (C.HeldoutCorpusConfig,
                                                                   C.InterpolateConfig))]:
        a = p.parse_args(argv)
        for klass in klasses:
            assert config_of(a, klass) == klass(), (argv, klass)
    a = p.parse_args(["inspect", "m", "--token", "x"])
    assert config_of(a, C.InspectConfig) == C.InspectConfig(token="x")
    assert config_of(p.parse_args(["prune", "m", "--threshold", "0", "--output", "o"]),
                     C.PruneConfig).threshold == 0.0


def _example(f):
    """Command-line words that set field ``f`` to some valid value."""
    scalar, seq, _ = C.field_spec(f)
    if scalar is bool:
        return [flag(f.name)]
    value = {int: "1", float: "0.5", str: "x"}[scalar]
    if "choices" in f.metadata:
        value = str(f.metadata["choices"][0])
    return [flag(f.name), value]


def test_a_trained_tokenizer_and_tokenizer_options_clash():
    with pytest.raises(OptionError, match="vocab_size applies to training a SentencePiece model, but tokenizer t.model"):
        C.TrainConfig.from_kwargs(tokenizer="t.model", vocab_size=512)
    assert C.TrainConfig.from_kwargs(tokenizer="t.model").tokenizer == "t.model"


def test_flat_config_round_trips():
    cfg = C.TrainConfig.from_kwargs(context=2, order=4, prune=[0, 1], solver="gradient", lr=1e-3,
                                    input="a.txt")
    flat = cfg.flat()
    assert flat["input"] == ["a.txt"] and flat["prune"] == [0, 1]
    assert C.TrainConfig.from_kwargs(**flat) == cfg


@pytest.mark.parametrize("argv, match", [
    (["train", "--output", "x", "--vocab-size", "12.5"], r"argument --vocab-size: invalid int value: '12.5'"),
    (["train", "--output", "x", "--contxt", "1"], r"unrecognized arguments: --contxt 1"),
    (["train", "--output", "x", "--lambdas", "1", "nan", "0.5"], r"--lambdas must be a finite number, got nan"),
    (["train", "--output", "x", "--order", "3", "--prune", "0", "0", "1", "1"], r"--prune has 4 values"),
    (["train", "--output", "x", "--scheduler", "tcp://h:1"], r"--scheduler needs --engine dask"),
    (["train", "--output", "x", "--lambda-tokens", "-5"], r"--lambda-tokens must be >= 1, got -5"),
    (["train", "--output", "x", "--tokenizer", "t.model", "--vocab-size", "512"],
     r"--vocab-size applies to training a SentencePiece model, but --tokenizer t.model is given"),
    (["inspect", "m", "--token", "a", "--top", "-1"], r"m: no such model folder"),
])
def test_cli_errors_are_one_line(capsys, argv, match):
    import re
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmkit: error: ") and re.search(match, err[0]), err


def test_old_tokenizer_verbs_still_work_with_a_note(tmp_path, tiny_tok_file, capsys):
    src = tmp_path / "in.txt"
    src.write_text("The king\n", encoding="utf-8")
    assert main(["spm-encode", "--model", tiny_tok_file, "--input", src]) == 0
    new = capsys.readouterr()
    assert main(["tokenize", "encode", "--model", tiny_tok_file, "--input", src]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and "is now `spm-encode`" in old.err


def _cli_flags() -> set:
    """Every flag of every verb of the CLI (``--vocab-size``, ``--output``, ...)."""
    return {s for _, p in _subparsers(build_parser()) for a in p._actions
            for s in a.option_strings if s.startswith("--") and s != "--help"}


def _message_strings(tree, only_raises: bool):
    """The string constants of a module that can reach a user: not docstrings; with
    ``only_raises``, only those inside ``raise`` statements."""
    import ast
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    roots = [n for n in ast.walk(tree) if isinstance(n, ast.Raise)] if only_raises else [tree]
    for root in roots:
        for n in ast.walk(root):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
                yield n.lineno, n.value


def test_library_messages_name_parameters_not_flags():
    """Library errors, warnings and logs name parameters (``vocab_size``), never a CLI flag
    (``--vocab-size``): the Python API has no flags; the CLI maps names to flags (to_flags).
    A whole command in backticks (```lmkit train --output DIR```) may name its flags.
    config.py is read for its errors only (its help texts are the CLI's)."""
    import ast
    import re
    from pathlib import Path
    flags = _cli_flags()
    assert {"--vocab-size", "--top", "--words", "--output"} <= flags
    root = Path(C.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "cli.py" and path.parent == root:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for lineno, text in _message_strings(tree, only_raises=path.name == "config.py"):
            # a whole command to run (`lmkit train --output DIR`) is a command, not a parameter
            text = re.sub(r"`lmkit [^`]*(`|$)", "", text)
            for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w=-])", text):
                if f in flags:
                    found.append(f"{path.relative_to(root.parent)}:{lineno}: {f} in {text[:60]!r}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("message, shown", [
    ("pass vocab_size 512 or more", "pass --vocab-size 512 or more"),
    ("discount for order needs 1 or 3 values", "--discount for --order needs 1 or 3 values"),
    ("token 'order' is 2 pieces ['▁or', 'der']", "--token 'order' is 2 pieces ['▁or', 'der']"),
    ("/data/input/a.txt: no such file", "/data/input/a.txt: no such file"),
    ("see `lmkit train` with solver warm", "see `lmkit train` with --solver warm"),
    ("raise max_memory, or use a smaller vocab_size or context",
     "raise --max-memory, or use a smaller --vocab-size or --context"),
])
def test_to_flags_maps_parameter_names_outside_quotes_and_paths(message, shown):
    from lmkit.cli import to_flags
    assert to_flags(message) == shown


def test_library_option_errors_reach_the_cli_as_flags(tiny_model_dir, tmp_path, capsys):
    """An OptionError raised deep in the library (docscore) names parameters; the CLI prints
    the same message with its flags."""
    text = tmp_path / "t.txt"
    text.write_text("the king\n", encoding="utf-8")
    code = main(["score", str(tiny_model_dir), "--input", str(text), "--output",
                 str(tmp_path / "o.jsonl"), "--adapt", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "pass --workers 1" in err and "--adapt scores the units" in err, err
    from lmkit.docscore import score_file
    with pytest.raises(OptionError, match="pass workers 1"):
        score_file(str(tiny_model_dir), str(tmp_path / "o.jsonl"), input=[str(text)], adapt=True,
                   workers=2)


def test_public_api_defaults_are_the_config_defaults():
    """The Python API's keyword defaults are the config's (read from it, not repeated)."""
    import importlib
    import inspect
    corpus, evaluate, gradient, interpolate, load, model, tokenizer, arpa = (
        importlib.import_module(f"lmkit.{m}") for m in ("corpus", "evaluate", "gradient",
                                                         "interpolate", "load", "model",
                                                         "tokenizer", "ngram.arpa"))
    cases = [(tokenizer.Tokenizer.train, C.TokenizerConfig, ("vocab_size", "model_type", "seed",
                                                             "input_sentence_size")),
             (gradient.fit_dense, C.GradientConfig, ("epochs", "batch_size", "optimizer",
                                                     "patience", "l2", "lr_decay", "eval_every")),
             (gradient.init_params, C.GradientConfig, ("random_scale",)),
             (corpus.load_corpus, C.CorpusConfig, ("split", "text_field", "streaming")),
             (evaluate.evaluate, C.EvalCorpusConfig, ("split",)),
             (interpolate.interpolate, C.InterpolateConfig, ("method",)),
             (load.load, C.LoadConfig, ("mmap",)),
             (model.LanguageModel.load, C.LoadConfig, ("mmap",)),
             (model.LanguageModel.inspect, C.InspectConfig, ("top",)),
             (model.LanguageModel.top_next, C.NextConfig, ("context",)),
             (model.LanguageModel.sample, C.PromptConfig, ("prompt",)),
             (arpa.write_arpa, C.ExportArpaConfig, ("words",)),
             (arpa.import_arpa, C.ImportArpaConfig, ("words",))]
    for func, klass, names in cases:
        params = inspect.signature(func).parameters
        for name in names:
            assert params[name].default == getattr(klass(**({"token": "x"} if klass is
                                                            C.InspectConfig else {})), name), \
                (func.__qualname__, name)
    assert inspect.signature(model.LanguageModel.top_next).parameters["k"].default == C.NextConfig.top
    assert inspect.signature(gradient.fit_dense).parameters["lr"].default == C.DEFAULT_LR["gradient"]
    assert inspect.signature(gradient.fit_dense).parameters["seed"].default == C.TokenizerConfig.seed


def test_the_rich_models_order_grows_with_the_training_tokens():
    """ModelConfig.rich_order: 5 below 4M tokens, one more at 4M and per doubling after, at
    most 7 (docs/scale.md, "Quality at scale"); exact at the boundaries."""
    M = C.ModelConfig
    assert (M.DEFAULT_ORDER, M.RICH_ORDER_TOKENS, M.RICH_MAX_ORDER) == (5, 4_000_000, 7)
    got = {n: M.rich_order(n) for n in (0, 1, 1_370_000, 3_999_999, 4_000_000, 7_999_999,
                                        8_000_000, 15_999_999, 16_000_000, 18_857_333,
                                        10**9)}
    assert got == {0: 5, 1: 5, 1_370_000: 5, 3_999_999: 5, 4_000_000: 6, 7_999_999: 6,
                   8_000_000: 7, 15_999_999: 7, 16_000_000: 7, 18_857_333: 7, 10**9: 7}
