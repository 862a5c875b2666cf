"""Scratch transformer vs explicit-init transformer vs hybrids, side by side by CPU seconds.

Runs: ``scratch`` (random init), ``explicit-init``, ``hybrid`` (the residual hybrid, ``--solver
residual --hybrid residual``) and ``mixed`` (the default hybrid, ``--solver residual``: the
explicit-init network, its checkpoints chosen by the valid perplexity of its mixture with the
base; each mark scores the network alone and the mixture, weight refitted on valid).

One method per call (``--run``), so runs go one at a time on a shared machine; every call
uses the same explicit base folder (``--base``: its tokenizer, and the frozen model of the
hybrid), the same seed, the same data (the default corpus: train / valid / test splits) and
``torch.set_num_threads(--threads)``. For each CPU-second mark in ``--budgets`` the run:

1. trains up to the mark (``lmkit.neural.fit.Trainer``: CPU s of the training steps; the
   explicit init's CPU s are charged too; validation, test scoring and the hybrid's
   cross-fitting preparation are not);
2. writes a checkpoint (``WORK/RUN/checkpoint.pt``, atomically; weights, optimiser, batch
   order and RNG state, read back with ``torch.load(weights_only=True)``);
3. scores the best-on-valid weights so far on ``test`` (perplexity with EOS, bits/byte) and
   records steps, CPU s and wall s in ``--json`` (atomically, merged with the other runs).

An interrupted run (Ctrl-C, a kill, a reboot) called again with the same arguments resumes from
its last checkpoint and skips the marks already recorded: the same seed and batch order give the
same weights as an uninterrupted run. The hybrid's fold models are cached in ``WORK/folds<k>``.

    PYTHONPATH=. lmkit train --output /tmp/neural/default         # the explicit base (~40 s)
    for RUN in scratch explicit-init hybrid; do
      PYTHONPATH=. nice python scripts/neural_baseline.py --run $RUN --base /tmp/neural/default \\
          --budgets 60 150 300 --threads 1 --json docs/neural_runs.json
    done
    PYTHONPATH=. python scripts/neural_baseline.py --table docs/neural_runs.json \\
        --plot docs/neural_ppl_vs_cpu_seconds.png

The long runs of issue 22: ``--budgets 60 300 1200 2400 4800`` (resumable, so they can be done in
pieces).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNS = ("scratch", "explicit-init", "hybrid", "mixed")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"explicit": {}, "runs": {}}


def test_scores(model, test_lines) -> dict:
    from lmkit.evaluate import evaluate_lines
    r = evaluate_lines(model, test_lines)
    return {"test_ppl": r["perplexity"], "test_bits_per_byte": r["bits_per_byte"],
            "test_tokens": r["tokens"]}


def mix_scores(net, base, valid_lines, test_lines) -> dict:
    """The network mixed linearly with its explicit base (``lmkit interpolate``: one weight fitted
    by EM on the valid split), scored on test: the other way to pair the two models."""
    from lmkit.evaluate import evaluate_lines
    from lmkit.interpolate import interpolate_linear
    mix = interpolate_linear([net, base], valid_lines)
    r = evaluate_lines(mix, test_lines)
    return {"mix_weight": float(mix.weights[0]), "mix_test_ppl": r["perplexity"],
            "mix_test_bits_per_byte": r["bits_per_byte"]}


def save_checkpoint(path: Path, data: dict) -> None:
    import torch
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install 'lmkit[plot]'): no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"scratch": ("o-", "black", "transformer, random init"),
              "mixed": ("D-", "tab:green", "explicit-init network of the mixed hybrid"),
              "explicit-init": ("^-", "tab:orange", "transformer, explicit init"),
              "hybrid": ("s-", "tab:red", "hybrid on the default model")}
    for run, r in results["runs"].items():
        st, color, label = styles.get(run, ("x-", None, run))
        rows = r["rows"]
        ax.plot([x["cpu_seconds"] for x in rows], [x["test_ppl"] for x in rows], st,
                color=color, label=label)
        mixed = [x for x in rows if "mix_test_ppl" in x]
        if mixed:
            ax.plot([x["cpu_seconds"] for x in mixed], [x["mix_test_ppl"] for x in mixed],
                    st[0] + "--", color=color, label=label + ", mixed with the explicit model")
    e = results.get("explicit") or {}
    if e:
        ax.axhline(e["test_ppl"], color="tab:blue", ls="--",
                   label=f"explicit default model ({e['test_ppl']:.1f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training CPU seconds (1 thread)")
    ax.set_ylabel("test perplexity (EOS counted)")
    ax.set_title("shakespeare test perplexity vs CPU seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


def mixed(row: dict) -> str:
    if "mix_test_ppl" not in row:
        return "—"
    return f"{row['mix_test_ppl']:.2f} ({row['mix_weight']:.2f})"


def markdown(results: dict) -> str:
    e = results.get("explicit") or {}
    out = []
    if e:
        out += ["| explicit base | test ppl | test bits/byte |", "|---|---:|---:|",
                f"| {e['label']} | {e['test_ppl']:.2f} | {e['test_bits_per_byte']:.4f} |", ""]
    out += ["| run | mark CPU s | CPU s | steps | wall s | epochs | best valid ppl (sample) "
            "| test ppl | test bits/byte | mixed with the base: test ppl (network weight) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run, r in results["runs"].items():
        for x in r["rows"]:
            out.append(f"| {run} | {x['budget']:g} | {x['cpu_seconds']:g} | {x['steps']} | "
                       f"{x['wall_seconds']:g} | {x['epochs']:.3f} | {x['best_valid_ppl']:.2f} | "
                       f"{x['test_ppl']:.2f} | {x['test_bits_per_byte']:.4f} | {mixed(x)} |")
    return "\n".join(out + ["", answer(results)])


def reached(rows: list, key: str, target: float) -> str:
    """CPU s at which ``key`` (a test perplexity) first reaches ``target``: interpolated
    linearly in log CPU s between the two marks around the crossing; ``> LAST`` if never."""
    prev = None
    for x in rows:
        if key not in x:
            continue
        if x[key] <= target:
            if prev is None or prev[key] == x[key]:
                return f"≤ {x['cpu_seconds']:g}"
            f = (prev[key] - target) / (prev[key] - x[key])
            t = np.exp(np.log(prev["cpu_seconds"]) + f * (np.log(x["cpu_seconds"])
                                                          - np.log(prev["cpu_seconds"])))
            return f"{t:.0f} (between marks)"
        prev = x
    last = [x["cpu_seconds"] for x in rows if key in x]
    return f"> {last[-1]:g} (not reached)" if last else "—"


def answer(results: dict) -> str:
    """The CPU s each method needs to reach the explicit default model's test perplexity and
    0.95 of it (issue 22's question)."""
    e = (results.get("explicit") or {}).get("test_ppl")
    if not e:
        return ""
    out = [f"| method | CPU s to test ppl {e:.1f} (the explicit model) | CPU s to {0.95 * e:.1f} "
           "(0.95×) |", "|---|---:|---:|"]
    for run, r in results["runs"].items():
        rows = r["rows"]
        hybrid = run.startswith("mixed")  # its test_ppl is its network's, the mixture is it
        out.append(f"| {run}{' (its network alone)' if hybrid else ''} | "
                   f"{reached(rows, 'test_ppl', e)} | {reached(rows, 'test_ppl', 0.95 * e)} |")
        if any("mix_test_ppl" in x for x in rows):
            out.append(f"| {run}{' (the hybrid)' if hybrid else ' mixed with the explicit model'} | "
                       f"{reached(rows, 'mix_test_ppl', e)} | "
                       f"{reached(rows, 'mix_test_ppl', 0.95 * e)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", choices=RUNS)
    ap.add_argument("--table", metavar="JSON", help="print the markdown table of a results file "
                    "(and draw --plot if given), then exit")
    ap.add_argument("--base", help="explicit model folder (lmkit train --output DIR)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 150, 300])
    ap.add_argument("--crossfit", type=int, default=None,
                    help="hybrid: fold models for the training lines' explicit term "
                         "(default: lmkit's default, NeuralConfig.crossfit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=float, default=30.0)
    ap.add_argument("--valid-tokens", type=int, default=10000)
    ap.add_argument("--num-samples", type=int, default=3)
    ap.add_argument("--work", default="/tmp/neural/runs", help="checkpoints and fold models")
    ap.add_argument("--json", default="docs/neural_runs.json")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--mix-from", type=float, default=1200, metavar="CPU_S",
                    help="from this mark on, also score the network mixed linearly with the "
                         "explicit base (weight fitted on valid; not for the hybrid; every "
                         "mark for the mixed hybrid)")
    ap.add_argument("--warmup", type=int, default=None, metavar="STEPS",
                    help="warm-up steps (default: the trainer's, fit.lr_factor)")
    ap.add_argument("--schedule", choices=("budget", "anytime"), default="budget",
                    help="budget: warm-up and cosine decay to the largest of --budgets (the "
                         "smaller marks are checkpoints of that run, as lmkit train's); "
                         "anytime: the rsqrt schedule of the earlier sessions")
    args = ap.parse_args(argv)
    out = Path(args.json if args.table is None else args.table)
    if args.table:
        results = read_json(out)
        print(markdown(results))
        if args.plot:
            plot(results, Path(args.plot))
        return 0
    if args.run is None or args.base is None:
        ap.error("--run and --base are needed (or --table)")

    import torch

    from lmkit.config import NeuralConfig
    from lmkit.corpus import load_corpus
    from lmkit.model import LanguageModel
    from lmkit.neural.fit import Trainer
    from lmkit.neural.lm import NeuralLM
    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.run
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    train_lines = list(load_corpus(split="train"))
    valid_lines = list(load_corpus(split="valid"))
    test_lines = list(load_corpus(split="test"))
    base = LanguageModel.load(args.base)
    results = read_json(out)
    if not results["explicit"]:
        results["explicit"] = {"label": f"lmkit train ({args.base})",
                               **test_scores(base, test_lines)}
        write_json(out, results)

    crossfit = NeuralConfig().crossfit if args.crossfit is None else args.crossfit
    init = "explicit" if args.run in ("explicit-init", "mixed") else "random"
    lm = NeuralLM.create(base.tokenizer, explicit=base if args.run == "hybrid" else None,
                         seed=args.seed, init=init)
    opts = {"seed": args.seed, "eval_every": args.eval_every, "valid_tokens": args.valid_tokens,
            "init": init, "crossfit": crossfit if args.run == "hybrid" else 0,
            "horizon": (max(args.budgets), None) if args.schedule == "budget" else None,
            "mix": base if args.run == "mixed" else None, "warmup": args.warmup}
    c0 = time.process_time()
    tr = Trainer(lm, train_lines, valid_lines, **opts, log=log,
                 crossfit_cache=Path(args.work) / f"folds{crossfit}")
    prep = time.process_time() - c0
    ck_path = work / "checkpoint.pt"
    wall = 0.0
    if ck_path.is_file():
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        tr.resume(ck["trainer"])
        wall = float(ck["wall_seconds"])
        log(f"== {args.run}: resumed at step {tr.step}, {tr.spent:.1f} CPU s")
    run = results["runs"].setdefault(args.run, {"rows": []})
    run.update(options=tr.options, threads=args.threads, command=" ".join(sys.argv),
               prep_cpu_seconds_last_call=round(prep, 1), torch=torch.__version__,
               model=lm.describe())
    done = {r["budget"] for r in run["rows"]}
    for budget in sorted(args.budgets):
        if budget in done:
            continue
        w0 = time.time()
        tr.advance(budget)
        wall += time.time() - w0
        save_checkpoint(ck_path, {"trainer": tr.checkpoint(), "wall_seconds": wall})
        row = {"budget": budget, "cpu_seconds": round(tr.spent, 1), "steps": tr.step,
               "wall_seconds": round(wall, 1), "epochs": round(tr.epochs, 3),
               "best_valid_ppl": tr.best["ppl"], "best_step": tr.best["step"],
               "best_at_cpu_seconds": round(tr.best["seconds"], 1),
               "scale": float(tr.best["state"]["scale"]),
               "valid_mix_weight": tr.best.get("weight"),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **tr.with_best(lambda m: test_scores(m, test_lines))}
        if args.run == "mixed" or (args.run != "hybrid" and budget >= args.mix_from):
            row.update(tr.with_best(lambda m: mix_scores(m, base, valid_lines, test_lines)))
        results = read_json(out)  # another run may have written meanwhile
        results["runs"].setdefault(args.run, run)["rows"] = run["rows"] = sorted(
            run["rows"] + [row], key=lambda r: r["budget"])
        results["runs"][args.run].update({k: v for k, v in run.items() if k != "rows"})
        write_json(out, results)
        log(f"== {args.run} @ {budget:g} CPU s: {row}")
    tr.finish(max_seconds=max(args.budgets))
    results = read_json(out)
    results["runs"][args.run]["history"] = tr.history
    if args.run == "mixed":  # the hybrid's samples are the mixture's (lmkit train's folder)
        from lmkit.interpolate import interpolate_linear
        lm = interpolate_linear([base, lm], valid_lines)
    results["runs"][args.run]["samples"] = lm.sample(max_tokens=40, seed=args.seed,
                                                     num_samples=args.num_samples)
    write_json(out, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
