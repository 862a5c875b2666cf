"""Compressors vs lmkit, static and adaptive, in bits per byte of the test text (one run).

Compressor figure: ``size(train + test) - size(train)`` in bits / test bytes, so the compressor
has seen the training text first, as the models have. The text every row sees is the same: the
corpus's non-empty lines (``rstrip``-ed, as lmkit reads them), each followed by one newline;
test bytes = what ``lmkit eval`` divides by. Compressors (each skipped, visibly, when missing;
``apt-get install -y p7zip-full zstd xz-utils bzip2``): ``xz -9e``, ``bzip2 -9``,
``zstd -19 --long=27``, PPMd order 8 with 1 GB via 7-Zip (``7z a -m0=PPMd:mem=1g:o=8``).
lmkit rows, each scored in this process, CPU seconds of each (``time.process_time``, the least
of ``REPEATS`` runs; static scoring included in the adaptive rows; after a warm-up on the first
200 lines, so no row pays first-call table derivations or numba's cache load):

  default         the default model: static, ``--adapt`` (the cache), and (``--mix``) mixed
                  linearly with the exactly adapted order-5 MKN of the same training text
                  (weight chosen on valid), cache on top;
  --order 5       an order-5 MKN model (``lmkit train --order 5``): static, ``--adapt`` (the
                  cache), ``--adapt-mode counts`` (the model re-solved exactly after every
                  line), ``counts+cache`` (default cache weights, then weights fitted on
                  valid). The counts rows exclude the one-off re-count of the training text
                  (``adapt.model_tables``), whose CPU s the note gives.
compressor CPU s are their children's user + system time.

Corpora:
  shakespeare   the default corpus's train and test splits; the default model (``--model``, or
                trained here with ``lmkit train``), the order-5 model (``--ngram-model``, or
                trained here).
  vim           Vim's documentation (``--vim-docs``, default /usr/share/vim/vim90/doc): the
                sorted ``*.txt`` files, file i in valid when i % 10 == 3, in test when
                i % 10 == 7, else train, train cut to its first ``--vim-train-lines`` lines;
                written to WORK/vim/{train,valid,test}.txt and both models trained on
                train.txt (``lmkit train --input WORK/vim/train.txt [--order 5]``). Cache
                weights: the defaults (chosen on shakespeare valid) and fitted on its valid.

    PYTHONPATH=. python scripts/bench_compress.py --work /tmp/bench_compress [--model DIR]
        [--ngram-model DIR] [--skip-shakespeare] [--skip-vim] [--mix]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import math

import numpy as np

from lmkit import adapt, adapt_ngram, cache
from lmkit.adapt import evaluate_adaptive, fit_weights
from lmkit.config import AdaptConfig
from lmkit.features import Suffix
from lmkit.corpus import load_corpus
from lmkit.evaluate import evaluate_lines
from lmkit.model import LanguageModel

REPEATS = 3  # lmkit rows: CPU s = the least of 3 runs (the fits run once)
FIT_LINES = 10_000  # valid lines the --cache-fit row fits on (the fit costs ~ tokens x steps)
COMPRESSORS = [  # (name, tool, command writing the compressed input to stdout or to OUT)
    ("PPMd o8 1GB (7-Zip)", "7z", lambda src, out: ["7z", "a", "-bd", "-bso0", "-m0=PPMd:mem=1g:o=8",
                                                     out, src]),
    ("xz -9e", "xz", lambda src, out: ["xz", "-9e", "-c", "-T1", src]),
    ("bzip2 -9", "bzip2", lambda src, out: ["bzip2", "-9", "-c", src]),
    ("zstd -19 --long", "zstd", lambda src, out: ["zstd", "-19", "--long=27", "-c", "-q", src]),
]


def write_lines(path: Path, lines: list) -> int:
    """The lines, one newline each; returns the bytes written."""
    data = "".join(x + "\n" for x in lines).encode("utf-8")
    path.write_bytes(data)
    return len(data)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def compressed_size(name, make, src: Path, work: Path) -> tuple[int, float]:
    """Size in bytes of ``src`` compressed, and the CPU seconds it took."""
    out = work / "out.7z"
    if out.exists():
        out.unlink()
    t0 = children_cpu()
    r = subprocess.run(make(str(src), str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cpu = children_cpu() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{name} failed: {r.stderr.decode(errors='replace')[:200]}")
    size = out.stat().st_size if "7z" in name or "7-Zip" in name else len(r.stdout)
    if out.exists():
        out.unlink()
    return size, cpu


def row(name, bpb, cpu, note) -> tuple:
    """One table row, printed as soon as it is measured."""
    b = "-" if bpb is None else f"{bpb:.3f}"
    c = "-" if cpu is None else f"{cpu:.1f}"
    print(f"| {name} | {b} | {c} | {note} |", flush=True)
    return name, bpb, cpu, note


def compressor_rows(train: Path, test: Path, work: Path, test_bytes: int) -> list:
    both = work / "train_test.txt"
    both.write_bytes(train.read_bytes() + test.read_bytes())
    rows = []
    for name, tool, make in COMPRESSORS:
        if shutil.which(tool) is None:
            rows.append(row(name, None, None, f"skipped: `{tool}` not installed"))
            continue
        s_train, c1 = compressed_size(name, make, train, work)
        s_both, c2 = compressed_size(name, make, both, work)
        rows.append(row(name, (s_both - s_train) * 8 / test_bytes, c1 + c2, "train+test, train"))
    both.unlink()
    return rows


def timed(fn, *args, repeats: int = 1):
    """``(fn(*args), CPU s)``: the least of ``repeats`` runs (a shared machine's noise only
    ever adds time; the outputs are the same, scoring is deterministic)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn(*args)
        best = min(best, time.process_time() - t0)
    return out, best


def lmkit_rows(model, test_lines, valid_lines, fit: bool) -> list:
    """The default model's rows: static, the cache (default weights; fitted on valid)."""
    # warm-up: the first call derives the model's lookup tables, which neither row should pay
    evaluate_lines(model, test_lines[:200])
    static, t_static = timed(evaluate_lines, model, test_lines, repeats=REPEATS)
    rows = [row("lmkit default, static", static["bits_per_byte"], t_static, "1.00x static CPU")]
    ad, t_ad = timed(evaluate_adaptive, model, test_lines, AdaptConfig(adapt=True),
                     repeats=REPEATS)
    rows.append(row("lmkit default, --adapt", ad["bits_per_byte"], t_ad,
                    f"{t_ad / t_static:.2f}x static CPU; cache weights of shakespeare valid"))
    if fit:
        cfg = AdaptConfig(adapt=True, cache_fit=True)
        (w, _), t_fit = timed(fit_weights, model, valid_lines[:FIT_LINES], cfg)
        ad, t_ad = timed(evaluate_adaptive, model, test_lines,
                         AdaptConfig(adapt=True, cache_weights=w.to_json()))
        rows.append(row("lmkit default, --adapt --cache-fit", ad["bits_per_byte"], t_ad,
                        f"{t_ad / t_static:.2f}x static CPU; weights fitted on the first "
                        f"{FIT_LINES} valid lines in {t_fit:.1f} CPU s (not counted)"))
    return rows


def ngram_rows(model, test_lines, valid_lines, fit: bool) -> list:
    """The order-5 model's rows: static, the cache, exact counts, counts + cache."""
    evaluate_lines(model, test_lines[:200])
    _, t_tables = timed(adapt.model_tables, model)  # the one-off re-count of the training text
    counts = AdaptConfig(adapt=True, adapt_mode="counts")
    evaluate_adaptive(model, test_lines[:200], counts)  # warm-up: numba's cache load
    static, t_static = timed(evaluate_lines, model, test_lines, repeats=REPEATS)
    rows = [row("lmkit --order 5, static", static["bits_per_byte"], t_static, "1.00x static CPU")]
    for name, cfg, note in (
            ("--adapt (cache)", AdaptConfig(adapt=True), "cache weights of the default model"),
            ("--adapt-mode counts", counts, "exact; + one-off re-count of the training "
             f"text {t_tables:.1f} CPU s (not counted)"),
            ("--adapt-mode counts+cache", AdaptConfig(adapt=True, adapt_mode="counts+cache"),
             "cache weights of the default model")):
        r, t = timed(evaluate_adaptive, model, test_lines, cfg, repeats=REPEATS)
        rows.append(row(f"lmkit --order 5, {name}", r["bits_per_byte"], t,
                        f"{t / t_static:.2f}x static CPU; {note}"))
    if fit:
        cfg = AdaptConfig(adapt=True, adapt_mode="counts+cache", cache_fit=True)
        (w, _), t_fit = timed(fit_weights, model, valid_lines[:FIT_LINES], cfg)
        r, t = timed(evaluate_adaptive, model, test_lines, AdaptConfig(
            adapt=True, adapt_mode="counts+cache", cache_weights=w.to_json()))
        rows.append(row("lmkit --order 5, --adapt-mode counts+cache --cache-fit",
                        r["bits_per_byte"], t, f"{t / t_static:.2f}x static CPU; weights fitted "
                        f"on the first {FIT_LINES} valid lines in {t_fit:.1f} CPU s (not counted)"))
    return rows


def mix_row(model, test_lines, valid_lines) -> tuple:
    """The default model mixed with the exactly adapted order-5 MKN of its training text (the
    default model's own discounts): P = (1 - beta) P_default + beta P_mkn, beta on a grid of
    0.025 chosen on valid, then the cache (default weights) on top."""
    t0 = time.process_time()
    counts = adapt.training_counts(model, [Suffix(m) for m in range(1, 5)])
    tables = adapt_ngram.ngram_tables(counts, model.params.info["discounts"][:5],
                                      adapt._bos(model), model.tokenizer.eos_id)
    t_tables = time.process_time() - t0
    parts = {}
    for name, lines in (("valid", valid_lines[:FIT_LINES]), ("test", test_lines)):
        t0 = time.process_time()
        st, seqs = adapt.static_log_proba(model, lines)
        parts[name] = (st, adapt_ngram.adaptive_log_proba(tables, seqs), seqs,
                       time.process_time() - t0)
    st, mk = parts["valid"][:2]
    beta = min(np.linspace(0, 1, 41), key=lambda b: -np.log((1 - b) * np.exp(st) + b * np.exp(mk)).sum())
    st, mk, seqs, t = parts["test"]
    t0 = time.process_time()
    w = cache.default_weights(8, 500)
    stream, line = cache.stream_of(seqs, model.tokenizer.eos_id)
    stats = cache.level_stats(stream, line, w.order, w.window, w.window_order, 1, model.vocab_size)
    lp = cache.cache_log_proba(np.log((1 - beta) * np.exp(st) + beta * np.exp(mk)), stats, w)
    t += time.process_time() - t0
    n_bytes = sum(len(x.encode("utf-8")) + 1 for x in test_lines)
    return row("lmkit default + exact order-5 MKN (linear mix) + cache",
               -lp.sum() / math.log(2) / n_bytes, t,
               f"beta {beta:.3f} chosen on valid; cache weights of the default model; "
               f"+ one-off re-count {t_tables:.1f} CPU s (not counted)")


def train_model(out: Path, args: list) -> LanguageModel:
    if not (out / "manifest.json").exists():
        print(f"training {out} (lmkit train {' '.join(args)})", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "lmkit.cli", "train", "--output", str(out), *args],
                       check=True, stdout=subprocess.DEVNULL)
    return LanguageModel.load(out)


def vim_splits(docs: Path, train_lines: int) -> dict:
    files = sorted(docs.glob("*.txt"))
    if not files:
        return {}
    split = {"train": [], "valid": [], "test": []}
    for i, f in enumerate(files):
        name = {3: "valid", 7: "test"}.get(i % 10, "train")
        split[name].extend(x for x in load_corpus(input=[str(f)]))
    split["train"] = split["train"][:train_lines]
    return split


def header(title: str, test_bytes: int) -> None:
    print(f"\n### {title} (test {test_bytes:,} bytes)\n")
    print("| model | test bits/byte | CPU s | note |")
    print("|---|---|---|---|", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_compress", help="scratch folder (kept: models)")
    ap.add_argument("--model", help="default model of the default corpus (else trained in WORK)")
    ap.add_argument("--ngram-model", help="order-5 model of the default corpus (else trained in WORK)")
    ap.add_argument("--vim-docs", default="/usr/share/vim/vim90/doc")
    ap.add_argument("--vim-train-lines", type=int, default=100_000)
    ap.add_argument("--skip-vim", action="store_true")
    ap.add_argument("--skip-shakespeare", action="store_true")
    ap.add_argument("--skip-fit", action="store_true", help="no --cache-fit rows (each fit "
                    "costs minutes)")
    ap.add_argument("--mix", action="store_true", help="also the default model + exact MKN row")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    # ---- the default corpus
    d = work / "shakespeare"
    d.mkdir(exist_ok=True)
    split = {s: list(load_corpus(split=s)) for s in ("train", "valid", "test")}
    write_lines(d / "train.txt", split["train"])
    n_test = write_lines(d / "test.txt", split["test"])
    if not a.skip_shakespeare:
        model = LanguageModel.load(a.model) if a.model else train_model(work / "model_shakespeare", [])
        ngram = (LanguageModel.load(a.ngram_model) if a.ngram_model
                 else train_model(work / "model_shakespeare_o5", ["--order", "5"]))
        header("shakespeare (default corpus)", n_test)
        compressor_rows(d / "train.txt", d / "test.txt", d, n_test)
        lmkit_rows(model, split["test"], split["valid"], fit=False)
        if a.mix:
            mix_row(model, split["test"], split["valid"])
        ngram_rows(ngram, split["test"], split["valid"], fit=not a.skip_fit)

    # ---- the second corpus
    if a.skip_vim:
        return
    split = vim_splits(Path(a.vim_docs), a.vim_train_lines)
    if not split:
        print(f"\n(second corpus skipped: no *.txt in {a.vim_docs}; install vim-runtime or pass "
              "--vim-docs)")
        return
    d = work / "vim"
    d.mkdir(exist_ok=True)
    for s in ("train", "valid"):
        write_lines(d / f"{s}.txt", split[s])
    n_test = write_lines(d / "test.txt", split["test"])
    model = train_model(work / "model_vim", ["--input", str(d / "train.txt")])
    ngram = train_model(work / "model_vim_o5", ["--input", str(d / "train.txt"), "--order", "5"])
    header(f"Vim docs ({a.vim_docs}; train {len(split['train'])} lines)", n_test)
    compressor_rows(d / "train.txt", d / "test.txt", d, n_test)
    lmkit_rows(model, split["test"], split["valid"], fit=not a.skip_fit)
    if a.mix:
        mix_row(model, split["test"], split["valid"])
    ngram_rows(ngram, split["test"], split["valid"], fit=not a.skip_fit)


if __name__ == "__main__":
    main()
