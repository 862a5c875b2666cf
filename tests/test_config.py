"""Options have one home: config dataclasses validate values, refuse unknown keys, make the CLI."""
import dataclasses

import pytest

from lmkit import config as C
from lmkit.cli import build_parser, main
from lmkit.errors import InputError, OptionError


@pytest.mark.parametrize("kw, match", [
    (dict(contxt=1), r"unknown option 'contxt'; did you mean 'context'\?"),
    (dict(lamdas=[1.0]), r"unknown option 'lamdas'; did you mean 'lambdas'\?"),
    (dict(context="3"), r"context must be an integer, got str '3'"),
    (dict(vocab_size="512"), r"vocab_size must be an integer, got str '512'"),
    (dict(vocab_size=12.5), r"vocab_size must be an integer, got float 12.5"),
    (dict(lambdas=[1, float("nan"), 1]), r"lambdas must be a finite number, got nan"),
    (dict(lambdas=[1, 1]), r"lambdas needs 3 values \(one per feature group\), got 2"),
    (dict(lambda_tokens=-5), r"lambda_tokens must be >= 1, got -5"),
    (dict(order=3, prune=[0, 0, 1, 1]), r"prune has 4 values but an order-3 model has 3 orders"),
    (dict(prune=[0, 1]), r"prune \[0, 1\] needs n-gram groups; add order"),
    (dict(scheduler="tcp://x:1"), r"scheduler needs engine dask"),
    (dict(max_memory="lots"), r"lots"),
    (dict(corpus="shakespeare", input=["a.txt"]), r"corpus and input are exclusive"),
    (dict(solver="warm", init="zeros"), r"solver warm starts from the explicit solution"),
    (dict(discount=[0.0]), r"discount must be > 0.0, got 0.0"),
])
def test_train_options_fail_fast_naming_the_parameter(kw, match):
    with pytest.raises(InputError, match=match):
        C.TrainConfig.from_kwargs(**kw)


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
    """Every TrainConfig field is a `lmkit train` flag with the same default."""
    p = build_parser()
    a = p.parse_args(["train", "--output", "x"])
    cfg = C.TrainConfig()
    for klass, part in [(C.CorpusConfig, cfg.corpus), (C.TokenizerConfig, cfg.spm),
                        (C.ModelConfig, cfg.model), (C.ScaleConfig, cfg.scale),
                        (C.GradientConfig, cfg.gradient)]:
        for f in C.options(klass):
            assert getattr(a, f.name) == getattr(part, f.name), f.name
    g = p.parse_args(["generate", "m"])
    for f in dataclasses.fields(C.SampleConfig):
        assert getattr(g, f.name) == f.default, f.name


def test_flat_config_round_trips():
    cfg = C.TrainConfig.from_kwargs(context=2, order=4, prune=[0, 1], lr=1e-3, input="a.txt")
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
