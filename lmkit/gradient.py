"""Gradient solver: token ids -> dense softmax weights by minibatch gradient descent (the baseline).

Input: per window group g an int64 row array ``rows[g]`` (N,) (the token g+1 positions back, BOS
padded; see ``features.context_rows``) and the targets (N,) (EOS included); the same for a
validation slice. Output: ``scoring.DenseParams`` — ``W[g]`` (V, V) float32 and ``b`` (V,) — and
a learning curve, a list of dicts ``{step, epoch, seconds, train_loss, valid_ppl}``.

It is the *same* model as the explicit solver (``logits = b + sum_g W_g[c_g]``), trained the
ordinary way so the two can be compared fairly:

- the loss is the mean cross-entropy of a shuffled minibatch (seeded), computed in float32 with a
  float64 loss sum; the gradient is ``X^T (P - Y) / B`` with the multi-hot X kept sparse (one CSR
  ``(rows touched, B)`` product per group), never a dense X;
- updates touch only the rows a batch uses. For SGD with momentum and for Adam this is *lazy*
  (as TensorFlow's ``LazyAdam``): the moments of an untouched row are not decayed that step. The
  gradient of an untouched row is exactly 0, so only the momentum carry-over differs from dense
  Adam. With ``l2 > 0`` the penalty ``l2/2 ||W||^2`` is likewise applied to touched rows only;
- init ``zeros``, ``random`` (seeded normal, ``random_scale``) or ``explicit``: ``W_g = lambda_g
  S_g`` densified and ``b = log q`` — exactly the explicit model's logits up to a per-row
  constant, so step 0 reproduces its perplexity;
- stops after ``epochs``, after ``max_seconds`` of training time (periodic validation is not
  counted), or when validation perplexity has not improved for ``patience`` evaluations; the
  best-on-valid weights are returned. Warns (``ConvergenceWarning``) when a budget stops it while
  validation perplexity is still improving.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import scipy.sparse as sp

from .config import DEFAULT_LR, GradientConfig, TokenizerConfig
from .errors import InputError, OptionError, OptionWarning
from .params import DenseParams, SparseParams
from .features import Window, context_rows
from .memory import check_memory, format_bytes
from .progress import bar, log

INITS = ("zeros", "random", "explicit")
OPTIMIZERS = ("adam", "sgd")


_G = GradientConfig  # the defaults of fit_dense's options


class ConvergenceWarning(OptionWarning):
    """Training stopped on a budget while validation perplexity was still improving."""


def dense_bytes(n_groups: int, vocab_size: int, batch_size: int, optimizer: str = "adam",
                itemsize: int = 4) -> int:
    """Bytes the dense solver holds: W and b, the best-on-valid copy, optimizer moments, batch.

    Example: 1 group, V=4, batch 2, adam, float32 -> (16+4) * 4 arrays * 4 B + 4*2*4*4 B = 448.
    """
    weights = n_groups * vocab_size * vocab_size + vocab_size
    copies = 2 + (2 if optimizer == "adam" else 1)  # W/b, best copy, moments (m, v) or velocity
    batch = 4 * batch_size * vocab_size  # logits/P, gathered rows, sparse products, scratch
    return (weights * copies + batch) * itemsize


def check_dense_memory(n_groups, vocab_size, batch_size, optimizer="adam", max_memory=None,
                       itemsize: int = 4) -> int:
    """Refuse up front (``MemoryLimitError`` with the bytes needed) a model that would not fit."""
    need = dense_bytes(n_groups, vocab_size, batch_size, optimizer, itemsize)
    check_memory(need, max_memory, f"the dense gradient model ({n_groups} x {vocab_size}^2 parameters, "
                 f"{optimizer}, batch {batch_size})",
                 "lower vocab_size or context, or raise max_memory (the explicit solver "
                 "needs only the sparse counts)")
    return need


# ---- pure math ------------------------------------------------------------------------------
def init_params(init: str, groups: list, vocab_size: int, *, explicit: SparseParams | None = None,
                seed: int = TokenizerConfig.seed, random_scale: float = GradientConfig.random_scale,
                dtype=np.float32) -> tuple[list, np.ndarray]:
    """Initial ``(W, b)``: W list of (V, V), b (V,), all of ``dtype``."""
    V = vocab_size
    if init == "zeros":
        return [np.zeros((V, V), dtype) for _ in groups], np.zeros(V, dtype)
    if init == "random":
        rng = np.random.default_rng(seed)
        W = [(rng.standard_normal((V, V)) * random_scale).astype(dtype) for _ in groups]
        return W, np.zeros(V, dtype)
    if init == "explicit":
        if explicit is None:
            raise InputError("init explicit needs the explicit solution; use solver warm")
        return explicit_dense(explicit, dtype)
    raise InputError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def explicit_dense(params: SparseParams, dtype=np.float32) -> tuple[list, np.ndarray]:
    """``W_g = lambda_g S_g`` densified and ``b = log q``: the explicit model in dense form."""
    W = [(lam * S).toarray().astype(dtype) for S, lam in zip(params.S, params.lambdas)]
    return W, np.log(params.q).astype(dtype)


def logits_of(W: list, b: np.ndarray, rows: list, out: np.ndarray | None = None) -> np.ndarray:
    """``b + sum_g W_g[rows_g]`` (B, V) in W's dtype; window rows are never -1 (BOS padding)."""
    out = np.take(W[0], rows[0], axis=0, out=out)
    for Wg, r in zip(W[1:], rows[1:]):
        out += Wg[r]
    out += b
    return out


def batch_gradient(W: list, b: np.ndarray, rows: list, targets: np.ndarray):
    """Mean cross-entropy of a batch and its gradient.

    Returns ``(loss_sum, grads_W, grad_b)``: loss_sum float64 (sum over the batch, nats), grads_W
    per group ``(touched_rows int64 (U,), grad (U, V))`` of the *mean* loss, grad_b (V,).
    The gradient is ``X^T (P - Y) / B``; each group's block of X is a (U, B) CSR of ones.
    """
    B = len(targets)
    ar = np.arange(B)
    z = logits_of(W, b, rows)
    z -= z.max(axis=1, keepdims=True)
    tgt = z[ar, targets].astype(np.float64)
    np.exp(z, out=z)
    s = z.sum(axis=1, dtype=np.float64)
    loss_sum = float(np.sum(np.log(s) - tgt))
    z *= (1.0 / (s * B)).astype(z.dtype)[:, None]  # P / B
    z[ar, targets] -= z.dtype.type(1.0 / B)  # (P - Y) / B
    grad_b = z.sum(axis=0)
    grads = []
    ones = np.ones(B, z.dtype)
    for r in rows:
        uniq, inv = np.unique(r, return_inverse=True)
        X = sp.csr_matrix((ones, (inv.ravel(), ar)), shape=(len(uniq), B))
        grads.append((uniq, np.asarray(X @ z)))
    return loss_sum, grads, grad_b


def adam_update(param, m, v, idx, grad, lr, t, beta1=0.9, beta2=0.999, eps=1e-8) -> None:
    """Lazy Adam step on ``param[idx]`` (idx None = all) in place; t = global step (1-based)."""
    if idx is None:
        mi, vi = m, v
    else:
        mi, vi = m[idx], v[idx]
    mi *= beta1
    mi += (1 - beta1) * grad
    vi *= beta2
    vi += (1 - beta2) * (grad * grad)
    step = (lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)) * mi / (np.sqrt(vi) + eps)
    if idx is None:
        param -= step
    else:
        m[idx], v[idx] = mi, vi
        param[idx] -= step


def sgd_update(param, vel, idx, grad, lr, momentum=0.9) -> None:
    """Lazy SGD-with-momentum step on ``param[idx]`` (idx None = all) in place."""
    if idx is None:
        vel *= momentum
        vel += grad
        param -= lr * vel
    else:
        vi = vel[idx] * momentum + grad
        vel[idx] = vi
        param[idx] -= lr * vi


def valid_perplexity(W, b, rows, targets, chunk: int = 1024) -> float:
    """Per-token perplexity of (rows, targets) under (W, b); float64 log-sum-exp."""
    nll = 0.0
    for a in range(0, len(targets), chunk):
        z = logits_of(W, b, [r[a:a + chunk] for r in rows]).astype(np.float64)
        t = targets[a:a + chunk]
        m = z.max(axis=1)
        nll += float(np.sum(m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - z[np.arange(len(t)), t]))
    return math.exp(nll / max(len(targets), 1))


def fit_dense(W: list, b: np.ndarray, rows: list, targets: np.ndarray, valid_rows: list,
              valid_targets: np.ndarray, *, epochs: int | None = _G.epochs,
              max_seconds: float | None = _G.max_seconds, lr: float = DEFAULT_LR["gradient"],
              batch_size: int = _G.batch_size, optimizer: str = _G.optimizer,
              patience: int | None = _G.patience, l2: float = _G.l2, lr_decay: float = _G.lr_decay,
              eval_every: int = _G.eval_every, seed: int = TokenizerConfig.seed, callback=None,
              progress: bool = True, clock=time.perf_counter):
    """Minibatch training of ``(W, b)`` in place; returns ``(best_W, best_b, curve, info)``.

    rows: per group int64 (N,); targets int64 (N,); valid_*: the same for the validation slice.
    ``eval_every``: steps between validations (0 = once per epoch); validation also runs at
    step 0. ``callback(record, W, b)`` may add fields to each curve record (e.g. a distance).
    ``clock``: the timer for ``seconds`` and ``max_seconds`` (wall by default; pass
    ``time.process_time`` to measure CPU seconds on a machine shared with other jobs).
    info: ``{"steps", "epochs", "seconds", "stopped", "best_valid_ppl", "best_step"}``.
    """
    rng = np.random.default_rng(seed)
    N = len(targets)
    rows = [np.asarray(r, np.int64) for r in rows]
    steps_per_epoch = max(1, math.ceil(N / batch_size))
    eval_every = eval_every or steps_per_epoch
    state = _optimizer_state(W, b, optimizer)
    val = _Validation(valid_rows, valid_targets, steps_per_epoch, callback)
    train_s, step, epoch, stopped = 0.0, 0, 0, "epochs"
    pbar = bar(total=epochs * steps_per_epoch if epochs else None, desc="gradient", unit="step",
               show=progress)
    val(W, b, step, train_s)
    done = False
    while not done and (epochs is None or epoch < epochs):
        order = rng.permutation(N)
        lr_now = lr * lr_decay ** epoch
        for a in range(0, N, batch_size):
            t0 = clock()
            idx = order[a:a + batch_size]
            loss_sum, grads, gb = batch_gradient(W, b, [r[idx] for r in rows], targets[idx])
            step += 1
            _apply_gradients(W, b, state, grads, gb, optimizer=optimizer, l2=l2, lr=lr_now,
                             step=step)
            train_s += clock() - t0
            val.add_loss(loss_sum / len(idx))
            pbar.update(1)
            if not math.isfinite(loss_sum):
                raise OptionError(f"training diverged at step {step} (loss {loss_sum}); lower lr "
                                 f"(got {lr})")
            if step % eval_every == 0 or a + batch_size >= N:
                ppl = val(W, b, step, train_s)
                pbar.set_postfix(loss=f"{val.curve[-1]['train_loss']:.3f}", ppl=f"{ppl:.2f}")
                if patience is not None and val.bad >= patience:
                    stopped, done = "patience", True
                    break
            if max_seconds is not None and train_s >= max_seconds:
                if val.curve[-1]["step"] != step:
                    val(W, b, step, train_s)
                stopped, done = "max_seconds", True
                break
        epoch += 1
    pbar.close()
    if stopped != "patience" and val.bad == 0 and len(val.curve) > 1:
        warnings.warn(f"gradient descent stopped on its {stopped} budget after "
                      f"{step} steps ({train_s:.0f}s) while valid perplexity was still improving "
                      f"({val.curve[-1]['valid_ppl']:.3f}); raise epochs or max_seconds",
                      ConvergenceWarning, stacklevel=2)
    best = val.best
    info = {"steps": step, "epochs": round(step / steps_per_epoch, 4), "seconds": train_s,
            "stopped": stopped, "best_valid_ppl": best[0], "best_step": best[3]}
    return best[1], best[2], val.curve, info


def _optimizer_state(W: list, b: np.ndarray, optimizer: str) -> list:
    """Per group of W, then for b: Adam's ``(m, v)`` or SGD's ``(velocity,)``, zeros."""
    if optimizer == "adam":
        return [(np.zeros_like(Wg), np.zeros_like(Wg)) for Wg in W] + [(np.zeros_like(b), np.zeros_like(b))]
    return [(np.zeros_like(Wg),) for Wg in W] + [(np.zeros_like(b),)]


def _apply_gradients(W: list, b: np.ndarray, state: list, grads: list, gb: np.ndarray, *,
                     optimizer: str, l2: float, lr: float, step: int) -> None:
    """One optimizer step in place on the rows a batch touched (``batch_gradient``'s
    ``grads``: per group ``(rows, gradient)``; ``gb`` the bias gradient), L2 on W added."""
    for g, (uniq, gr) in enumerate(grads):
        if l2:
            gr += l2 * W[g][uniq]
        if optimizer == "adam":
            adam_update(W[g], *state[g], uniq, gr, lr, step)
        else:
            sgd_update(W[g], *state[g], uniq, gr, lr)
    if optimizer == "adam":
        adam_update(b, *state[-1], None, gb, lr, step)
    else:
        sgd_update(b, *state[-1], None, gb, lr)


class _Validation:
    """Early-stopping state of ``fit_dense``: the curve of validation records, the best
    ``(ppl, W, b, step)`` so far, validations since it (``bad``), the running train loss."""

    def __init__(self, valid_rows, valid_targets, steps_per_epoch: int, callback):
        self.rows, self.targets, self.steps_per_epoch = valid_rows, valid_targets, steps_per_epoch
        self.callback = callback
        self.curve, self.best, self.bad = [], (math.inf, None, None, 0), 0
        self.loss_acc, self.loss_n = 0.0, 0

    def add_loss(self, mean_loss: float) -> None:
        self.loss_acc += mean_loss
        self.loss_n += 1

    def __call__(self, W: list, b: np.ndarray, step: int, train_s: float) -> float:
        """Validate now: append a record, keep a copy of the weights if they are the best."""
        ppl = valid_perplexity(W, b, self.rows, self.targets)
        rec = {"step": step, "epoch": round(step / self.steps_per_epoch, 4),
               "seconds": round(train_s, 3),
               "train_loss": self.loss_acc / self.loss_n if self.loss_n else None, "valid_ppl": ppl}
        if self.callback is not None:
            self.callback(rec, W, b)
        self.curve.append(rec)
        self.loss_acc, self.loss_n = 0.0, 0
        if ppl < self.best[0] * (1 - 1e-9):
            self.best = (ppl, [Wg.copy() for Wg in W], b.copy(), step)
            self.bad = 0
        else:
            self.bad += 1
        return ppl


# ---- thin wrapper used by train.train -------------------------------------------------------
def rows_of(groups, seqs, vocab_size: int, bos_id: int, eos_id: int):
    """Per-group rows and targets of id sequences (window groups: rows are token ids)."""
    rows, targets, _ = context_rows(groups, [None] * len(groups), seqs, vocab_size, bos_id, eos_id)
    return rows, targets


def finetune(explicit: SparseParams, tokenizer, train_lines, valid_lines, cfg: GradientConfig, *,
             seed: int = TokenizerConfig.seed, max_memory=None) -> DenseParams:
    """Train the dense model on ``train_lines`` by gradient descent; returns ``DenseParams``.

    ``explicit``: the explicit solution (read only for ``init="explicit"``; its groups are the
    model's). ``valid_lines``: the validation slice for early stopping. The learning curve and
    the stopping info are in the returned ``info``.
    """
    init, lr = cfg.effective_init, cfg.effective_lr
    groups, tok = explicit.groups, tokenizer
    if not all(isinstance(g, Window) for g in groups):
        raise InputError("the gradient solver handles context (window) groups only, not order; "
                         "drop order or use solver explicit")
    V = tok.vocab_size
    need = check_dense_memory(len(groups), V, cfg.batch_size, cfg.optimizer, max_memory)
    log(f"      gradient ({cfg.optimizer}, init {init}, lr {lr}, batch {cfg.batch_size}): dense "
        f"model {format_bytes(need)}")
    rows, targets = rows_of(groups, tok.encode_batch(list(train_lines)), V, tok.bos_id, tok.eos_id)
    vrows, vtargets = rows_of(groups, tok.encode_batch(list(valid_lines)), V, tok.bos_id, tok.eos_id)
    W, b = init_params(init, groups, V, explicit=explicit if init == "explicit" else None,
                       seed=seed, random_scale=cfg.random_scale)
    W, b, curve, info = fit_dense(W, b, rows, targets, vrows, vtargets, epochs=cfg.epochs,
                                  max_seconds=cfg.max_seconds, lr=lr, batch_size=cfg.batch_size,
                                  optimizer=cfg.optimizer, patience=cfg.patience, l2=cfg.l2,
                                  lr_decay=cfg.lr_decay, eval_every=cfg.eval_every, seed=seed)
    log(f"      {info['steps']} steps, {info['epochs']} epochs, {info['seconds']:.1f}s, stopped by "
        f"{info['stopped']}; best valid ppl {info['best_valid_ppl']:.3f} (slice of {len(vtargets)} tokens)")
    return DenseParams(list(groups), W, b, [None] * len(groups),
                       {"solver": cfg.solver, "init": init, "optimizer": cfg.optimizer, "lr": lr,
                        "batch_size": cfg.batch_size, "l2": cfg.l2, "lr_decay": cfg.lr_decay,
                        "learning_curve": curve, **info})
