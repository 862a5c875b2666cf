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
import shlex
import sys
import tempfile
from pathlib import Path

from .errors import InputError, LmkitError, MissingPathError


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
    add_companion_parsers(sub)
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
    if path is not None and not Path(path).exists():
        raise MissingPathError(f"{path}: no such file; check the path")
    data = Path(path).read_bytes() if path else sys.stdin.buffer.read()
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
    """Write to stdout, or to ``path`` via a temp file + rename (never half-written)."""
    if path is None:
        sys.stdout.write(text)
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, out)


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
            try:
                ids = [int(x) for x in line.split()]
            except ValueError:
                raise InputError(f"not a list of integer ids: {line[:60]!r}; pass "
                                 "--input-format piece for pieces") from None
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(x) for x in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv  # the manifest records the command as given, also for in-process calls
    try:
        VERBS[args.verb](args)
    except LmkitError as e:
        print(f"lmkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lmkit tokenize encode | head`
        return 0
    return 0


# ---- KenLM companion verbs (issue 13): score, import-arpa, interpolate, prune, next, vocab ----
def add_companion_parsers(sub) -> None:
    sub.choices["export-arpa"].add_argument(
        "--words", choices=["ids", "pieces"], default="ids",
        help="ARPA words: token ids (default) or SentencePiece pieces (readable; for "
             "`spm_encode --output_format=piece | query` and ARPA-reading decoders)")

    sc = sub.add_parser("score", help="per-line or per-document scores as JSON Lines")
    sc.add_argument("model", metavar="DIR")
    src = sc.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="text or .jsonl files (or folders of .txt)")
    src.add_argument("--dataset", metavar="NAME[:CONFIG]",
                     help="HuggingFace dataset, or a local .jsonl/.parquet/.csv file (streamed)")
    sc.add_argument("--split", default="train", help="dataset split (default: train)")
    sc.add_argument("--format", choices=["text", "jsonl"], default="text",
                    help="--input format (default: text)")
    sc.add_argument("--text-field", default="text", help="jsonl/dataset text field (default: text)")
    sc.add_argument("--id-field", default=None, help="jsonl/dataset field copied to each result as id")
    sc.add_argument("--unit", choices=["line", "document"], default="line",
                    help="score each line, or each document (text: blank-line separated; "
                         "jsonl: each record) (default: line)")
    sc.add_argument("--output", required=True, metavar="F.jsonl", help="results, one JSON object per unit")
    sc.add_argument("--workers", type=int, default=1, help="scoring processes (default 1)")

    ia = sub.add_parser("import-arpa", help="an ARPA back-off model (lmplz, SRILM) as an lmkit model")
    ia.add_argument("arpa", metavar="FILE.arpa")
    ia.add_argument("--tokenizer", required=True, metavar="TOK.model",
                    help="the tokenizer whose pieces or ids are the ARPA's words (or a model folder)")
    ia.add_argument("--words", choices=["auto", "ids", "pieces"], default="auto",
                    help="ARPA words are token ids or pieces (default: auto-detect)")
    ia.add_argument("--output", required=True, metavar="DIR")

    ip = sub.add_parser("interpolate", help="mix models that share a tokenizer")
    ip.add_argument("models", nargs="+", metavar="DIR")
    ip.add_argument("--output", required=True, metavar="DIR")
    ip.add_argument("--method", choices=["linear", "loglinear"], default="linear",
                    help="linear mixture (EM weights) or log-linear merge (lambdas refitted)")
    ip.add_argument("--weights", nargs="+", default=["auto"], metavar="W",
                    help="linear: auto (EM on held-out text, default) or one weight per model")
    add_corpus_args(ip, "valid")
    ip.add_argument("--heldout-tokens", type=int, default=20000,
                    help="held-out tokens used to fit weights or lambdas (default 20000)")

    pr = sub.add_parser("prune", help="entropy-prune an n-gram model (Stolcke 1998)")
    pr.add_argument("model", metavar="DIR")
    pr.add_argument("--threshold", type=float, required=True,
                    help="prune n-grams whose removal raises perplexity by less than this, "
                         "relatively (e.g. 1e-7)")
    pr.add_argument("--output", required=True, metavar="DIR")

    nx = sub.add_parser("next", help="the most probable next tokens after a context")
    nx.add_argument("model", metavar="DIR")
    nx.add_argument("--context", default="", help="text: the start of a sequence (default: empty)")
    nx.add_argument("--top", type=int, default=10)
    nx.add_argument("--json", action="store_true")

    vo = sub.add_parser("vocab", help="the model's pieces: id, piece (one per line)")
    vo.add_argument("model", metavar="DIR")
    vo.add_argument("--json", action="store_true", help="one JSON list of pieces")


def _command(a) -> str:
    return "lmkit " + " ".join(shlex.quote(x) for x in a.argv)


def cmd_score(a) -> None:
    from .docscore import score_file
    r = score_file(a.model, a.output, input=a.input, dataset=a.dataset, split=a.split,
                   fmt=a.format, text_field=a.text_field, id_field=a.id_field, unit=a.unit,
                   workers=a.workers)
    print(f"wrote {a.output}: {r['units']} {a.unit}s, {r['tokens']} tokens in {r['seconds']:.1f}s "
          f"({r['units_per_s']:.0f} {a.unit}s/s, {r['tokens_per_s']:.0f} tokens/s); "
          f"perplexity {r['perplexity']:.3f}")


def cmd_import_arpa(a) -> None:
    from . import store
    from .arpa import import_arpa
    store.check_output_path(a.output)
    model, report = import_arpa(a.arpa, _load_tokenizer(a.tokenizer), words=a.words)
    path = model.save(a.output, command=_command(a))
    print(f"wrote {path}: {model.describe()}; n-grams {report['ngrams']}, "
          f"max |log10 gamma - log10 bo| {report['max_backoff_error_log10']:.2g}"
          + (f", {report['missing_pieces']} pieces not in the ARPA share p(<unk>)"
             if report["missing_pieces"] else ""))


def cmd_interpolate(a) -> None:
    from . import store
    from .corpus import load_corpus
    from .docscore import load_model
    from .interpolate import interpolate
    from .train import heldout_lines
    store.check_output_path(a.output)
    models = [load_model(m) for m in a.models]
    weights = "auto" if a.weights == ["auto"] else a.weights
    try:
        weights = weights if weights == "auto" else [float(x) for x in weights]
    except ValueError:
        raise InputError(f"--weights takes auto or numbers, got {a.weights}") from None
    held = []
    if weights == "auto" or a.method == "loglinear":
        held = heldout_lines(load_corpus(**corpus_kwargs(a)), a.heldout_tokens, models[0].tokenizer)
    model = interpolate(models, held, method=a.method, weights=weights)
    path = model.save(a.output, command=_command(a))
    print(f"wrote {path}: {model.describe()}")


def cmd_prune(a) -> None:
    from . import store
    from .model import LanguageModel
    from .prune import n_ngrams, prune_entropy
    store.check_output_path(a.output)
    model = LanguageModel.load(a.model)
    pruned = prune_entropy(model, a.threshold)
    path = pruned.save(a.output, command=_command(a))
    print(f"wrote {path}: {n_ngrams(model)} -> {n_ngrams(pruned)} n-grams "
          f"(per order {[model.vocab_size] + pruned.params.info['ngrams_after']})")


def cmd_next(a) -> None:
    from .docscore import load_model
    top = load_model(a.model).top_next(a.context, a.top)
    if a.json:
        print(json.dumps(top))
    else:
        print("\n".join(f"{p:.6f}\t{piece}" for piece, p in top))


def cmd_vocab(a) -> None:
    from .docscore import load_model
    vocab = load_model(a.model).vocab
    print(json.dumps(vocab) if a.json else "\n".join(f"{i}\t{p}" for i, p in enumerate(vocab)))


def cmd_export_arpa_words(a) -> None:
    from .model import LanguageModel
    from .ngram import write_arpa
    sizes = write_arpa(LanguageModel.load(a.model), a.output, words=a.words)
    print(f"wrote {a.output}: " + ", ".join(f"{v} {k}" for k, v in sizes.items())
          + ("; words are token ids (<unk> <s> </s> for the specials)" if a.words == "ids"
             else "; words are SentencePiece pieces"))


VERBS.update({"score": cmd_score, "import-arpa": cmd_import_arpa, "interpolate": cmd_interpolate,
              "prune": cmd_prune, "next": cmd_next, "vocab": cmd_vocab,
              "export-arpa": cmd_export_arpa_words})


if __name__ == "__main__":
    sys.exit(main())
