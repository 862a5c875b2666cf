"""Explicit solve vs gradient descent from scratch vs warm start, side by side in one run.

For each context size K: (1) the explicit closed form (count + solve + lambda search); (2) gradient
descent from scratch (``zeros`` init over a learning-rate sweep, ``random`` init at the best
zeros rate), each under the same time budget; (3) warm start (explicit, then gradient). Every
solver gets the same tokenizer and the same token ids. Writes to ``--output``:

- ``results.json``: every run with its learning curve (step, epoch, train seconds, train loss,
  valid-slice perplexity and bits/byte, distance to the explicit solution);
- ``results.md``: the markdown table (best valid ppl, test ppl, bits/byte, seconds, speed-up);
- ``valid_ppl_vs_seconds_K{K}.png`` and ``distance_to_explicit_K{K}.png`` if matplotlib is
  installed (the ``plot`` extra).

Seconds are CPU seconds of this process (``time.process_time``), so that other jobs on a shared
machine do not distort the ratio; wall seconds are recorded too. Explicit = counting + closed
form + lambda search; gradient = building the context rows + training steps (periodic
validation excluded). Tokenizer training and encoding are shared and not counted. Speed-up = train seconds gradient descent needed to first
reach the explicit model's perplexity on the validation slice / explicit seconds. In the table
and plots a warm start's seconds include the explicit solve it starts from (``results.json``
keeps the fine-tune seconds alone).

Distance to explicit: ``||C(W) - C(W*)||_F / ||C(W*)||_F`` over all groups, where ``W*_k =
lambda_k S_k`` and C removes each row's mean *and* each column's mean. Row means never change
predictions; column means of W_k can be traded for b (``b + u``, ``W_k - u`` predict the same),
so b is left out and the column gauge is removed too.

    python scripts/compare.py                      # default corpus, K = 1 and 3
    python scripts/compare.py --quick              # a few minutes: V=1024, short budgets
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from lmkit import gradient as G
from lmkit.corpus import load_corpus
from lmkit.counts import count_chunk, sum_counts
from lmkit.evaluate import evaluate_lines
from lmkit.features import make_groups
from lmkit.model import LanguageModel
from lmkit.params import DenseParams
from lmkit.scoring import sparse_log_proba
from lmkit.solve import fit
from lmkit.tokenizer import Tokenizer
from lmkit.train import heldout_lines


CLOCK = time.process_time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def double_center(M: np.ndarray) -> np.ndarray:
    M = M - M.mean(axis=1, keepdims=True)
    return M - M.mean(axis=0, keepdims=True)


def explicit_run(seqs, tok, groups, valid_lines, lambda_tokens=10000, chunk=10000):
    t0, w0 = CLOCK(), time.perf_counter()
    counts = sum_counts(count_chunk(seqs[a:a + chunk], tok.vocab_size, groups, tok.bos_id, tok.eos_id)
                        for a in range(0, len(seqs), chunk))
    params = fit(counts, tok.encode_batch(heldout_lines(valid_lines, lambda_tokens, tok)))
    return params, CLOCK() - t0, time.perf_counter() - w0


def full_eval(model, valid_lines, test_lines):
    v, t = evaluate_lines(model, valid_lines), evaluate_lines(model, test_lines)
    return {"valid_ppl": v["perplexity"], "valid_bpb": v["bits_per_byte"],
            "test_ppl": t["perplexity"], "test_bpb": t["bits_per_byte"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="shakespeare")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03],
                    help="learning rates swept for gradient descent from zeros")
    ap.add_argument("--warm-lrs", type=float, nargs="+", default=[0.0003])
    ap.add_argument("--max-seconds", type=float, nargs="+", default=[40.0, 60.0],
                    help="CPU-seconds budget per gradient run, one value or one per context")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--valid-tokens", type=int, default=20000)
    ap.add_argument("--random-scale", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="V=1024, 15 s per run, 2 learning rates")
    ap.add_argument("--output", default="runs/compare")
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="only rewrite results.md and the plots of an earlier run's results.json")
    a = ap.parse_args(argv)
    if a.render:
        results = json.loads(Path(a.render).read_text())
        out = Path(a.render).parent
        (out / "results.md").write_text(table(results))
        print(table(results))
        plot(results, out)
        return
    if a.quick:
        a.vocab_size, a.max_seconds, a.lrs, a.eval_every = 1024, [15.0], [0.003, 0.01], 50
    budgets = dict(zip(a.contexts, a.max_seconds * len(a.contexts) if len(a.max_seconds) == 1
                       else a.max_seconds))
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)

    train_lines = list(load_corpus(corpus=a.corpus, split="train"))
    valid_lines = list(load_corpus(corpus=a.corpus, split="valid"))
    test_lines = list(load_corpus(corpus=a.corpus, split="test"))
    log(f"tokenizer: bpe, V={a.vocab_size}")
    tok = Tokenizer.train(train_lines, vocab_size=a.vocab_size, model_type="bpe", seed=a.seed)
    seqs = tok.encode_batch(train_lines)
    vslice = heldout_lines(valid_lines, a.valid_tokens, tok)
    vslice_bytes = sum(len(s.encode("utf-8")) + 1 for s in vslice)
    results = {"command": "python scripts/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": __import__("os").cpu_count()},
               "vocab_size": tok.vocab_size, "train_tokens": int(sum(len(s) + 1 for s in seqs)),
               "budgets": budgets, "runs": []}

    for K in a.contexts:
        groups = make_groups(K)
        log(f"=== K={K}: explicit")
        params, t_exp, wall_exp = explicit_run(seqs, tok, groups, valid_lines)
        exp_model = LanguageModel(tok, params)
        vrows, vtargets = G.rows_of(groups, tok.encode_batch(vslice), tok.vocab_size, tok.bos_id, tok.eos_id)
        exp_slice_ppl = math.exp(-sparse_log_proba(params, vrows, vtargets).mean())
        rec = {"K": K, "solver": "explicit", "seconds": t_exp, "wall_seconds": wall_exp, "epochs": 0,
               "best_valid_slice_ppl": exp_slice_ppl, **full_eval(exp_model, valid_lines, test_lines)}
        results["runs"].append(rec)
        log(f"    {t_exp:.1f}s, valid ppl {rec['valid_ppl']:.3f}, slice {exp_slice_ppl:.3f}")
        ref = [double_center(w) for w in G.explicit_dense(params)[0]]
        ref_norm = math.sqrt(sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref))

        def distance(record, W, b):
            d = sum(float(np.sum((double_center(w) - r).astype(np.float64) ** 2)) for w, r in zip(W, ref))
            record["distance_to_explicit"] = math.sqrt(d) / ref_norm

        def add_bpb(curve):
            for r in curve:
                r["valid_bpb"] = math.log(r["valid_ppl"]) * len(vtargets) / math.log(2) / vslice_bytes

        def gradient_run(init, lr, track):
            t0 = CLOCK()
            rows, targets = G.rows_of(groups, seqs, tok.vocab_size, tok.bos_id, tok.eos_id)
            W, b = G.init_params(init, groups, tok.vocab_size, explicit=params, seed=a.seed,
                                 random_scale=a.random_scale)
            t_prep = CLOCK() - t0
            w0 = time.perf_counter()
            log(f"=== K={K}: gradient init={init} lr={lr} (budget {budgets[K]}s)")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", G.ConvergenceWarning)
                W, b, curve, info = G.fit_dense(
                    W, b, rows, targets, vrows, vtargets, epochs=a.epochs, max_seconds=budgets[K],
                    lr=lr, batch_size=a.batch_size, optimizer=a.optimizer, patience=a.patience,
                    eval_every=a.eval_every, seed=a.seed, callback=distance if track else None,
                    progress=False, clock=CLOCK)
            wall = time.perf_counter() - w0  # includes periodic validation
            for r in curve:
                r["seconds"] = round(r["seconds"] + t_prep, 3)
            add_bpb(curve)
            reach = next((r["seconds"] for r in curve if r["valid_ppl"] <= exp_slice_ppl), None)
            model = LanguageModel(tok, DenseParams(list(groups), W, b, [None] * len(groups)))
            rec = {"K": K, "solver": "warm" if init == "explicit" else "gradient", "init": init,
                   "lr": lr, "seconds": info["seconds"] + t_prep, "wall_seconds_with_eval": wall,
                   "epochs": info["epochs"],
                   "steps": info["steps"], "stopped": info["stopped"],
                   "converged_warning": bool(caught), "best_valid_slice_ppl": info["best_valid_ppl"],
                   "seconds_to_explicit_ppl": reach,
                   "speedup": (reach / t_exp) if reach is not None else None,
                   **full_eval(model, valid_lines, test_lines), "curve": curve}
            log(f"    {info['steps']} steps, {info['epochs']} epochs, stopped by {info['stopped']}; "
                f"best slice ppl {info['best_valid_ppl']:.3f}, valid {rec['valid_ppl']:.3f}, "
                f"test {rec['test_ppl']:.3f}; reached explicit: {reach}")
            results["runs"].append(rec)
            return rec

        zeros = [gradient_run("zeros", lr, True) for lr in a.lrs]
        best_lr = min(zeros, key=lambda r: r["best_valid_slice_ppl"])["lr"]
        gradient_run("random", best_lr, True)
        for lr in a.warm_lrs:
            gradient_run("explicit", lr, False)
        (out / "results.json").write_text(json.dumps(results, indent=1))  # partial results survive

    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results))
    print(table(results))
    plot(results, out)


def explicit_seconds(results, K) -> float:
    return next(r["seconds"] for r in results["runs"] if r["K"] == K and r["solver"] == "explicit")


def total_seconds(results, r) -> float:
    """Seconds a run needed in all: a warm start also paid for the explicit solve it starts from."""
    return r["seconds"] + (explicit_seconds(results, r["K"]) if r["solver"] == "warm" else 0.0)


def table(results) -> str:
    lines = ["| K | solver | init | lr | best valid ppl (slice) | valid ppl | test ppl | test bits/byte "
             "| seconds | epochs | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if r["solver"] == "explicit":
            sp = "1 (reference)"
        elif r["solver"] == "warm":
            sp = "—"
        else:
            never = ("never reached (early-stopped)" if r.get("stopped") == "patience"
                     else "never reached within budget")
            sp = f"{r['speedup']:.1f}x" if r["speedup"] is not None else never
        lines.append(f"| {r['K']} | {r['solver']} | {r.get('init', '—')} | {r.get('lr', '—')} | "
                     f"{r['best_valid_slice_ppl']:.2f} | {r['valid_ppl']:.2f} | {r['test_ppl']:.2f} | "
                     f"{r['test_bpb']:.4f} | {total_seconds(results, r):.1f} | {r['epochs']:.2f} | {sp} |")
    return "\n".join(lines) + "\n"


def plot(results, out: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install 'lmkit[plot]'): skipping plots")
        return
    for K in sorted({r["K"] for r in results["runs"]}):
        runs = [r for r in results["runs"] if r["K"] == K]
        exp = next(r for r in runs if r["solver"] == "explicit")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in runs:
            if r["solver"] == "explicit":
                continue
            offset = total_seconds(results, r) - r["seconds"]  # warm: after the explicit solve
            xs = [max(c["seconds"] + offset, 1e-2) for c in r["curve"]]
            ax.plot(xs, [c["valid_ppl"] for c in r["curve"]], marker=".",
                    label=f"{r['solver']} init={r['init']} lr={r['lr']}")
        ax.scatter([exp["seconds"]], [exp["best_valid_slice_ppl"]], color="k", marker="*", s=150,
                   zorder=5, label=f"explicit ({exp['seconds']:.1f}s)")
        ax.axhline(exp["best_valid_slice_ppl"], color="k", lw=0.7, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("train CPU seconds (log)")
        ax.set_ylabel("valid perplexity (slice)")
        ax.set_title(f"K={K}, V={results['vocab_size']}: explicit vs gradient descent")
        _save(fig, ax, out / f"valid_ppl_vs_seconds_K{K}.png")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in runs:
            if r["solver"] == "gradient":
                ax.plot([c["step"] for c in r["curve"]], [c["distance_to_explicit"] for c in r["curve"]],
                        marker=".", label=f"init={r['init']} lr={r['lr']}")
        ax.set_xlabel("step")
        ax.set_ylabel("relative distance to explicit W (centred)")
        ax.set_title(f"K={K}: gradient descent from scratch vs the explicit solution")
        _save(fig, ax, out / f"distance_to_explicit_K{K}.png")



def _save(fig, ax, path) -> None:
    """Legend, tight layout, PNG, close."""
    import matplotlib.pyplot as plt
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
