"""The transformer trainer's distance to the limit: GFLOP per CPU second of a training step
against plain fp32 matmuls of the same shapes, measured side by side in one run.

For ``--steps`` training steps of the default network (``lmkit.neural``, batches as ``fit.py``
draws them from the default corpus) it times, in CPU seconds (``time.process_time``) with
``torch.set_num_threads(--threads)``:

- the whole step (batch building, forward, backward, clip, AdamW) and its parts;
- right after each step, the same matmuls done plainly: for every linear layer the forward
  ``(B·T, C_in) @ (C_in, C_out)`` and its two backward products, the attention products of every
  head, and the tied output layer ``(N, C) @ (C, V)`` with its two backward products.

FLOPs are counted from the shapes (2 per multiply-add, backward = 2 × forward), the work a step
must do: the linear layers on every input position of the batch (padding counted apart as
waste), causal attention (half the T × T square), the output layer on the N scored positions
only. Elementwise work (LayerNorm, GELU, softmax, AdamW) is not counted: it is the overhead.

    PYTHONPATH=. nice .venv/bin/python scripts/neural_flops.py --model /tmp/neural/default \\
        --threads 1 --steps 40 --json docs/neural_flops.json

Prints one line per measurement and a summary: trainer GFLOP/CPU s, matmul GFLOP/CPU s, ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def step_shapes(cfg, B: int, T: int, N: int) -> dict:
    """Matmul shapes of one step: ``linear`` [(M, K, N)] per linear layer (forward),
    ``attn`` (batch*heads, T, head_dim), ``head`` (N, C, V)."""
    C, L = cfg.n_embd, cfg.n_layer
    lin = []
    for _ in range(L):
        lin += [(B * T, C, 3 * C), (B * T, C, C), (B * T, C, 4 * C), (B * T, 4 * C, C)]
    return {"linear": lin, "attn": (B * cfg.n_head, T, C // cfg.n_head, L), "head": (N, C, cfg.vocab_size)}


def step_flops(shapes: dict, tokens: int, padded: int) -> dict:
    """Forward + backward FLOPs of one step (2 per multiply-add; backward = 2 × forward)."""
    lin = sum(2 * m * k * n for m, k, n in shapes["linear"])
    bh, T, hd, L = shapes["attn"]
    attn = L * 2 * 2 * bh * hd * T * (T + 1) / 2  # QK^T and AV, causal half
    n, c, v = shapes["head"]
    head = 2 * n * c * v
    total = 3 * (lin + attn + head)
    useful = 3 * (lin * tokens / max(padded, 1) + attn + head)  # padding rows are waste
    return {"total": total, "useful": useful, "linear": 3 * lin, "attn": 3 * attn, "head": 3 * head}


def plain_matmuls(shapes: dict, rng) -> tuple[float, float]:
    """CPU seconds and FLOPs of plain fp32 matmuls of a step's shapes: every linear layer and the
    output layer forward and both backward products; attention's 6 batched products (full
    T × T squares, as a plain matmul cannot skip the masked half)."""
    mats = []
    for m, k, n in shapes["linear"] + [shapes["head"]]:
        a, w, g = (torch.from_numpy(rng.standard_normal(s, dtype=np.float32))
                   for s in ((m, k), (k, n), (m, n)))
        mats.append((a, w, g))
    bh, T, hd, L = shapes["attn"]
    q, k, v = (torch.from_numpy(rng.standard_normal((bh, T, hd), dtype=np.float32))
               for _ in range(3))
    flops = sum(3 * 2 * a.shape[0] * a.shape[1] * w.shape[1] for a, w, _ in mats)
    flops += L * 6 * 2 * bh * T * T * hd
    c0 = time.process_time()
    for a, w, g in mats:
        a @ w          # forward
        g @ w.T        # grad of the input
        a.T @ g        # grad of the weight
    for _ in range(L):
        s = q @ k.transpose(1, 2)      # scores
        y = s @ v                      # weighted sum
        ds = y @ v.transpose(1, 2)     # backward: d scores, d v, d q, d k
        s.transpose(1, 2) @ y
        ds @ k
        ds.transpose(1, 2) @ q
    return time.process_time() - c0, flops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an explicit model folder (its tokenizer)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lines", type=int, default=20000, help="training lines to draw from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--compile", action="store_true", help="the trainer's opt-in torch.compile "
                    "of the transformer blocks (compiled during the untimed --warmup-steps)")
    args = ap.parse_args(argv)

    from lmkit.corpus import load_corpus
    from lmkit.model import LanguageModel
    from lmkit.neural.fit import Trainer
    from lmkit.neural.lm import NeuralLM
    torch.set_num_threads(args.threads)
    tok = LanguageModel.load(args.model).tokenizer
    lines = list(load_corpus(split="train"))[:args.lines]
    valid = list(load_corpus(split="valid"))[:200]
    lm = NeuralLM.create(tok, seed=args.seed)
    tr = Trainer(lm, lines, valid, seed=args.seed, batch_size=args.batch_size, eval_every=1e9,
                 valid_tokens=500, compile=args.compile, log=lambda m: None)
    rng = np.random.default_rng(args.seed)
    cfg = lm.config
    parts = {k: 0.0 for k in ("data", "forward", "backward", "optimizer")}
    tot = {"step": 0.0, "matmul": 0.0, "flops": 0.0, "useful": 0.0, "matmul_flops": 0.0,
           "tokens": 0, "padded": 0, "scored": 0}
    for i in range(args.warmup_steps + args.steps):
        timing = {}
        c0 = time.process_time()
        tr._train_step(timing=timing)
        dt = time.process_time() - c0
        B, T = timing["shape"]
        N, tokens = timing["scored"], timing["tokens"]
        shapes = step_shapes(cfg, B, T, N)
        f = step_flops(shapes, tokens, B * T)
        mm, mm_flops = plain_matmuls(shapes, rng)
        if i < args.warmup_steps:
            continue
        for k in parts:
            parts[k] += timing[k]
        tot["step"] += dt
        tot["matmul"] += mm
        tot["matmul_flops"] += mm_flops
        tot["flops"] += f["total"]
        tot["useful"] += f["useful"]
        tot["tokens"] += tokens
        tot["padded"] += B * T
        tot["scored"] += N
        log(f"step {i - args.warmup_steps + 1}: B={B} T={T} scored={N} "
            f"{f['total'] / 1e9:.2f} GFLOP in {dt:.3f} CPU s (plain matmuls {mm:.3f} CPU s)")
    trainer = tot["flops"] / tot["step"] / 1e9
    limit = tot["matmul_flops"] / tot["matmul"] / 1e9
    result = {"threads": args.threads, "steps": args.steps, "compile": args.compile, "batch_size": args.batch_size,
              "torch": torch.__version__, "step_cpu_seconds": round(tot["step"], 3),
              "cpu_seconds_per_step": round(tot["step"] / args.steps, 4),
              "matmul_cpu_seconds": round(tot["matmul"], 3),
              "gflop_per_step": round(tot["flops"] / args.steps / 1e9, 3),
              "trainer_gflop_per_cpu_s": round(trainer, 2),
              "trainer_useful_gflop_per_cpu_s": round(tot["useful"] / tot["step"] / 1e9, 2),
              "matmul_gflop_per_cpu_s": round(limit, 2),
              "ratio": round(trainer / limit, 3),
              "padding_fraction": round(1 - tot["tokens"] / tot["padded"], 4),
              "scored_per_step": round(tot["scored"] / args.steps, 1),
              "parts_cpu_seconds": {k: round(v, 3) for k, v in parts.items()}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
