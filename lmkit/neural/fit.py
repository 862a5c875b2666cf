"""Training a ``NeuralLM`` by backpropagation under a CPU-time budget.

Input: train and valid text lines (one line = one sequence), a ``NeuralLM`` (scratch or
residual). Output: the same model, its network set to the best weights on a valid sample.

- Budget: ``max_seconds`` of this process's CPU time (``time.process_time``: all threads, so
  2 busy threads spend 2 CPU s per wall second), counting only training steps (for a hybrid
  that includes building the explicit log-distributions of each batch); validation and the
  preparation (tokenising, explicit rows) are not charged. ``max_steps`` also stops it.
- Optimiser: AdamW (fused; betas 0.9/0.99, weight decay 0.1 on matrices only, grad-norm clip
  1), linear warm-up then ``lr * sqrt(warmup / step)``: an anytime schedule, so a checkpoint
  taken at 60 s of a 1200 s run is a fair 60 s result (no horizon-dependent decay). ``lr`` and
  ``warmup`` default per kind of network (``SCHEDULES``: a hybrid takes a smaller rate).
- ``init="explicit"`` (networks without an explicit term): the output bias and embeddings from
  the training ids' unigram and bigram counts (``explicit_init.py``), its CPU s charged to the
  budget.
- Resumable: ``Trainer.checkpoint()`` / ``resume()`` (weights, optimiser, batch order, RNG).
- No gain: a run whose best weights are its start says so (log and ``training["improved"]``).
- Batches: ``batch_size`` windows (lines) of similar length, in a seeded random order, epoch
  after epoch (``epoch_batches``).
- Best-on-valid: every ``eval_every`` CPU s, perplexity on an evenly spread sample of about
  ``valid_tokens`` valid tokens; the best weights are kept and restored at the end.
- ``crossfit=k`` (hybrids): the explicit term of the training lines comes from ``k`` models
  that did not count them (``crossfit.py``); 0 uses the full explicit model everywhere.
- Seeded: ``numpy.random.default_rng(seed)`` draws the batches; the weights were drawn with
  ``torch.manual_seed(seed)`` by ``NeuralLM.create``. Same seed + same steps = same weights.
"""
from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import torch

from ..errors import InputError, OptionError
from ..progress import log
from .crossfit import CrossFitRows, fold_models
from .lm import NeuralLM


# one fused kernel for the whole update instead of a dozen passes over 4.2M parameters: 0.022 ->
# ~0.01 CPU s a step (scripts/neural_flops.py); same math as the default AdamW
_FAST_ADAMW = {"fused": True}


def _log(msg: str) -> None:
    log(msg)


def spread_sample(lines: list, n_tokens: int, seqs: list) -> list:
    """Indices of evenly spread ``seqs`` holding about ``n_tokens`` targets (deterministic)."""
    per = max(1.0, sum(len(s) + 1 for s in seqs) / max(len(seqs), 1))
    want = max(1, min(len(seqs), int(n_tokens / per)))
    return list(np.linspace(0, len(seqs) - 1, want).round().astype(int))


def epoch_batches(windows: np.ndarray, batch_size: int, rng, pool: int = 50) -> list:
    """One epoch of window-id batches in a random order, each of windows of similar length.

    Windows are shuffled, cut into pools of ``pool`` batches, sorted by length inside a pool and
    split into batches (padding then wastes a few per cent instead of most of a batch of
    lines from 2 to 40 tokens); the batch order is shuffled again.
    """
    lens = windows[:, 2] - windows[:, 1]
    order = rng.permutation(len(windows))
    size = pool * batch_size
    batches = []
    for a in range(0, len(order), size):
        chunk = order[a:a + size]
        chunk = chunk[np.argsort(lens[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


#: (lr, warm-up steps) by kind of network. A hybrid starts at its explicit base, a strong model:
#: large steps first spoil it (docs/neural.md: at lr 1e-3 valid was best at step 44 and got
#: worse), so it takes a smaller rate; the scratch network is far from anything good and
#: takes the larger one.
SCHEDULES = {"scratch": (1e-3, 100), "residual": (3e-4, 100)}


def default_schedule(residual: bool) -> tuple[float, int]:
    """The default ``(lr, warmup)`` for a hybrid (``residual``) or a network on its own."""
    return SCHEDULES["residual" if residual else "scratch"]


class Trainer:
    """Resumable training state: ``advance(to_seconds)`` trains until that much CPU time is spent.

    Several trainers can take turns in one process (the benchmark advances every model to each
    budget in turn, so a stopped run still has all models at the same budgets).
    """

    def __init__(self, lm: NeuralLM, train_lines, valid_lines, *, seed: int = 0,
                 batch_size: int = 64, lr: float | None = None, warmup: int | None = None,
                 weight_decay: float = 0.1, eval_every: float = 30.0, valid_tokens: int = 20000,
                 crossfit: int = 0, init: str = "random", crossfit_cache=None, log=_log):
        train_lines, valid_lines = list(train_lines), list(valid_lines)
        if not train_lines or not valid_lines:
            raise InputError("training a neural model needs non-empty train and valid lines")
        self.lm, self.log = lm, log
        d_lr, d_warmup = default_schedule(residual=lm.explicit is not None)
        lr = d_lr if lr is None else lr
        warmup = d_warmup if warmup is None else warmup
        if not lr > 0 or warmup < 1:
            raise InputError(f"lr must be > 0 and warmup >= 1, got lr={lr}, warmup={warmup}")
        self.options = {"seed": seed, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                        "weight_decay": weight_decay, "eval_every": eval_every,
                        "crossfit": crossfit, "init": init}
        if crossfit == 1 or crossfit < 0:
            raise InputError(f"crossfit must be 0 (off) or >= 2 folds, got {crossfit}")
        self.rng = np.random.default_rng(seed)
        t0 = time.process_time()
        train_seqs = lm.encode_lines(train_lines)
        fold = crossfit >= 2 and lm.explicit is not None
        if init == "explicit":  # charged to the budget below: it is part of the training
            c_init = time.process_time()
            self.options.update(lm.init_explicit(train_seqs, seed=seed))
            init_seconds = time.process_time() - c_init
            log(f"neural: explicit init (unigram bias, bigram-PMI embedding) in "
                f"{init_seconds:.1f} CPU s")
        elif init != "random":
            raise InputError(f"init must be random or explicit, got {init!r}")
        else:
            init_seconds = 0.0
        self.d, self.rows = lm.data(train_seqs, explicit=not fold)
        if fold:  # the training lines' explicit term from models that did not count them
            models = fold_models(lm.explicit, train_lines, crossfit, seed=seed, log=log,
                                 cache=crossfit_cache)
            self.rows = CrossFitRows(models, train_seqs)
        vseqs = lm.encode_lines(valid_lines)
        vseqs = [vseqs[i] for i in spread_sample(valid_lines, valid_tokens, vseqs)]
        self.vd, self.vrows = lm.data(vseqs)
        self.prep_seconds = time.process_time() - t0
        log(f"neural: {len(train_seqs)} train sequences, {self.d.n_targets} targets, "
            f"{len(self.d.windows)} windows; valid sample {self.vd.n_targets} targets; "
            f"prep {self.prep_seconds:.1f} CPU s")
        net = lm.net
        net.train()
        decay = [p for p in net.parameters() if p.dim() >= 2]
        no_decay = [p for p in net.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=lr, betas=(0.9, 0.99), **_FAST_ADAMW)
        ppl = self.valid_ppl()
        log(f"step 0: valid ppl {ppl:.2f}")
        self.best = {"ppl": ppl, "state": copy.deepcopy(net.state_dict()), "step": 0,
                     "seconds": init_seconds}
        self.history = [{"step": 0, "seconds": round(init_seconds, 2), "valid_ppl": ppl}]
        self.spent, self.step, self.next_eval = init_seconds, 0, init_seconds + eval_every
        self.batches, self.cursor = epoch_batches(self.d.windows, batch_size, self.rng), 0
        self.epochs = 0.0

    def valid_ppl(self) -> float:
        nll = float(-self.lm.target_log_proba(self.vd, self.vrows).mean())
        # a diverged network (nan, or nll past exp's range) is a huge but finite ppl, so it is
        # never kept as the best and never overflows
        return math.exp(min(nll, 700.0)) if math.isfinite(nll) else math.exp(700.0)

    def _train_step(self, timing: dict | None = None) -> float:
        """One AdamW step; ``timing`` (a dict) gets CPU s of its parts and the batch shape."""
        o, net = self.options, self.lm.net
        clock = time.process_time
        c0 = clock()
        if self.cursor == len(self.batches):
            self.batches, self.cursor = epoch_batches(self.d.windows, o["batch_size"], self.rng), 0
        b = self.d.batch(self.batches[self.cursor])
        self.cursor += 1
        self.epochs += len(b.flat) / self.d.n_targets
        e = self.rows.log_proba(b.flat) if self.rows is not None else None
        self.step += 1
        for g in self.opt.param_groups:
            g["lr"] = o["lr"] * min(self.step / o["warmup"], math.sqrt(o["warmup"] / self.step))
        c1 = clock()
        loss = net.nll(b.x, b.sel, b.y, e)
        c2 = clock()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        c3 = clock()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        self.opt.step()
        if timing is not None:
            timing.update(data=c1 - c0, forward=c2 - c1, backward=c3 - c2, optimizer=clock() - c3,
                          shape=tuple(b.x.shape), scored=len(b.sel), tokens=b.tokens)
        return float(loss.detach())

    def _evaluate(self, train_loss: float) -> None:
        ppl = self.valid_ppl()
        self.history.append({"step": self.step, "seconds": round(self.spent, 2), "valid_ppl": ppl,
                             "train_loss": train_loss})
        if ppl < self.best["ppl"]:
            self.best.update(ppl=ppl, state=copy.deepcopy(self.lm.net.state_dict()),
                             step=self.step, seconds=self.spent)
        self.log(f"step {self.step}: {self.spent:.0f} CPU s, train loss {train_loss:.4f}, "
                 f"valid ppl {ppl:.2f} (best {self.best['ppl']:.2f})")
        self.next_eval = self.spent + self.options["eval_every"]

    def advance(self, to_seconds: float, max_steps: int | None = None,
                wall_deadline: float | None = None) -> None:
        """Train until ``to_seconds`` CPU s (or ``max_steps`` steps, or the ``time.time()``
        ``wall_deadline``, for a benchmark that must end on time); validates on the way out."""
        self.lm.net.train()
        loss_sum, loss_n = 0.0, 0
        while (self.spent < to_seconds and (max_steps is None or self.step < max_steps)
               and (wall_deadline is None or time.time() < wall_deadline)):
            c0 = time.process_time()
            loss = self._train_step()
            self.spent += time.process_time() - c0
            loss_sum, loss_n = loss_sum + loss, loss_n + 1
            if self.spent >= self.next_eval:
                self._evaluate(loss_sum / loss_n)
                loss_sum, loss_n = 0.0, 0
        if loss_n:
            self._evaluate(loss_sum / loss_n)
        self.lm.net.eval()

    def with_best(self, call):
        """``call(lm)`` with the best weights so far loaded; the current weights come back after."""
        net = self.lm.net
        current = copy.deepcopy(net.state_dict())
        net.load_state_dict(self.best["state"])
        try:
            return call(self.lm)
        finally:
            net.load_state_dict(current)

    def checkpoint(self) -> dict:
        """Everything ``resume`` needs to go on exactly where this trainer stands: a dict of
        tensors, numbers and strings (``torch.save`` it; ``torch.load(weights_only=True)``
        reads it back, no pickle of arbitrary objects)."""
        lens = [len(b) for b in self.batches]
        return {"net": self.lm.net.state_dict(), "opt": self.opt.state_dict(),
                "best_state": self.best["state"],
                "best": {k: v for k, v in self.best.items() if k != "state"},
                "history": json.dumps(self.history), "rng": json.dumps(self.rng.bit_generator.state),
                "batches": torch.from_numpy(np.concatenate(self.batches).astype(np.int64)),
                "batch_lens": torch.tensor(lens, dtype=torch.int64),
                "counters": {"spent": self.spent, "step": self.step, "next_eval": self.next_eval,
                             "cursor": self.cursor, "epochs": self.epochs},
                "options": json.dumps(self.options)}

    def resume(self, ck: dict) -> None:
        """Continue from ``checkpoint()`` of a trainer built with the same options and data."""
        if json.loads(ck["options"]) != json.loads(json.dumps(self.options)):
            raise InputError("the checkpoint was made with other training options; start a new "
                             "run (another work folder) or pass the same options")
        self.lm.net.load_state_dict(ck["net"])
        self.opt.load_state_dict(ck["opt"])
        self.best = {**ck["best"], "state": ck["best_state"]}
        self.history = json.loads(ck["history"])
        self.rng.bit_generator.state = json.loads(ck["rng"])
        flat, lens = ck["batches"].numpy(), ck["batch_lens"].numpy()
        self.batches = np.split(flat, np.cumsum(lens)[:-1])
        c = ck["counters"]
        self.spent, self.step, self.next_eval = float(c["spent"]), int(c["step"]), float(c["next_eval"])
        self.cursor, self.epochs = int(c["cursor"]), float(c["epochs"])

    def finish(self, max_seconds=None, max_steps=None) -> NeuralLM:
        """Load the best weights into the model, record the training summary, return the model.

        A hybrid whose best weights are still its start (step 0) *is* its base model: that is
        said in the log and recorded (``improved: false``) rather than returned silently."""
        net = self.lm.net
        net.load_state_dict(self.best["state"])
        net.eval()
        improved = self.best["step"] > 0
        if not improved:
            what = "its explicit base" if self.lm.explicit is not None else "its initial weights"
            self.log(f"neural: NO GAIN: after {self.step} steps and {self.spent:.0f} CPU s no "
                     f"checkpoint beat {what} on valid (ppl {self.history[0]['valid_ppl']:.2f}); "
                     f"the model returned is {what} (give it a larger max_seconds)")
        else:
            self.log(f"neural: best valid ppl {self.best['ppl']:.2f} at step {self.best['step']} "
                     f"({self.best['seconds']:.0f} CPU s), from {self.history[0]['valid_ppl']:.2f} "
                     "at the start")
        self.lm.training = {**self.options, "max_seconds": max_seconds, "max_steps": max_steps,
                            "steps": self.step, "epochs": round(self.epochs, 4),
                            "cpu_seconds": round(self.spent, 2),
                            "prep_cpu_seconds": round(self.prep_seconds, 2),
                            "best_step": self.best["step"],
                            "best_seconds": round(self.best["seconds"], 2),
                            "best_valid_ppl": self.best["ppl"], "improved": improved,
                            "start_valid_ppl": self.history[0]["valid_ppl"],
                            "valid_sample_tokens": self.vd.n_targets, "history": self.history,
                            "scale": float(net.scale.detach())}
        return self.lm


def fit(lm: NeuralLM, train_lines, valid_lines, *, max_seconds: float, max_steps: int | None = None,
        **options) -> NeuralLM:
    """Train ``lm.net`` in place for ``max_seconds`` CPU s; returns ``lm`` with the best weights.

    ``options``: ``Trainer`` keywords (seed, batch_size, lr, warmup, weight_decay, eval_every,
    valid_tokens, log).
    """
    if not max_seconds > 0:
        raise OptionError(f"max_seconds must be > 0 CPU seconds, got {max_seconds}")
    if max_steps is not None and max_steps < 1:
        raise InputError(f"max_steps must be >= 1, got {max_steps}")
    trainer = Trainer(lm, train_lines, valid_lines, **options)
    trainer.advance(max_seconds, max_steps)
    return trainer.finish(max_seconds, max_steps)
