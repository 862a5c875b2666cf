"""Size vs perplexity: entropy pruning (lmkit prune) vs count pruning (lmkit train --prune).

Trains an unpruned order-N model and count-pruned ones (``--prune`` thresholds, as KenLM's
lmplz) on the default corpus with one tokenizer, entropy-prunes the unpruned model to the
same number of n-grams as each count-pruned one (threshold found by bisection), and prints
test perplexities side by side; writes a plot when matplotlib is installed.

    python scripts/prune_curve.py [--order 5] [--out /tmp/prune_curve] [--plot docs/prune_curve.png]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmkit.corpus import load_corpus  # noqa: E402
from lmkit.model import LanguageModel  # noqa: E402
from lmkit.ngram.prune import entropy_criteria, n_ngrams, prune_entropy  # noqa: E402
from lmkit.train import train  # noqa: E402

COUNT_PRUNES = [[0, 0, 0, 1], [0, 0, 1], [0, 1], [0, 1, 2], [0, 2, 3], [0, 3, 5], [0, 5, 10]]


def entropy_pruned_to(model, crit, size: int):
    """Entropy-prune ``model`` to about ``size`` n-grams (bisection on log threshold)."""
    lo, hi = math.log(1e-12), math.log(1e-1)
    best = None
    for _ in range(30):
        mid = (lo + hi) / 2
        m = prune_entropy(model, math.exp(mid), criteria=crit)
        if best is None or abs(n_ngrams(m) - size) < abs(n_ngrams(best[1]) - size):
            best = (math.exp(mid), m)
        if abs(n_ngrams(m) - size) <= size * 0.002:
            break
        lo, hi = (mid, hi) if n_ngrams(m) > size else (lo, mid)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--out", default="/tmp/prune_curve")
    ap.add_argument("--plot", default=None, help="PNG path for the plot (needs matplotlib)")
    a = ap.parse_args()
    out = Path(a.out)
    base_dir = out / "full"
    if not base_dir.exists():
        train(order=a.order, workers=1).save(base_dir)
    base = LanguageModel.load(base_dir)
    tok = str(base_dir / "tokenizer.model")
    test = list(load_corpus(split="test"))
    crit = entropy_criteria(base)  # P(h) from the stationary token marginal (the default)
    crit_q = entropy_criteria(base, history="q")  # P(h) from the KN unigram q (SRILM-like)
    full = base.perplexity(test)
    rows = [("none", "-", n_ngrams(base), full, n_ngrams(base), full, full)]
    print(f"unpruned order {a.order}: {n_ngrams(base)} n-grams, test ppl {rows[0][3]:.3f}", flush=True)
    for prune in COUNT_PRUNES:
        d = out / ("count-" + "-".join(map(str, prune)))
        if not d.exists():
            train(order=a.order, prune=prune, tokenizer=tok, workers=1).save(d)
        counted = LanguageModel.load(d)
        size = n_ngrams(counted)
        theta, ent = entropy_pruned_to(base, crit, size)
        _, ent_q = entropy_pruned_to(base, crit_q, size)
        rows.append((" ".join(map(str, prune)), f"{theta:.3g}", size, counted.perplexity(test),
                     n_ngrams(ent), ent.perplexity(test), ent_q.perplexity(test)))
        print(rows[-1], flush=True)
    print("\n| count `--prune` | n-grams | test ppl | entropy θ | n-grams | test ppl | "
          "test ppl, P(h) from q |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for p, th, s1, p1, s2, p2, p3 in rows:
        print(f"| {p} | {s1:,} | {p1:.2f} | {th} | {s2:,} | {p2:.2f} | {p3:.2f} |")
    if a.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot", file=sys.stderr)
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r[2] for r in rows[1:]], [r[3] for r in rows[1:]], "o-", label="count pruning (--prune)")
        ax.plot([r[4] for r in rows[1:]], [r[5] for r in rows[1:]], "s-", label="entropy pruning (lmkit prune)")
        ax.plot([r[4] for r in rows[1:]], [r[6] for r in rows[1:]], "^:", label="entropy, P(h) from KN q")
        ax.plot([rows[0][2]], [rows[0][3]], "k*", markersize=10, label="unpruned")
        ax.set_xscale("log")
        ax.set_xlabel("n-grams (unigrams included)")
        ax.set_ylabel("test perplexity (shakespeare)")
        ax.set_title(f"order-{a.order} MKN, V={base.vocab_size}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
