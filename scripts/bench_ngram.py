"""lmkit's n-gram path vs KenLM, side by side in one run: build, eval, sampling.

Both sides get the same text and the same SentencePiece ids (one tokenizer, trained once before
timing, or given with --tokenizer). Every command runs as its own process under
``/usr/bin/time``; CPU seconds = user + sys of that process (SentencePiece and lmplz threads
included), peak RSS = its maximum resident set.

- build: ``lmkit train --order N`` vs ``lmkit spm-encode`` + ``lmplz -o N`` +
  ``build_binary`` (KenLM's probing binary);
- eval, end to end from text: ``lmkit eval`` vs ``lmkit spm-encode`` + KenLM ``query``, each
  run ``--eval-repeats`` times (median CPU reported);
- sampling: ``lmkit.ngram.sample.NgramSampler.sample_sequences`` tokens/s (exact, temperature
  1, 4096 sequences at once), in-process, model load excluded.

    python scripts/bench_ngram.py [--corpus NAME | --input PATH] [--order 5] [--kenlm-bin DIR]
                                  [--max-memory 4G]

With ``--input PATH`` every 20th line is held out as the test text. Without ``--kenlm-bin``
only lmkit's rows are printed. ``--max-memory SIZE`` bounds both builds: ``lmkit train
--max-memory SIZE`` (the bucketed, disk-backed build of ``ngram/build.py``) and ``lmplz -S
SIZE``; the table then gives each build's peak RSS against it. Progress on stderr, the table
(or ``--json``) on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(cmd: list, stdin=None, stdout=None, env=None) -> dict:
    """Run ``cmd`` under /usr/bin/time; CPU s (user + sys), peak RSS MB, wall s, its stdout."""
    fd, tfile = tempfile.mkstemp(prefix="bench-time-")
    os.close(fd)
    t0 = time.time()
    try:
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as fin, \
                open(stdout, "wb") if stdout else tempfile.TemporaryFile() as fout:
            r = subprocess.run(["/usr/bin/time", "-o", tfile, "-f", "%U %S %M", *map(str, cmd)],
                               stdin=fin, stdout=fout, stderr=subprocess.PIPE, env=env)
            fout.seek(0) if not stdout else None
            out = fout.read().decode() if not stdout else ""
        wall = time.time() - t0
        if r.returncode != 0:
            raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n"
                             f"{r.stderr.decode()[-2000:]}")
        user, sys_, rss = Path(tfile).read_text().split()[-3:]
    finally:
        Path(tfile).unlink(missing_ok=True)
    return {"cpu": float(user) + float(sys_), "rss_mb": int(rss) / 1024, "wall": wall,
            "stdout": out, "stderr": r.stderr.decode()}


def combine(*steps) -> dict:
    """Steps run one after the other: CPU adds up, peak RSS is the largest."""
    return {"cpu": sum(s["cpu"] for s in steps), "rss_mb": max(s["rss_mb"] for s in steps),
            "wall": sum(s["wall"] for s in steps), "parts": [round(s["cpu"], 2) for s in steps]}


def median_of(n: int, run) -> dict:
    """``run()`` n times; the run with the median CPU seconds (short steps are noisy on a
    shared machine, and both sides get the same number of runs)."""
    runs = sorted((run() for _ in range(max(1, n))), key=lambda r: r["cpu"])
    return {**runs[len(runs) // 2], "runs_cpu": [round(r["cpu"], 3) for r in runs]}


def write_splits(a, work: Path):
    """Train/test text files and the lmkit corpus flags that read the same lines."""
    from lmkit.corpus import load_corpus
    with open(work / "train.txt", "w", encoding="utf-8") as tr, \
            open(work / "test.txt", "w", encoding="utf-8") as te:  # streamed: any corpus size
        if a.input:
            for i, x in enumerate(load_corpus(input=[a.input])):
                (te if i % 20 == 19 else tr).write(x + "\n")
        else:
            tr.writelines(x + "\n" for x in load_corpus(corpus=a.corpus, split="train"))
            te.writelines(x + "\n" for x in load_corpus(corpus=a.corpus, split="test"))
    if a.input:  # lmkit reads the very files the KenLM side encodes
        return ["--input", work / "train.txt"], ["--input", work / "test.txt"]
    return ["--corpus", a.corpus], ["--corpus", a.corpus, "--split", "test"]


def count_tokens(path: Path) -> int:
    """Tokens of an id file, one </s> per line included (what both perplexities count)."""
    n = 0
    with open(path) as f:
        for line in f:
            n += len(line.split()) + 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--corpus", default="shakespeare", help="named corpus (train/test splits)")
    src.add_argument("--input", help="a text file or folder; every 20th line is the test text")
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--kenlm-bin", help="folder with lmplz, build_binary, query")
    ap.add_argument("--tokenizer", help="a tokenizer .model (default: train one, untimed)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--lmplz-memory", default="1G", help="lmplz -S (default 1G)")
    ap.add_argument("--max-memory", help="bound both builds: lmkit train --max-memory and "
                                         "lmplz -S (overrides --lmplz-memory)")
    ap.add_argument("--sample-tokens", type=int, default=1_000_000, help="0: skip sampling")
    ap.add_argument("--workdir", help="keep the files here (default: a temp folder, removed)")
    ap.add_argument("--default-model", action="store_true",
                    help="also time `lmkit train` with no model option (the default model) and "
                         "give its build CPU against the same KenLM build")
    ap.add_argument("--eval-repeats", type=int, default=3,
                    help="run each eval this many times, report the median CPU (default 3)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    py = [sys.executable, "-m", "lmkit.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-ngram-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        train_flags, test_flags = write_splits(a, work)
        tok = Path(a.tokenizer) if a.tokenizer else work / "tok.model"
        if not a.tokenizer:
            log(f"tokenizer: training on the train text (V={a.vocab_size}, untimed)")
            timed(py + ["tokenizer", "train", "--input", work / "train.txt", "--vocab-size",
                        a.vocab_size, "--output", work / "tok"], env=env)
        res = {"order": a.order, "corpus": a.input or a.corpus, "max_memory": a.max_memory}
        bound = ["--max-memory", a.max_memory, "--spill-dir", work] if a.max_memory else []
        log(f"[1/4] lmkit train --order {a.order} {' '.join(map(str, bound))}")
        res["lmkit_build"] = timed(py + ["train", *train_flags, "--order", a.order, "--tokenizer",
                                         tok, *bound, "--output", work / "lm"], env=env)
        log("[2/4] lmkit eval")
        ev = median_of(a.eval_repeats,
                       lambda: timed(py + ["eval", work / "lm", *test_flags, "--json"], env=env))
        res["lmkit_eval"] = ev
        res["lmkit_ppl"] = json.loads(ev["stdout"])["perplexity"]
        if a.default_model:
            log("[2b] lmkit train (default model) + eval")
            res["default_build"] = timed(py + ["train", *train_flags, "--tokenizer", tok,
                                               "--output", work / "default"], env=env)
            dv = timed(py + ["eval", work / "default", *test_flags, "--json"], env=env)
            res["default_ppl"] = json.loads(dv["stdout"])["perplexity"]
        if a.sample_tokens:
            log("[3/4] sampling")
            res["lmkit_sample"] = sample_rate(work / "lm", a.sample_tokens)
        if a.kenlm_bin:
            log(f"[4/4] KenLM: encode + lmplz -o {a.order} + build_binary; encode + query")
            kb = Path(a.kenlm_bin)
            enc = timed(py + ["spm-encode", "--model", tok, "--input", work / "train.txt",
                              "--output", work / "train.ids"], env=env)
            lmplz = timed([kb / "lmplz", "-o", a.order, "-S", a.max_memory or a.lmplz_memory,
                           "-T", work, "--discount_fallback"],
                          stdin=work / "train.ids", stdout=work / "k.arpa")
            binary = timed([kb / "build_binary", work / "k.arpa", work / "k.bin"])
            res["kenlm_build"] = combine(enc, lmplz, binary)

            def kenlm_eval():
                enc_t = timed(py + ["spm-encode", "--model", tok, "--input", work / "test.txt",
                                    "--output", work / "test.ids"], env=env)
                query = timed([kb / "query", "-v", "summary", work / "k.bin"],
                              stdin=work / "test.ids")
                return {**combine(enc_t, query), "stdout": query["stdout"]}
            res["kenlm_eval"] = median_of(a.eval_repeats, kenlm_eval)
            m = re.search(r"Perplexity including OOVs:\s*([0-9.]+)", res["kenlm_eval"]["stdout"])
            res["kenlm_ppl"] = float(m.group(1))
            res["train_tokens"] = count_tokens(work / "train.ids")
            res["test_tokens"] = count_tokens(work / "test.ids")
        else:
            res["test_tokens"] = json.loads(ev["stdout"])["tokens"]
        for k in list(res):
            if isinstance(res[k], dict):
                res[k] = {x: (round(v, 3) if isinstance(v, float) else v)
                          for x, v in res[k].items() if x not in ("stdout", "stderr")}
        print(json.dumps(res, indent=1) if a.json else table(res))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def sample_rate(model_dir: Path, n_tokens: int) -> dict:
    """Tokens/s of the exact batched n-gram sampler (CPU s of this process, model load excluded)."""
    from lmkit.model import LanguageModel
    from lmkit.ngram.sample import NgramSampler
    model = LanguageModel.load(model_dir)
    tok = model.tokenizer
    sampler = NgramSampler(model.params, bos_id=tok.bos_id, eos_id=tok.eos_id)
    t0 = time.process_time()
    n = sum(len(s) + 1 for chunk in sampler.sample_sequences(n_tokens, seed=0) for s in chunk)
    cpu = time.process_time() - t0
    return {"tokens": n, "cpu": cpu, "tokens_per_cpu_s": n / cpu}


def table(r: dict) -> str:
    has_k = "kenlm_build" in r
    rows = [f"order {r['order']}, corpus {r['corpus']}" + (
        f", {r['train_tokens']:,} train tokens, {r['test_tokens']:,} test tokens" if has_k else "")
        + (f"; builds bounded: lmkit --max-memory {r['max_memory']}, lmplz -S {r['max_memory']}"
           if r.get("max_memory") else "")]
    head = "| step | lmkit CPU s | lmkit peak RSS MB |"
    head += " KenLM CPU s (parts) | KenLM peak RSS MB | CPU ratio lmkit/KenLM |" if has_k else ""
    rows += [head, "|" + "---|" * (head.count("|") - 1)]
    for step, lk, kk in (("build", "lmkit_build", "kenlm_build"),
                         ("eval (text -> ppl)", "lmkit_eval", "kenlm_eval")):
        line = f"| {step} | {r[lk]['cpu']:.2f} | {r[lk]['rss_mb']:.0f} |"
        if has_k:
            k = r[kk]
            line += (f" {k['cpu']:.2f} ({' + '.join(f'{x:.2f}' for x in k['parts'])}) |"
                     f" {k['rss_mb']:.0f} | {r[lk]['cpu'] / k['cpu']:.2f} |")
        rows.append(line)
    toks = r["test_tokens"]
    rows.append("")
    rows.append(f"eval tokens/CPU s: lmkit {toks / r['lmkit_eval']['cpu']:,.0f}" + (
        f", KenLM {toks / r['kenlm_eval']['cpu']:,.0f} (end to end)" if has_k else ""))
    rows.append(f"perplexity: lmkit {r['lmkit_ppl']:.3f}" + (
        f", KenLM {r['kenlm_ppl']:.3f}, ratio {r['lmkit_ppl'] / r['kenlm_ppl']:.4f}" if has_k else ""))
    if "default_build" in r:
        d = r["default_build"]
        rows.append(f"default model (`lmkit train`, no model option): build {d['cpu']:.2f} CPU s, "
                    f"{d['rss_mb']:.0f} MB" + (
                        f", {d['cpu'] / r['kenlm_build']['cpu']:.2f}x encode+lmplz+build_binary, "
                        f"{d['cpu'] / sum(r['kenlm_build']['parts'][:2]):.2f}x encode+lmplz"
                        if has_k else "") + f"; perplexity {r['default_ppl']:.3f}" + (
                        f" = {r['default_ppl'] / r['kenlm_ppl']:.4f} x KenLM" if has_k else ""))
    if has_k:
        rows.append(f"peak RSS ratio lmkit/KenLM: build "
                    f"{r['lmkit_build']['rss_mb'] / r['kenlm_build']['rss_mb']:.2f}, eval "
                    f"{r['lmkit_eval']['rss_mb'] / r['kenlm_eval']['rss_mb']:.2f}")
    s = r.get("lmkit_sample")
    if s:
        rows.append(f"exact n-gram sampling: {s['tokens']:,} tokens in {s['cpu']:.2f} CPU s = "
                    f"{s['tokens_per_cpu_s']:,.0f} tokens/s")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
