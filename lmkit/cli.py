"""The ``lmkit`` command line: one verb per pipeline stage, flags = Python keyword arguments.

Data goes to stdout, progress and logs to stderr. A user error prints one line
``lmkit: error: <problem>; <fix>`` on stderr and exits with code 2 (no traceback).

    lmkit tokenizer train   (--corpus NAME | --input PATH... | --dataset NAME) --output PREFIX
    lmkit tokenize encode   --model PREFIX.model [--output-format id|piece] [--input F] [--output F]
    lmkit tokenize decode   --model PREFIX.model [--input-format id|piece] [--input F] [--output F]
    lmkit train             (corpus flags) --output DIR [--context 3] [--order N] [--vocab-size 4096]
    lmkit eval DIR          (corpus flags, default --corpus shakespeare --split test) [--json]
    lmkit generate DIR      [--prompt TEXT | --prompt-file F] [--max-tokens 100] [--temperature 1.0]
    lmkit inspect DIR       --token TEXT [--top 10]
    lmkit export-arpa DIR OUT.arpa   (n-gram models: words are token ids, log10, KenLM-readable)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

from .errors import InputError, LmkitError, MissingPathError
from .files import atomic_write


def add_corpus_args(p: argparse.ArgumentParser, split: str) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", help="named corpus (default: shakespeare)")
    src.add_argument("--input", nargs="+", metavar="PATH", help="UTF-8 text files or folders of .txt")
    src.add_argument("--dataset", metavar="NAME[:CONFIG]",
                     help="HuggingFace dataset name, or a local .txt/.jsonl/.parquet/.csv file or folder")
    p.add_argument("--split", default=split, help=f"split to read (default: {split})")
    p.add_argument("--text-field", default="text", help="dataset column holding the text (default: text)")
    p.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")


def corpus_kwargs(a) -> dict:
    return {"corpus": a.corpus, "input": a.input, "dataset": a.dataset, "split": a.split,
            "text_field": a.text_field, "streaming": a.streaming}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lmkit", description="Train softmax language models without "
                                 "backpropagation: count, then solve.")
    sub = ap.add_subparsers(dest="verb", required=True)

    tk = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    tk_sub = tk.add_subparsers(dest="action", required=True)
    tt = tk_sub.add_parser("train", help="train a tokenizer on the train split")
    add_corpus_args(tt, "train")
    tt.add_argument("--vocab-size", type=int, default=4096)
    tt.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--input-sentence-size", type=int, default=2_000_000,
                    help="lines sampled (seeded) to train on; 0 = all (default 2000000)")
    tt.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.vocab")

    tz = sub.add_parser("tokenize", help="encode or decode text, one line in, one line out")
    tz_sub = tz.add_subparsers(dest="action", required=True)
    for action in ("encode", "decode"):
        t = tz_sub.add_parser(action)
        t.add_argument("--model", required=True, metavar="PREFIX.model",
                       help="a tokenizer .model file or a model folder")
        fmt = "--output-format" if action == "encode" else "--input-format"
        t.add_argument(fmt, choices=["id", "piece"], default="id")
        t.add_argument("--input", help="input file (default: stdin)")
        t.add_argument("--output", help="output file (default: stdout)")

    tr = sub.add_parser("train", help="train a language model (count, then solve)")
    add_corpus_args(tr, "train")
    tr.add_argument("--output", required=True, metavar="DIR", help="model folder to write")
    tr.add_argument("--context", type=int, default=None,
                    help="window groups: tokens 1..K back (default 3, or 0 when --order is given)")
    tr.add_argument("--order", type=int, default=None, help="n-gram order N: suffix groups 1..N-1")
    tr.add_argument("--vocab-size", type=int, default=4096)
    tr.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    tr.add_argument("--tokenizer", metavar="PREFIX.model", help="use this tokenizer instead of training one")
    tr.add_argument("--discount", type=float, nargs="+", default=None,
                    help="absolute discount(s) in (0, 1) (default: n1/(n1+2 n2) per group); "
                         "with --order: 1 or 3 values D1 D2 D3+ (default: per order from count-of-counts)")
    tr.add_argument("--lambdas", type=float, nargs="+", default=None,
                    help="group weights (default: chosen on held-out text)")
    tr.add_argument("--lambda-tokens", type=int, default=10000,
                    help="held-out tokens used to choose the lambdas (default 10000)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--chunk-lines", type=int, default=10000, help="lines per counting chunk")
    tr.add_argument("--solver", choices=["explicit", "gradient", "warm"], default="explicit")
    # gradient solver (--solver gradient|warm)
    tr.add_argument("--init", choices=["zeros", "random", "explicit"], default=None,
                    help="gradient init (default: zeros for --solver gradient, explicit for warm)")
    tr.add_argument("--epochs", type=int, default=10, help="gradient: max passes over the data (default 10)")
    tr.add_argument("--max-seconds", type=float, default=None, help="gradient: training time budget")
    tr.add_argument("--lr", type=float, default=0.003, help="gradient: learning rate (default 0.003)")
    tr.add_argument("--batch-size", type=int, default=1024, help="gradient: minibatch size (default 1024)")
    tr.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                    help="gradient: lazy Adam or SGD with momentum 0.9 (default adam)")
    tr.add_argument("--patience", type=int, default=2,
                    help="gradient: stop after this many validations without improvement (default 2)")
    tr.add_argument("--l2", type=float, default=0.0, help="gradient: L2 penalty on W (default 0)")
    tr.add_argument("--lr-decay", type=float, default=1.0,
                    help="gradient: learning rate multiplied by this each epoch (default 1 = constant)")
    tr.add_argument("--eval-every", type=int, default=0,
                    help="gradient: steps between validations (default 0 = once per epoch)")
    tr.add_argument("--max-memory", default=None, metavar="SIZE",
                    help="memory limit, e.g. 8G (default: 80%% of available RAM)")
    # n-gram groups (--order)
    tr.add_argument("--prune", type=int, nargs="+", default=None, metavar="T",
                    help="n-gram count thresholds per order, as KenLM: drop n-grams of order n "
                         "with adjusted count <= T_n (e.g. --prune 0 0 1; default: no pruning)")
    # scale: workers, engines, tokenizer sample
    tr.add_argument("--workers", type=int, default=None,
                    help="processes that tokenize and count (default: every core); with "
                         "--engine dask, the LocalCluster's workers")
    tr.add_argument("--engine", choices=["local", "dask"], default="local",
                    help="count on this machine or on a Dask cluster (pip install lmkit[distributed])")
    tr.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: start a LocalCluster)")
    tr.add_argument("--input-sentence-size", type=int, default=2_000_000,
                    help="lines sampled (seeded) to train the tokenizer; 0 = all (default 2000000)")

    ev = sub.add_parser("eval", help="perplexity and bits per byte on held-out text")
    ev.add_argument("model", metavar="DIR")
    add_corpus_args(ev, "test")
    ev.add_argument("--json", action="store_true", help="print one JSON object")

    ge = sub.add_parser("generate", help="sample text")
    ge.add_argument("model", metavar="DIR")
    pr = ge.add_mutually_exclusive_group()
    pr.add_argument("--prompt", default="")
    pr.add_argument("--prompt-file")
    ge.add_argument("--max-tokens", type=int, default=100)
    ge.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ge.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    ge.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]")
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--num-samples", type=int, default=1)
    ge.add_argument("--json", action="store_true", help="print a JSON list of samples")

    ea = sub.add_parser("export-arpa", help="write an n-gram model (--order N) as an ARPA file")
    ea.add_argument("model", metavar="DIR")
    ea.add_argument("output", metavar="OUT.arpa")

    ins = sub.add_parser("inspect", help="strongest next tokens of a token, per feature group")
    ins.add_argument("model", metavar="DIR")
    ins.add_argument("--token", required=True)
    ins.add_argument("--top", type=int, default=10)
    ins.add_argument("--json", action="store_true")
    return ap


# ---- verbs ----------------------------------------------------------------------------------
def cmd_tokenizer(a) -> None:
    from .corpus import load_corpus
    from .tokenizer import Tokenizer
    lines = load_corpus(**corpus_kwargs(a)).check_nonempty()
    tok = Tokenizer.train(lines, vocab_size=a.vocab_size, model_type=a.model_type, seed=a.seed,
                          input_sentence_size=a.input_sentence_size)
    path = tok.save(a.output)
    print(f"wrote {path} (vocab {tok.vocab_size}, {a.model_type}, sha256 {tok.sha256[:12]})")


def _load_tokenizer(path: str):
    from .tokenizer import Tokenizer
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.model"
    return Tokenizer.load(p)


def _read_lines(path):
    """Lines of a file or stdin without their trailing newline (other whitespace is kept)."""
    try:
        if path is None:
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:  # a FIFO or /dev/fd/N (process substitution) reads fine
                data = f.read()
    except FileNotFoundError:
        raise MissingPathError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; pass a file") from None
    except OSError as e:
        raise InputError(f"{path or 'stdin'}: cannot read ({e.strerror or e}); check the path "
                         "and its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path or 'stdin'}: bytes at offset {e.start} are not valid UTF-8; "
                         "re-encode the input as UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _write_output(path, text: str) -> None:
    """Write to stdout, or to ``path`` via ``store.atomic_write`` (never half-written)."""
    if path is None:
        sys.stdout.write(text)
        return
    atomic_write(path, text)


_ASCII_ID = re.compile(r"[0-9]+")


def cmd_tokenize(a) -> None:
    tok = _load_tokenizer(a.model)
    out = []
    for line in _read_lines(a.input):
        if a.action == "encode":
            items = tok.encode_pieces(line) if a.output_format == "piece" else map(str, tok.encode(line))
            out.append(" ".join(items))
        elif a.input_format == "piece":
            out.append(tok.decode_pieces(line.split()))
        else:
            items = line.split()
            if not all(_ASCII_ID.fullmatch(x) for x in items):  # not "1_000", "٣٤٥" or "５００"
                raise InputError(f"not a list of integer ids: {line[:60]!r}; ids are ASCII "
                                 "digits 0-9 separated by spaces, pass --input-format piece "
                                 "for pieces")
            ids = [int(x) for x in items]
            out.append(tok.decode(ids))
    _write_output(a.output, "".join(x + "\n" for x in out))


def cmd_train(a) -> None:
    from . import store
    from .train import train
    kwargs = {k: v for k, v in vars(a).items() if k not in ("verb", "output", "func", "argv")}
    if kwargs.get("discount") is not None and len(kwargs["discount"]) == 1:
        kwargs["discount"] = kwargs["discount"][0]
    store.check_output_path(a.output)  # fail before training, not after
    model = train(**kwargs)
    path = model.save(a.output, command="lmkit " + " ".join(shlex.quote(x) for x in a.argv))
    print(f"wrote {path}: {model.describe()}")


def cmd_eval(a) -> None:
    from .evaluate import evaluate
    r = evaluate(a.model, **corpus_kwargs(a))
    if a.json:
        print(json.dumps(r))
    else:
        print(f"sequences {r['sequences']}  tokens {r['tokens']}  bytes {r['bytes']}  "
              f"nll_nats {r['nll_nats']:.1f}  perplexity {r['perplexity']:.3f}  "
              f"bits_per_byte {r['bits_per_byte']:.4f}")


def cmd_generate(a) -> None:
    from .generate import check_sampling_args
    from .model import LanguageModel
    check_sampling_args(max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k,
                        top_p=a.top_p, num_samples=a.num_samples)
    prompt = a.prompt
    if a.prompt_file:
        lines = _read_lines(a.prompt_file)
        prompt = lines[0] if lines else ""
    model = LanguageModel.load(a.model)
    samples = model.sample(prompt, max_tokens=a.max_tokens, temperature=a.temperature,
                           top_k=a.top_k, top_p=a.top_p, seed=a.seed, num_samples=a.num_samples)
    print(json.dumps(samples) if a.json else "\n".join(samples))


def cmd_export_arpa(a) -> None:
    from .model import LanguageModel
    from .ngram import write_arpa
    sizes = write_arpa(LanguageModel.load(a.model), a.output)
    print(f"wrote {a.output}: " + ", ".join(f"{v} {k}" for k, v in sizes.items())
          + "; words are token ids (<unk> <s> </s> for the specials)")


def cmd_inspect(a) -> None:
    from .model import LanguageModel
    model = LanguageModel.load(a.model)
    res = model.inspect(a.token, top=a.top)
    if a.json:
        print(json.dumps(res))
        return
    for group, items in res.items():
        print(f"{group}: " + "  ".join(f"{p!r} {w:.2f}" for p, w in items))


VERBS = {"tokenizer": cmd_tokenizer, "tokenize": cmd_tokenize, "train": cmd_train,
         "eval": cmd_eval, "generate": cmd_generate, "inspect": cmd_inspect,
         "export-arpa": cmd_export_arpa}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` clean-up runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(x) for x in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv  # the manifest records the command as given, also for in-process calls
    try:  # only the main thread may set handlers (in-process callers may be elsewhere)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        previous = None
    try:
        VERBS[args.verb](args)
    except LmkitError as e:
        print(f"lmkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmkit: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("lmkit: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # e.g. `lmkit tokenize encode | head`
        try:  # stdout is gone: stop the interpreter's final flush from failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except OSError as e:  # a file-system error no check caught: one line, not a traceback
        name = e.filename2 if getattr(e, "filename2", None) is not None else e.filename
        where = f"{name}: " if name is not None else ""
        print(f"lmkit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("lmkit: error: out of memory; lower --max-memory, --vocab-size or --context",
              file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
