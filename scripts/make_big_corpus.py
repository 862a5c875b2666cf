"""Make a large synthetic corpus: sample N tokens of text from a model of the default corpus.

No corpus of 100M+ tokens is reachable offline, so this one is built honestly: a model trained
on the Shakespeare train split (or the model folder given with --model) samples sequences, many
at once (``lmkit.experiments.synthetic.sample_batch``, exact sampling at temperature 1), seeded,
and writes them as text shards ``OUT/shard-00000.txt`` (``--shard-lines`` lines each). The text
therefore has the model's real token statistics, at any size.

By default the sampling model is an order-5 interpolated modified Kneser-Ney model
(``--order 5``), sampled exactly by the back-off walk of ``lmkit.ngram.sample`` (no V-vector),
so the text has real higher-order statistics (up to 4 tokens of context), unlike samples of a
bigram. ``--order 0 --context K`` samples from a window model instead (exact too; K = 1 is
fastest, K = 3 costs the non-zeros of three rows per token).

    python scripts/make_big_corpus.py --tokens 100000000 --output runs/big100m [--order 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lmkit.model import LanguageModel
from lmkit.experiments.synthetic import write_shards


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, required=True, help="tokens to sample (EOS included)")
    ap.add_argument("--output", required=True, help="folder for the shards (keep it out of git)")
    ap.add_argument("--model", help="sample from this model folder instead of training one")
    ap.add_argument("--order", type=int, default=5,
                    help="n-gram order of the model trained when no --model (0: a window model)")
    ap.add_argument("--context", type=int, default=1, help="window K when --order 0")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--shard-lines", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096, help="sequences sampled in parallel")
    ap.add_argument("--max-len", type=int, default=256, help="cut sequences at this many tokens")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.model:
        model = LanguageModel.load(a.model)
    else:
        from lmkit.train import train
        what = f"order {a.order} MKN" if a.order else f"window K={a.context}"
        print(f"training the sampling model ({what}, V={a.vocab_size}) on the default corpus",
              file=sys.stderr)
        model = train(order=a.order or None, context=None if a.order else a.context,
                      vocab_size=a.vocab_size, seed=a.seed)
        model.save(Path(a.output) / "sampling-model")
    t1 = time.time()
    done = [0, t1]

    def progress(n):
        done[0] += n
        if time.time() - done[1] > 10:
            done[1] = time.time()
            print(f"  {done[0]:,} tokens, {done[0] / (time.time() - t1):,.0f} tok/s",
                  file=sys.stderr, flush=True)

    stats = write_shards(model, a.output, a.tokens, shard_lines=a.shard_lines, batch=a.batch,
                         max_len=a.max_len, seed=a.seed, progress=progress)
    dt = time.time() - t1
    stats.update(tokens_sampled=done[0], sample_seconds=round(dt, 1),
                 tokens_per_second=round(done[0] / dt), seed=a.seed, model=a.model or
                 f"trained: order={a.order} context={a.context} vocab_size={a.vocab_size}",
                 setup_seconds=round(t1 - t0, 1))
    (Path(a.output) / "corpus.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
