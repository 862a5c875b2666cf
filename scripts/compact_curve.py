"""Size / perplexity curve of the compact default model (``compact.py``), one row per threshold.

For each ``tau``: prune the entries with ``|v| <= tau`` from a feature-rich model folder (an
unpruned one, e.g. written by a version before compaction, or ``--tau`` candidates on a pruned
one), round the values to float32, save the folder (compact storage dtypes), read it back, and
score the valid and test splits of the built-in corpus with the reloaded model. The valid
column is what ``lmkit train`` chooses tau on (``compact.choose_tau``, on ~30k of its tokens).

    python scripts/compact_curve.py --model DIR [--taus 0 0.01 0.02 0.05 0.1 0.2] [--out /tmp/cc]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmkit.compact import prune_entries, round_float32  # noqa: E402
from lmkit.corpus import load_corpus  # noqa: E402
from lmkit.model import LanguageModel  # noqa: E402


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a feature-rich model folder")
    ap.add_argument("--taus", type=float, nargs="+", default=[0, 0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--out", default="/tmp/compact_curve", help="scratch folder")
    a = ap.parse_args(argv)
    src = LanguageModel.load(a.model)
    splits = {s: [x for x in load_corpus(split=s) if x] for s in ("valid", "test")}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {s: src.score(lines)["perplexity"] for s, lines in splits.items()}
    print(f"# {a.model}: {folder_mb(Path(a.model)):.1f} MB, "
          f"{sum(S.nnz for S in src.params.S) / 1e6:.2f}M entries, valid ppl {base['valid']:.3f}, "
          f"test ppl {base['test']:.3f}")
    print("| tau | entries (M) | folder MB | valid ppl | test ppl | test cost |")
    print("|---|---|---|---|---|---|")
    for tau in [None] + list(a.taus):
        params = src.params if tau is None else prune_entries(src.params, tau)
        model = LanguageModel(src.tokenizer, round_float32(params), src.config, src.corpus)
        path = model.save(out / "m")
        back = LanguageModel.load(path)
        lp = [model.log_proba_ids(model.encode_lines(splits["test"][:200]))[0],
              back.log_proba_ids(back.encode_lines(splits["test"][:200]))[0]]
        assert np.array_equal(*lp), "the reloaded model differs from the one saved"
        ppl = {s: back.score(lines)["perplexity"] for s, lines in splits.items()}
        print(f"| {'none (float32 only)' if tau is None else f'{tau:g}'} "
              f"| {sum(S.nnz for S in params.S) / 1e6:.2f} | {folder_mb(path):.1f} "
              f"| {ppl['valid']:.3f} | {ppl['test']:.3f} "
              f"| {ppl['test'] / base['test'] - 1:+.3%} |", flush=True)
    shutil.rmtree(out / "m", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
