"""How the carved held-out lines and other default-model choices move test perplexity.

Builds lmkit's default (feature-rich) model in-process (``rich_build.build_rich``, the code
``lmkit train`` runs) on a training file whose held-out lines are carved in blocks of
``--block`` consecutive lines (every 20th block, as ``train.load_text`` does; ``--block 1``:
every 20th line, the rule before ``train.holdout_block``), with optional ``build_rich``
overrides per run, and prints the test perplexity of each (natural log inside, one EOS per
line counted, as ``lmkit eval``). The tokenizer is given (``lmkit spm-train``); the carved
lines' counts are added back after the weights are chosen (``refit_chunks``), as in ``lmkit
train``.

    python scripts/heldout_blocks.py --train mid_train.txt --test mid_test.txt \\
        --tokenizer dd_tok.model --block 500 --runs '{}' '{"order": 7}' '{"lambda_tokens": 20000}'

One JSON line per run on stdout (``test_ppl``, ``cpu_s`` of the build, ``stored`` values);
each group's weights per entry-count bucket on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from lmkit.corpus import load_corpus
from lmkit.model import LanguageModel
from lmkit.rich_build import build_rich
from lmkit.tokenizer import Tokenizer
from lmkit.train import heldout_lines, is_heldout

DEFAULT_LAMBDA_TOKENS = 5000  # the default model's (config.ModelConfig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True, help="training text file")
    ap.add_argument("--test", required=True, help="test text file")
    ap.add_argument("--tokenizer", required=True, help="a tokenizer .model (lmkit spm-train)")
    ap.add_argument("--block", type=int, default=1, help="lines per carved block (1: single lines)")
    ap.add_argument("--runs", nargs="+", default=["{}"],
                    help="JSON objects of build_rich keyword overrides, plus lambda_tokens")
    a = ap.parse_args()
    tok = Tokenizer.load(a.tokenizer)
    lines = list(load_corpus(input=[a.train]))
    valid = [x for i, x in enumerate(lines) if is_heldout(i, a.block)]
    train = tok.encode_batch([x for i, x in enumerate(lines) if not is_heldout(i, a.block)])
    held_counts = tok.encode_batch(valid)
    test = list(load_corpus(input=[a.test]))
    print(f"# train {sum(map(len, train))} tokens, block {a.block}, test lines {len(test)}",
          flush=True)
    for run in a.runs:
        kw = json.loads(run)
        lambda_tokens = kw.pop("lambda_tokens", DEFAULT_LAMBDA_TOKENS)
        held = tok.encode_batch(heldout_lines(valid, lambda_tokens, tok))
        t0 = time.process_time()
        params, _, _, _ = build_rich([train], tok.vocab_size, tok.bos_id, tok.eos_id, held,
                                     refit_chunks=[held_counts], piece_bytes=tok.piece_bytes(),
                                     **kw)
        cpu = time.process_time() - t0
        ppl = LanguageModel(tok, params, {"rich": True}).perplexity(test)
        print(json.dumps({"run": run, "block": a.block, "lambda_tokens": lambda_tokens,
                          "test_ppl": round(ppl, 3), "cpu_s": round(cpu, 1),
                          "stored": int(sum(S.nnz for S in params.S))}), flush=True)
        lam = np.round(np.asarray(params.info["entry_lambdas"], dtype=float), 2).tolist()
        names = [g.name for g in params.groups]
        print("weights", json.dumps(dict(zip(names, lam))), file=sys.stderr)


if __name__ == "__main__":
    main()
