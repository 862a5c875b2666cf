"""Window features vs n-gram (modified Kneser-Ney) suffix features vs both, on the default corpus.

Trains every model on ``train``, tunes only on ``valid`` (the window lambdas), reports ``test``:
held-out perplexity (EOS counted), bits per byte, build seconds (counting + solving + lambda
search, tokenization excluded: it is shared), model size (bytes of the saved arrays) and scoring
speed (tokens/s of the generic sparse scorer that ``lmkit eval`` uses). Pure n-gram models are
also exported to ARPA and scored by ``kenlm.Model`` (column ``kenlm(ARPA) ppl``; must equal
lmkit's). With ``--lmplz PATH`` KenLM's own builder is run on the same token ids for comparison.

Prints one markdown table on stdout (progress on stderr); ``--json FILE`` saves the rows.

    nice -n 10 .venv/bin/python scripts/ngram_vs_window.py --lmplz /tmp/kenlm/build/bin/lmplz
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from lmkit.io import store
from lmkit.corpus import load_corpus
from lmkit.counts import count_chunk, sum_counts
from lmkit.explicit import choose_lambdas, solve_explicit
from lmkit.features import make_groups
from lmkit.ngram.arpa import arpa_words, write_arpa
from lmkit.ngram.mkn import solve_ngram
from lmkit.scoring import context_rows, sparse_log_proba
from lmkit.tokenizer import Tokenizer
from lmkit.train import heldout_lines


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """CPU seconds of this process (the machine is shared, so wall time is noisy) and wall."""

    def __enter__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def build(name, groups, data, tok, *, tune_all=False, lambda_tokens=20000, prune=None):
    """Count + solve (+ choose window lambdas on valid). Returns (params, cpu s, wall s)."""
    with Clock() as c:
        parts = (count_chunk(data["train"][i:i + 10000], tok.vocab_size, groups, tok.bos_id, tok.eos_id)
                 for i in range(0, len(data["train"]), 10000))
        counts = sum_counts(parts)
        ngram = any(g.name.startswith("suffix") for g in groups)
        params = solve_ngram(counts, prune=prune) if ngram else solve_explicit(counts)
        fixed = params.info.get("lambda_fixed")
        if len(groups) > 1 and not (fixed and all(fixed)):
            rows, targets, _ = context_rows(groups, params.keys, data["held"], tok.vocab_size,
                                            tok.bos_id, tok.eos_id)
            init = params.info.get("lambda_init")
            lam, trace = choose_lambdas(params, rows, targets, init=init,
                                        fixed=None if tune_all else
                                        [g.name.startswith("suffix") for g in groups])
            params = params.with_lambdas(lam)
            log(f"  {name}: lambdas {np.round(lam, 3).tolist()}, valid ppl "
                f"{math.exp(trace[0][1]):.2f} -> {math.exp(trace[-1][1]):.2f}")
    return params, c.cpu, c.wall


def evaluate(params, groups, data, tok):
    with Clock() as c:
        rows, targets, _ = context_rows(groups, params.keys, data["test"], tok.vocab_size,
                                        tok.bos_id, tok.eos_id)
        lp = sparse_log_proba(params, rows, targets)
    nll = -float(lp.sum())
    return {"tokens": len(lp), "nll_nats": nll, "ppl": math.exp(nll / len(lp)),
            "bpb": nll / math.log(2) / data["test_bytes"], "tok_per_s": len(lp) / c.cpu}, lp


def kenlm_score(arpa, data, tok):
    import kenlm
    km = kenlm.Model(arpa)
    words = arpa_words(tok)
    with Clock() as c:
        lp10 = np.concatenate([[s[0] for s in km.full_scores(" ".join(words[x]), bos=True, eos=True)]
                               for x in data["test"]])
    nll = -float(lp10.sum()) * math.log(10)
    return {"ppl": math.exp(nll / len(lp10)), "bpb": nll / math.log(2) / data["test_bytes"],
            "tok_per_s": len(lp10) / c.cpu}, lp10


def run_lmplz(lmplz, order, data, tok, tmp, prune=None):
    words = arpa_words(tok)
    text = os.path.join(tmp, "train_ids.txt")
    if not os.path.exists(text):
        with open(text, "w") as f:
            for s in data["train"]:
                f.write(" ".join(words[s]) + "\n")
    arpa = os.path.join(tmp, f"lmplz{order}{'p' if prune else ''}.arpa")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with open(text) as fin, open(arpa, "w") as fout:
        subprocess.run([lmplz, "-o", str(order), "-S", "2G", "-T", tmp, "--discount_fallback"]
                       + (["--prune"] + [str(x) for x in prune] if prune else []),
                       stdin=fin, stdout=fout, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return arpa, cpu, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="shakespeare")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--context", type=int, default=3, help="window groups 1..K")
    ap.add_argument("--lambda-tokens", type=int, default=20000, help="valid tokens for the lambdas")
    ap.add_argument("--lmplz", default=None, help="path to KenLM's lmplz binary (optional)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--prune", type=int, nargs="+", default=[0, 0, 1],
                    help="also report the highest order pruned with these thresholds")
    ap.add_argument("--finetune-epochs", type=int, default=3,
                    help="sparse fine-tune of the best combined model (0 = skip)")
    ap.add_argument("--finetune-split", choices=["halves", "interleaved"], default="halves",
                    help="fine-tune on the first half of valid and stop on the second (halves), "
                         "or on even / odd lines (interleaved: nearly the same text)")
    ap.add_argument("--finetune-lr", type=float, default=0.05, help="AdaGrad step size")
    ap.add_argument("--only-finetune", action="store_true",
                    help="only the best combined model and its fine-tune")
    ap.add_argument("--skip-lmkit", action="store_true", help="only run lmplz (needs --lmplz)")
    a = ap.parse_args()

    train = list(load_corpus(corpus=a.corpus, split="train"))
    valid = list(load_corpus(corpus=a.corpus, split="valid"))
    test = list(load_corpus(corpus=a.corpus, split="test"))
    log(f"corpus {a.corpus}: {len(train)} / {len(valid)} / {len(test)} lines; training tokenizer")
    tok = Tokenizer.train(train, vocab_size=a.vocab_size, seed=a.seed)
    data = {"train": tok.encode_batch(train), "test": tok.encode_batch(test),
            "held": tok.encode_batch(heldout_lines(valid, a.lambda_tokens, tok)),
            "valid": tok.encode_batch(valid),
            "test_bytes": sum(len(x.encode("utf-8")) + 1 for x in test)}

    rows = []
    tmp = tempfile.mkdtemp(prefix="ngram_vs_window.")

    def add(name, groups, **kw):
        log(f"== {name}")
        params, cpu, wall = build(name, groups, data, tok, lambda_tokens=a.lambda_tokens, **kw)
        res, lp = evaluate(params, groups, data, tok)
        size = sum(x.nbytes for x in store.params_to_arrays(params).values())
        row = {"model": name, "ppl": res["ppl"], "bpb": res["bpb"], "build_cpu_s": cpu,
               "build_wall_s": wall, "size_mb": size / 1e6, "score_tok_s": res["tok_per_s"],
               "tokens": res["tokens"], "lambdas": [float(x) for x in params.lambdas]}
        if all(g.name.startswith("suffix") for g in groups):
            arpa = os.path.join(tmp, f"lmkit{len(groups) + 1}.arpa")
            write_arpa(types_model(params, tok), arpa)
            kres, lp10 = kenlm_score(arpa, data, tok)
            row["kenlm_arpa_ppl"] = kres["ppl"]
            row["max_abs_log10_diff"] = float(np.abs(lp / math.log(10) - lp10).max())
            os.remove(arpa)
        rows.append(row)
        log(f"  {json.dumps(row)}")
        return params, cpu

    if a.only_finetune:
        a.skip_lmkit, a.lmplz, n = True, None, max(a.orders)
        best, best_cpu = add(f"MKN {n} + window K={a.context} (all lambdas tuned)",
                             make_groups(a.context, n), tune_all=True)
        finetune_row(best, best_cpu, make_groups(a.context, n), valid, tok, data, rows, a)
    if not a.skip_lmkit:
        add(f"window K={a.context}", make_groups(a.context, None))
        for n in a.orders:
            add(f"MKN order {n}", make_groups(0, n))
        if a.prune:
            n = max(a.orders)
            add(f"MKN order {n}, --prune {' '.join(map(str, a.prune))}", make_groups(0, n),
                prune=a.prune)
        for n in sorted({min(a.orders), max(a.orders)}):
            add(f"MKN {n} + window K={a.context} (window lambdas tuned)", make_groups(a.context, n))
            best, best_cpu = add(f"MKN {n} + window K={a.context} (all lambdas tuned)",
                                 make_groups(a.context, n), tune_all=True)
    if a.lmplz:
        runs = [(n, None) for n in a.orders] + ([(max(a.orders), a.prune)] if a.prune else [])
        for n, prune in runs:
            name = f"KenLM lmplz order {n}" + (f", --prune {' '.join(map(str, prune))}" if prune else "")
            log(f"== {name}")
            arpa, cpu, wall = run_lmplz(a.lmplz, n, data, tok, tmp, prune)
            kres, _ = kenlm_score(arpa, data, tok)
            rows.append({"model": name, "ppl": kres["ppl"], "bpb": kres["bpb"],
                         "build_cpu_s": cpu, "build_wall_s": wall,
                         "size_mb": os.path.getsize(arpa) / 1e6, "score_tok_s": kres["tok_per_s"],
                         "kenlm_arpa_ppl": kres["ppl"]})
            log(f"  {json.dumps(rows[-1])}")
            os.remove(arpa)

    if a.finetune_epochs and not a.skip_lmkit:  # last: the slowest row
        finetune_row(best, best_cpu, make_groups(a.context, max(a.orders)), valid, tok, data,
                     rows, a)
    print("| model | test ppl | bits/byte | build s (CPU) | size MB | scoring tok/s | kenlm(ARPA) ppl |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        k = f"{r['kenlm_arpa_ppl']:.3f}" if "kenlm_arpa_ppl" in r else "–"
        print(f"| {r['model']} | {r['ppl']:.3f} | {r['bpb']:.4f} | {r['build_cpu_s']:.1f} | "
              f"{r['size_mb']:.1f} | {r['score_tok_s']:,.0f} | {k} |")
    log(f"test: {len(np.concatenate([[0]] + [x + [0] for x in data['test']])) - 1} tokens, {data['test_bytes']} bytes; sizes for lmkit = bytes of "
        "the saved arrays (float64 S + int64 keys), for lmplz = ARPA text size")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


def finetune_row(params, base_cpu, groups, valid, tok, data, rows, a):
    """Support-only AdaGrad on even valid lines, early stopping on odd valid lines; test report."""
    from lmkit.experiments.sparse_finetune import finetune_sparse
    name = (f"MKN {max(a.orders)} + window K={a.context} (all lambdas tuned) + sparse fine-tune "
            f"({a.finetune_split} of valid, lr {a.finetune_lr:g})")
    log(f"== {name}")
    enc = data["valid"]
    if a.finetune_split == "halves":
        tune, stop = enc[:len(enc) // 2], enc[len(enc) // 2:]
    else:
        tune, stop = enc[0::2], enc[1::2]
    with Clock() as c:
        r, t, _ = context_rows(groups, params.keys, tune, tok.vocab_size, tok.bos_id, tok.eos_id)
        sr, st, _ = context_rows(groups, params.keys, stop, tok.vocab_size, tok.bos_id, tok.eos_id)
        tuned, trace = finetune_sparse(params, r, t, sr, st, max_iter=a.finetune_epochs,
                                       lr=a.finetune_lr, random_state=a.seed)
    log(f"  stopping-text ppl per epoch: {[round(math.exp(x[1]), 3) for x in trace]}")
    res, _ = evaluate(tuned, groups, data, tok)
    size = sum(x.nbytes for x in store.params_to_arrays(tuned).values())
    rows.append({"model": name, "ppl": res["ppl"], "bpb": res["bpb"],
                 "build_cpu_s": base_cpu + c.cpu, "build_wall_s": float("nan"),
                 "size_mb": size / 1e6, "score_tok_s": res["tok_per_s"], "tokens": res["tokens"],
                 "finetune_trace": trace})
    log(f"  {json.dumps(rows[-1])}")


def types_model(params, tok):
    import types
    return types.SimpleNamespace(params=params, tokenizer=tok)


if __name__ == "__main__":
    main()
