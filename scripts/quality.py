"""Quality ladder of the explicit model: each feature family's gain on valid and test.

Rows are cumulative: exact MKN order N; + windows 1..K; + skip-grams; + cluster histories;
window 1 dropped; + a class-bigram context on a coarse cluster table; + line positions (= ``lmkit
train``'s default model); optionally history-count x entry-count buckets. Each row is built from scratch
on ``train`` (tokenizer shared, its time excluded): counting its groups (``rich.count_rich``),
the closed forms, and the weights (one per group x entry-count bucket) fitted on
``--lambda-tokens`` tokens of ``valid`` (``rich.fit_rich``; the other weightings:
``experiments.rich_weights``). Reports valid and test perplexity (EOS counted), build CPU seconds of
this process, and model size (bytes of the saved arrays). Nothing is chosen on ``test``.

Corpora: the default ``shakespeare`` (its own train/valid/test split), or ``--input FILES``:
lines ``i % 20 == 18`` are valid, ``i % 20 == 19`` test, the rest train.

    PYTHONPATH=. .venv/bin/python scripts/quality.py
    PYTHONPATH=. .venv/bin/python scripts/quality.py --input /usr/share/vim/vim90/doc/*.txt

``--kenlm-bin DIR --cli-only``: instead of the in-process ladder, the side-by-side run: KenLM
``lmplz -o N`` (``--kenlm-orders``, default 3 4 5 6) + ``query`` on the same SentencePiece ids,
and ``lmkit train`` as a user runs it (no model option = the default model; ``--order 5``;
``--order 5 --context 3``), each as its own process under ``/usr/bin/time`` (CPU = user + sys),
evaluated with ``lmkit eval`` on valid and test. Build ratios are against ``lmkit spm-encode``
of the training text + ``lmplz -o 5``, measured in the same run. With ``--input`` the CLI
trains on the train lines (``--input train.txt``) and carves its own held-out lines from them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time


from lmkit.io import store
from lmkit.corpus import load_corpus
from lmkit.experiments.rich_weights import fit_rich_weighted
from lmkit.ngram.mkn import solve_ngram
from lmkit.rich import (DEFAULT_CLUSTER_SHAPES, DEFAULT_ENTRY_EDGES, DEFAULT_FIRST_WINDOW,
                        DEFAULT_LAMBDA_TOKENS, DEFAULT_LINE_POSITIONS, DEFAULT_SKIPS, count_rich)
from lmkit.scoring import context_rows, sparse_log_proba
from lmkit.tokenizer import Tokenizer
from lmkit.train import heldout_lines


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ppl(params, seqs, tok):
    rows, targets, _ = context_rows(params.groups, params.keys, seqs, tok.vocab_size, tok.bos_id,
                                    tok.eos_id)
    return math.exp(-float(sparse_log_proba(params, rows, targets).mean()))


def build(data, tok, a, *, context, skips, clusterings, buckets, order=None, first_window=1,
          lines=()):
    """One row: count (one buffer, clusters from its bigram counts, line positions ``lines``)
    and fit. Returns (params, build CPU s)."""
    t = time.process_time()
    counts, _ = count_rich([data["train"]], tok.vocab_size, tok.bos_id, tok.eos_id,
                           order=order or a.order, context=context, first_window=first_window,
                           skips=skips, clusterings=clusterings, seed=a.seed,
                           piece_bytes=tok.piece_bytes() if lines else None, line_positions=lines)
    if context == 0 and not skips and not clusterings:
        params = solve_ngram(counts)  # exact MKN, lambdas 1
    else:
        entry = tuple(a.entry_edges) if a.entry_edges and not buckets else None
        params = fit_rich_weighted(counts, data["held"], tok.bos_id, tok.eos_id, entry_edges=entry,
                                   bucket_edges=buckets, log=log)
    return params, time.process_time() - t


def cli_vs_kenlm(split: dict, tok, a, name: str) -> None:
    """The side-by-side rows (see the module docstring); table on stdout."""
    import os
    import re
    import shutil
    import tempfile
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ngram import timed
    repo = Path(__file__).resolve().parents[1]
    py = [sys.executable, "-m", "lmkit.cli"]
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    kb = Path(a.kenlm_bin)
    work = Path(tempfile.mkdtemp(prefix="quality-"))
    try:
        for s_ in ("train", "valid", "test"):
            (work / f"{s_}.txt").write_text("".join(x + "\n" for x in split[s_]), encoding="utf-8")
        tok_path = tok.save(work / "tok")
        ids = {}
        for s_ in ("train", "valid", "test"):
            ids[s_] = timed(py + ["spm-encode", "--model", tok_path, "--input", work / f"{s_}.txt",
                                  "--output", work / f"{s_}.ids"], env=env)
        enc = ids["train"]["cpu"]
        rows, lmplz5 = [], None
        for n in a.kenlm_orders:
            log(f"== KenLM lmplz -o {n}")
            lm = timed([kb / "lmplz", "-o", n, "-S", "1G", "-T", work, "--discount_fallback"],
                       stdin=work / "train.ids", stdout=work / f"k{n}.arpa")
            ppl_ = {}
            for s_ in ("valid", "test"):
                q = timed([kb / "query", "-v", "summary", work / f"k{n}.arpa"],
                          stdin=work / f"{s_}.ids")
                ppl_[s_] = float(re.search(r"Perplexity including OOVs:\s*([0-9.]+)",
                                           q["stdout"]).group(1))
            if n == 5:
                lmplz5 = lm["cpu"]
            rows.append((f"KenLM lmplz -o {n}", ppl_["valid"], ppl_["test"], enc + lm["cpu"]))
            (work / f"k{n}.arpa").unlink()
        src = ["--input", work / "train.txt"] if a.input else ["--corpus", a.corpus]
        for label, flags in (("lmkit train (default: no model option)", []),
                             ("lmkit train --order 5", ["--order", "5"]),
                             ("lmkit train --order 5 --context 3", ["--order", "5", "--context", "3"])):
            log(f"== {label}")
            out = work / "lm"
            b = timed(py + ["train", *src, "--tokenizer", tok_path, "--output", out, *flags], env=env)
            ppl_ = {}
            for s_ in ("valid", "test"):
                ev = (["--input", work / f"{s_}.txt"] if a.input
                      else ["--corpus", a.corpus, "--split", s_])
                r = timed(py + ["eval", out, *ev, "--json"], env=env)
                ppl_[s_] = json.loads(r["stdout"])["perplexity"]
            size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
            rows.append((label, ppl_["valid"], ppl_["test"], b["cpu"], size))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = min(r[2] for r in rows if r[0].startswith("KenLM"))
    base = enc + lmplz5 if lmplz5 else None
    print(f"corpus {name}, V={tok.vocab_size}; encode (lmkit spm-encode, train) {enc:.2f} CPU s"
          + (f", lmplz -o 5 {lmplz5:.2f} CPU s" if lmplz5 else ""))
    print("| model | valid ppl | test ppl | test / best KenLM | build CPU s | x (encode + lmplz -o 5) "
          "| model folder MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[2] / best:.3f} | {r[3]:.2f} | "
              + (f"{r[3] / base:.2f}" if base else "-") + " | "
              + (f"{r[4]:.1f}" if len(r) > 4 else "-") + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="shakespeare")
    ap.add_argument("--input", nargs="+", default=None, help="own text files instead of --corpus")
    ap.add_argument("--max-lines", type=int, default=None, help="use only the first N input lines")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--context", type=int, default=3)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--coarse-clusters", type=int, nargs="*", default=[32],
                    help="second cluster table(s) for the class-bigram context (2, 0)")
    ap.add_argument("--lambda-tokens", type=int, default=DEFAULT_LAMBDA_TOKENS)
    ap.add_argument("--buckets", type=int, nargs="*", default=None,
                    help="also a row with per history-count bucket weights (edges, e.g. 2 4 16)")
    ap.add_argument("--mkn-orders", type=int, nargs="*", default=[],
                    help="extra rows: exact MKN at these orders (lmkit's MKN = KenLM lmplz's)")
    ap.add_argument("--only-mkn", action="store_true", help="only the --mkn-orders rows")
    ap.add_argument("--only-last", action="store_true", help="only the full (last ladder) row")
    ap.add_argument("--skips", nargs="*", default=None, help="skip-grams as r,s,a (default: "
                    f"{' '.join(','.join(map(str, x)) for x in DEFAULT_SKIPS)})")
    ap.add_argument("--cluster-shapes", nargs="*", default=None, help="cluster histories as m,w "
                    f"(default: {' '.join(','.join(map(str, x)) for x in DEFAULT_CLUSTER_SHAPES)})")
    ap.add_argument("--entry-edges", type=int, nargs="*", default=list(DEFAULT_ENTRY_EDGES),
                    help="one weight per group x entry-count bucket (lower bounds); none given: "
                         "one weight per group")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--kenlm-bin", default=None, help="folder with lmplz and query")
    ap.add_argument("--kenlm-orders", type=int, nargs="*", default=[3, 4, 5, 6])
    ap.add_argument("--cli-only", action="store_true",
                    help="only the side-by-side CLI and KenLM rows (needs --kenlm-bin)")
    a = ap.parse_args()

    if a.input:
        lines = [x for x in load_corpus(input=a.input)][: a.max_lines]
        split = {"train": [x for i, x in enumerate(lines) if i % 20 < 18],
                 "valid": lines[18::20], "test": lines[19::20]}
        name = f"--input ({len(a.input)} files, {len(lines)} lines)"
    else:
        split = {s: list(load_corpus(corpus=a.corpus, split=s)) for s in ("train", "valid", "test")}
        name = a.corpus
    log(f"corpus {name}: " + " / ".join(f"{len(v)}" for v in split.values()) + " lines")
    tok = Tokenizer.train(split["train"], vocab_size=a.vocab_size, seed=a.seed)
    if a.cli_only:
        if not a.kenlm_bin:
            raise SystemExit("--cli-only needs --kenlm-bin DIR")
        return cli_vs_kenlm(split, tok, a, name)
    data = {s: tok.encode_batch(v) for s, v in split.items()}
    data["held"] = tok.encode_batch(heldout_lines(split["valid"], a.lambda_tokens, tok))
    n_tok = {s: sum(len(x) + 1 for x in data[s]) for s in ("train", "valid", "test")}
    log(f"tokens {n_tok}, held-out for the weights {sum(len(x) + 1 for x in data['held'])}")

    skips = DEFAULT_SKIPS if a.skips is None else tuple(
        tuple(int(v) for v in x.split(",")) for x in a.skips)
    shapes = DEFAULT_CLUSTER_SHAPES if a.cluster_shapes is None else tuple(
        tuple(int(v) for v in x.split(",")) for x in a.cluster_shapes)
    fine = ((a.clusters, shapes),)
    both = fine + tuple((c, ((2, 0),)) for c in a.coarse_clusters)
    no = dict(skips=(), clusterings=(), buckets=None)
    fw = DEFAULT_FIRST_WINDOW
    ladder = [(f"MKN order {a.order} (exact)", dict(no, context=0)),
              (f"+ windows 1..{a.context}", dict(no, context=a.context)),
              (f"+ skip-grams {list(skips)}", dict(no, context=a.context, skips=skips)),
              (f"+ cluster histories {list(shapes)}, C={a.clusters}",
               dict(no, context=a.context, skips=skips, clusterings=fine)),
              (f"windows {fw}..{a.context} (window 1 dropped)",
               dict(no, context=a.context, skips=skips, clusterings=fine, first_window=fw)),
              (f"+ class bigram (2, 0) on C={a.coarse_clusters}",
               dict(no, context=a.context, skips=skips, clusterings=both, first_window=fw)),
              (f"+ line positions {list(DEFAULT_LINE_POSITIONS)} (= the default)",
               dict(no, context=a.context, skips=skips, clusterings=both, first_window=fw,
                    lines=DEFAULT_LINE_POSITIONS))]
    if a.only_last:
        ladder = ladder[-1:]
    if a.only_mkn:
        ladder = []
    for n in a.mkn_orders:
        ladder.append((f"MKN order {n} (exact)", dict(no, order=n, context=0)))
    if a.buckets and not a.only_mkn:
        ladder.append((f"+ history-count x entry-count buckets, history edges {a.buckets}",
                       dict(no, context=a.context, skips=skips, clusterings=both,
                            first_window=fw, buckets=tuple(a.buckets),
                            lines=DEFAULT_LINE_POSITIONS)))
    rows = []
    for label, kw in ladder:
        log(f"== {label}")
        params, cpu = build(data, tok, a, **kw)
        size = sum(x.nbytes for x in store.params_to_arrays(params).values())
        rows.append({"model": label, "valid_ppl": ppl(params, data["valid"], tok),
                     "test_ppl": ppl(params, data["test"], tok), "build_cpu_s": cpu,
                     "size_mb": size / 1e6, "groups": [g.name for g in params.groups]})
        log(f"  {json.dumps(rows[-1])}")
    print(f"corpus {name}, V={tok.vocab_size}, tokens {n_tok}, entry-count weight edges "
          f"{a.entry_edges or 'none (one weight per group)'}")
    print("| model | valid ppl | test ppl | build CPU s | size MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['valid_ppl']:.2f} | {r['test_ppl']:.2f} | "
              f"{r['build_cpu_s']:.1f} | {r['size_mb']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
