"""Explicit models vs a small transformer vs the explicit + neural hybrid, by CPU seconds.

On the default corpus (shakespeare: train / valid / test splits), with the same SentencePiece ids
and convention everywhere (one line = one sequence, BOS context, EOS target counted):

1. builds the explicit bases with ``lmkit.train.train`` (``--bases``; each timed in CPU s of
   this process and its children, and wall s) and scores them on ``test``: points;
2. trains (a) the transformer from scratch and (b) one hybrid per base (``lmkit.neural``),
   same seed, same batch order, ``torch.set_num_threads(--threads)``; the runs take turns:
   every run is advanced to the first budget, then every run to the next, ... so an
   interrupted benchmark still has every run at the same budgets. At each budget the
   best-on-valid weights so far are scored on ``test`` (perplexity, bits/byte);
3. samples a few lines from every final model at the same seed;
4. writes ``--json`` after every measurement (atomically) and a plot (``--plot``, needs the
   ``plot`` extra): test perplexity against training CPU seconds (log axis), explicit models
   as points at their build CPU seconds.

    PYTHONPATH=. .venv/bin/python scripts/neural_baseline.py --budgets 60 300 1200 \\
        --json docs/neural_baseline.json --plot docs/neural_ppl_vs_cpu_seconds.png

``--deadline HH:MM`` (UTC) ends training on time on a busy machine: the runs then share the wall
time left equally and each records the CPU seconds it reached (``stopped_early``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from lmkit.corpus import load_corpus
from lmkit.evaluate import evaluate_lines

BASES = {"K3": {}, "o5c3": {"order": 5, "context": 3}, "o5": {"order": 5}}
LABELS = {"K3": "lmkit train (window K=3)", "o5c3": "lmkit train --order 5 --context 3",
          "o5": "lmkit train --order 5 (MKN)"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_now() -> float:
    """CPU seconds of this process and its finished children (the counting workers)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def test_scores(model, test_lines) -> dict:
    r = evaluate_lines(model, test_lines)
    return {"test_ppl": r["perplexity"], "test_bits_per_byte": r["bits_per_byte"],
            "test_tokens": r["tokens"]}


def build_bases(names, seed, test_lines, work: Path) -> dict:
    from lmkit.train import train
    out = {}
    for name in names:
        c0, w0 = cpu_now(), time.time()
        model = train(seed=seed, **BASES[name])
        cpu, wall = cpu_now() - c0, time.time() - w0
        model.save(work / f"base_{name}")
        out[name] = {"model": model, "row": {"name": name, "label": LABELS[name],
                                             "build_cpu_seconds": round(cpu, 1),
                                             "build_wall_seconds": round(wall, 1),
                                             **test_scores(model, test_lines)}}
        log(f"== base {name}: {out[name]['row']}")
    shas = {b["model"].tokenizer.sha256 for b in out.values()}
    assert len(shas) == 1, "every base must use the same tokenizer (same seed, same corpus)"
    return out


def parse_deadline(hhmm: str | None) -> float | None:
    """``"07:58"`` -> that UTC time today as a ``time.time()`` value (None: no deadline)."""
    if hhmm is None:
        return None
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return time.time() + ((h * 60 + m) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install 'lmkit[plot]'): no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"scratch": "black", "K3": "tab:blue", "o5c3": "tab:red", "o5": "tab:green"}
    for run, rows in results["curves"].items():
        xs = [r["cpu_seconds"] for r in rows]
        ys = [r["test_ppl"] for r in rows]
        base, _, cf = run.partition("+")
        label = "transformer from scratch" if run == "scratch" else f"hybrid on {run}"
        style = "o-" if run == "scratch" else ("s-" if cf else "s:")
        ax.plot(xs, ys, style, color=colors.get(base), label=label)
    for row in results["explicit"]:
        ax.plot([row["build_cpu_seconds"]], [row["test_ppl"]], "*", ms=14,
                color=colors.get(row["name"]), label=f"explicit {row['name']} (build)")
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds (training; explicit: build)")
    ax.set_ylabel("test perplexity (EOS counted)")
    ax.set_title("shakespeare test perplexity vs CPU seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


def merge(results: list) -> dict:
    """Several results files as one: explicit points by name, curves by run name."""
    out = {"explicit": [], "curves": {}, "samples": {}}
    for r in results:
        names = {e["name"] for e in out["explicit"]}
        out["explicit"] += [e for e in r["explicit"] if e["name"] not in names]
        out["curves"].update(r["curves"])
        out["samples"].update(r.get("samples", {}))
    return out


def markdown(results: dict) -> str:
    """The results as markdown tables: explicit points, then the curves, then the crossings."""
    out = ["| explicit model | build CPU s | build wall s | test ppl | test bits/byte |",
           "|---|---:|---:|---:|---:|"]
    for r in results["explicit"]:
        out.append(f"| {r['label']} | {r['build_cpu_seconds']} | {r['build_wall_seconds']} | "
                   f"{r['test_ppl']:.2f} | {r['test_bits_per_byte']:.4f} |")
    out += ["", "| run | budget CPU s | reached CPU s | steps | epochs | best valid ppl (sample) "
            "| test ppl | test bits/byte | scale a |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run, rows in results["curves"].items():
        label = "transformer (scratch)" if run == "scratch" else f"hybrid on {run}"
        for r in rows:
            out.append(f"| {label} | {r['budget']:g} | {r['cpu_seconds']:g} | {r['steps']} | "
                       f"{r['epochs']:.3f} | {r['best_valid_ppl']:.2f} | {r['test_ppl']:.2f} | "
                       f"{r['test_bits_per_byte']:.4f} | {r['scale']:.3f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", metavar="JSON", nargs="+", help="print the markdown tables of "
                    "results files written by this script (merged), and exit")
    ap.add_argument("--plot-only", action="store_true", help="with --table: also draw --plot")
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 300, 1200])
    ap.add_argument("--bases", nargs="+", default=["o5c3", "K3", "o5"], choices=list(BASES))
    ap.add_argument("--crossfit", type=int, default=0, metavar="K",
                    help="hybrids: explicit term of the training lines from K fold models "
                         "that did not count them (0 = the full explicit model)")
    ap.add_argument("--no-scratch", action="store_true", help="skip the transformer from scratch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=float, default=60.0)
    ap.add_argument("--valid-tokens", type=int, default=10000)
    ap.add_argument("--num-samples", type=int, default=3)
    ap.add_argument("--deadline", default=None, metavar="HH:MM",
                    help="UTC wall-clock time by which training and its test scoring end: the runs "
                         "share the time left equally, leg by leg; what they reached is recorded "
                         "(stopped_early); samples, models and the plot are written after it")
    ap.add_argument("--work", default="/tmp/lmkit_neural_baseline", help="saved models go here")
    ap.add_argument("--json", default="docs/neural_baseline.json")
    ap.add_argument("--plot", default="docs/neural_ppl_vs_cpu_seconds.png")
    args = ap.parse_args(argv)
    if args.table:
        merged = merge([json.loads(Path(p).read_text()) for p in args.table])
        print(markdown(merged))
        if args.plot_only:
            plot(merged, Path(args.plot))
        return 0

    import torch

    from lmkit import neural
    from lmkit.neural.fit import Trainer
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.json)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    train_lines = list(load_corpus(split="train"))
    valid_lines = list(load_corpus(split="valid"))
    test_lines = list(load_corpus(split="test"))
    results = {"command": " ".join(sys.argv), "args": vars(args), "torch": torch.__version__,
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "explicit": [], "curves": {}, "samples": {}}

    bases = build_bases(args.bases, args.seed, test_lines, work)
    results["explicit"] = [b["row"] for b in bases.values()]
    write_json(out, results)

    tok = next(iter(bases.values()))["model"].tokenizer
    opts = {"seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
            "eval_every": args.eval_every, "valid_tokens": args.valid_tokens}
    runs = {} if args.no_scratch else {"scratch": neural.NeuralLM.create(tok, seed=args.seed)}
    suffix = f"+cf{args.crossfit}" if args.crossfit else ""
    for name, b in bases.items():
        runs[name + suffix] = neural.NeuralLM.create(tok, explicit=b["model"], seed=args.seed)
    trainers = {}
    for name, lm in runs.items():
        log(f"== preparing {name}: {lm.describe()}")
        c0 = time.process_time()
        trainers[name] = Trainer(lm, train_lines, valid_lines, **opts,
                                 crossfit=0 if name == "scratch" else args.crossfit)
        results.setdefault("prep_cpu_seconds", {})[name] = round(time.process_time() - c0, 1)
        results["curves"][name] = []
    deadline = parse_deadline(args.deadline)
    eval_wall = 0.0  # the longest test evaluation so far (wall s), kept free before the deadline
    for budget in sorted(args.budgets):
        if deadline is not None and time.time() >= deadline:
            break
        for i, (name, tr) in enumerate(trainers.items()):
            w0 = time.time()
            left = len(trainers) - i  # legs left in this round, each followed by a test eval
            share = None if deadline is None else w0 + (deadline - w0) / left - eval_wall
            before = tr.spent
            tr.advance(budget, wall_deadline=share)
            if tr.spent == before:
                continue  # no time left for this leg: nothing new to score
            w1 = time.time()
            row = {"budget": budget, "stopped_early": tr.spent < budget,
                   "cpu_seconds": round(tr.spent, 1), "steps": tr.step,
                   "epochs": round(tr.epochs, 3), "best_valid_ppl": tr.best["ppl"],
                   "best_at_cpu_seconds": round(tr.best["seconds"], 1),
                   "scale": float(tr.best["state"]["scale"]),
                   "train_wall_seconds_this_leg": round(w1 - w0, 1),
                   **tr.with_best(lambda lm: test_scores(lm, test_lines))}
            eval_wall = max(eval_wall, time.time() - w1)
            results["curves"][name].append(row)
            log(f"== {name} @ {budget:g} CPU s: {row}")
            write_json(out, results)
    for name, tr in trainers.items():
        lm = tr.finish(max_seconds=max(args.budgets))
        lm.save(work / f"neural_{name}")
        results["samples"][name] = lm.sample(max_tokens=40, seed=args.seed,
                                             num_samples=args.num_samples)
    for name, b in bases.items():
        results["samples"][f"explicit_{name}"] = b["model"].sample(
            max_tokens=40, seed=args.seed, num_samples=args.num_samples)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(out, results)
    plot(results, Path(args.plot))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
