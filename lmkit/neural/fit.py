"""Training a ``NeuralLM`` by backpropagation under a CPU-time budget.

Input: train and valid text lines (one line = one sequence), a ``NeuralLM`` (scratch or
residual). Output: the same model, its network set to the best weights on a valid sample.

- Budget: ``max_seconds`` of this process's CPU time (``time.process_time``: all threads, so
  2 busy threads spend 2 CPU s per wall second), counting only training steps (for a hybrid
  that includes building the explicit log-distributions of each batch); validation and the
  preparation (tokenising, explicit rows) are not charged. ``max_steps`` also stops it.
- Optimiser: AdamW (fused; betas 0.9/0.99, weight decay 0.1 on matrices only, grad-norm clip
  1). Learning rate (``lr_factor``): with a ``horizon`` (what ``fit`` passes: ``max_seconds``
  and ``max_steps``), a linear warm-up then a cosine decay to a tenth of the peak at the end of
  the budget, both by the fraction of the budget spent (the budget schedule, the default of
  ``lmkit train``); without one, warm-up then ``lr * sqrt(warmup / step)`` (the anytime
  schedule: a checkpoint at 60 s of a 1200 s run is a fair 60 s result; the benchmark's
  multi-mark runs). The peak ``lr`` defaults per kind of network (``SCHEDULES``: a residual
  hybrid takes a smaller rate).
- ``mix`` (an explicit ``LanguageModel``): the network is paired with that frozen model as a
  linear mixture; at every validation the mixture weight is fitted by EM on the valid sample
  (``interpolate.fit_weights``, the one ``lmkit interpolate`` uses) and the best-on-valid
  *mixture* is kept (``neural.train_mixed`` builds the ``MixtureModel``).
- ``init="explicit"`` (networks without an explicit term): the output bias and embeddings from
  the training ids' unigram and bigram counts (``explicit_init.py``), its CPU s charged to the
  budget.
- ``compile=True`` (opt-in, Python only): the transformer blocks of the training steps run
  through ``torch.compile`` (scoring stays eager); it needs a C compiler at run time.
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
from ..interpolate import fit_weights
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


#: (peak lr, warm-up steps) by kind of network. A residual hybrid starts at its explicit base, a
#: strong model: large steps first spoil it (docs/neural.md: at lr 1e-3 valid was best at step
#: 44 and got worse), so it takes a smaller rate; a network on its own (scratch, explicit init,
#: the network of a mixed hybrid) is far from anything good and takes the larger one.
SCHEDULES = {"scratch": (1e-3, 100), "residual": (3e-4, 100)}
#: the budget schedule: after the warm-up steps the rate falls along a cosine to FINAL_FRACTION
#: of the peak at the budget's end. The warm-up stays in steps: ending it after 5 % of a 60-s
#: budget instead (~8 steps) spoiled the explicit init (test ppl 279 against 222 for the anytime
#: schedule at 60 CPU s, docs/neural.md section 6), a 100-step warm-up did not (valid 229 vs 236)
FINAL_FRACTION = 0.1


def default_schedule(residual: bool) -> tuple[float, int]:
    """The default ``(lr, warmup)`` for a residual hybrid or a network on its own."""
    return SCHEDULES["residual" if residual else "scratch"]


def lr_factor(step: int, progress: float | None, warmup: int) -> float:
    """The learning rate of ``step`` (>= 1) as a fraction of the peak.

    ``progress``: the fraction of the budget spent before this step (``None``: no budget, the
    anytime schedule ``min(step / warmup, sqrt(warmup / step))``). With a budget: the warm-up
    ``min(1, step / warmup)`` times the cosine ``FINAL + (1 - FINAL) (1 + cos(pi progress)) / 2``.
    Example: ``lr_factor(1000, 0.5, 100)`` = 0.55 (half-way down), ``lr_factor(10, 0.5, 100)``
    = 0.055 (still warming up), ``lr_factor(1000, 1.0, 100)`` = 0.1 (the budget's end).
    """
    if progress is None:
        return min(step / warmup, math.sqrt(warmup / step))
    p = min(max(progress, 0.0), 1.0)
    cosine = FINAL_FRACTION + (1 - FINAL_FRACTION) * 0.5 * (1 + math.cos(math.pi * p))
    return min(1.0, step / warmup) * cosine


class Trainer:
    """Resumable training state: ``advance(to_seconds)`` trains until that much CPU time is spent.

    Several trainers can take turns in one process (the benchmark advances every model to each
    budget in turn, so a stopped run still has all models at the same budgets).
    """

    def __init__(self, lm: NeuralLM, train_lines, valid_lines, *, seed: int = 0,
                 batch_size: int = 64, lr: float | None = None, warmup: int | None = None,
                 weight_decay: float = 0.1, eval_every: float = 30.0, valid_tokens: int = 20000,
                 crossfit: int = 0, init: str = "random", crossfit_cache=None,
                 horizon: tuple | None = None, mix=None, compile: bool = False, log=_log):
        train_lines, valid_lines = list(train_lines), list(valid_lines)
        if not train_lines or not valid_lines:
            raise InputError("training a neural model needs non-empty train and valid lines")
        if mix is not None and lm.explicit is not None:
            raise InputError("mix pairs a network on its own with an explicit model; a residual "
                             "network already has one (drop mix)")
        self.lm, self.log, self.mix = lm, log, mix
        d_lr, d_warmup = default_schedule(residual=lm.explicit is not None)
        lr = d_lr if lr is None else lr
        warmup = d_warmup if warmup is None else warmup
        if not lr > 0 or warmup < 1:
            raise InputError(f"lr must be > 0 and warmup >= 1, got lr={lr}, warmup={warmup}")
        seconds, steps = horizon if horizon is not None else (None, None)
        self.options = {"seed": seed, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                        "weight_decay": weight_decay,
                        "eval_every": eval_every, "crossfit": crossfit, "init": init,
                        "schedule": "anytime" if horizon is None else "budget",
                        "horizon_seconds": seconds, "horizon_steps": steps,
                        "mix": mix is not None, "compile": bool(compile)}
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
        # the explicit model's log-probabilities of the same valid targets, once (flat order:
        # line by line, EOS included, as target_log_proba's)
        self.vmix = mix.log_proba_ids(vseqs)[0] if mix is not None else None
        if self.vmix is not None and len(self.vmix) != self.vd.n_targets:
            raise InputError(f"mix has {len(self.vmix)} valid targets, the network "
                             f"{self.vd.n_targets}; use the explicit model's tokenizer")
        self.weight = None  # the network's mixture weight at the last validation
        self.prep_seconds = time.process_time() - t0
        log(f"neural: {len(train_seqs)} train sequences, {self.d.n_targets} targets, "
            f"{len(self.d.windows)} windows; valid sample {self.vd.n_targets} targets; "
            f"prep {self.prep_seconds:.1f} CPU s")
        net = lm.net
        net.train()
        # opt-in: the transformer blocks through torch.compile (inductor fuses the elementwise
        # work; dynamic shapes, since every batch has its own length); needs a C compiler at
        # run time, and its first steps (compiling) are charged to the budget
        self.hidden = torch.compile(net.gpt.hidden, dynamic=True) if compile else None
        decay = [p for p in net.parameters() if p.dim() >= 2]
        no_decay = [p for p in net.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=lr, betas=(0.9, 0.99), **_FAST_ADAMW)
        ppl = self.valid_ppl()
        self.base_ppl = (math.exp(float(-self.vmix.mean())) if self.vmix is not None else
                         ppl if lm.explicit is not None else None)
        mixed = "" if mix is None else (f" (mixed, network weight {self.weight:.3f}; the "
                                        f"explicit model alone {self.base_ppl:.2f})")
        log(f"step 0: valid ppl {ppl:.2f}{mixed}")
        self.best = {"ppl": ppl, "state": copy.deepcopy(net.state_dict()), "step": 0,
                     "seconds": init_seconds, "weight": self.weight}
        self.history = [{"step": 0, "seconds": round(init_seconds, 2), "valid_ppl": ppl,
                         **self._weight_record()}]
        self.spent, self.step, self.next_eval = init_seconds, 0, init_seconds + eval_every
        self.batches, self.cursor = epoch_batches(self.d.windows, batch_size, self.rng), 0
        self.epochs = 0.0

    def _weight_record(self) -> dict:
        return {} if self.weight is None else {"mix_weight": self.weight}

    def valid_ppl(self) -> float:
        """Perplexity of the valid sample: the network's, or (``mix``) the mixture's with the
        network's weight fitted by EM on the sample (then kept in ``self.weight``)."""
        lp = self.lm.target_log_proba(self.vd, self.vrows)
        if self.vmix is None:
            nll = float(-lp.mean())
        elif not np.isfinite(lp).all():  # a diverged network: no mixture weight to fit
            nll, self.weight = float(-self.vmix.mean()), 0.0
        else:
            w, trace = fit_weights(np.stack([self.vmix, lp]))
            nll, self.weight = trace[-1][1], float(w[1])
        # a diverged network (nan, or nll past exp's range) is a huge but finite ppl, so it is
        # never kept as the best and never overflows
        return math.exp(min(nll, 700.0)) if math.isfinite(nll) else math.exp(700.0)

    def progress(self) -> float | None:
        """The fraction of the budget spent so far (CPU s or steps, whichever is further on);
        ``None`` on the anytime schedule."""
        o = self.options
        if o["schedule"] == "anytime":
            return None
        parts = [self.spent / o["horizon_seconds"]] if o["horizon_seconds"] else []
        parts += [self.step / o["horizon_steps"]] if o["horizon_steps"] else []
        return max(parts, default=0.0)

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
        progress = self.progress()  # before this step
        self.step += 1
        factor = lr_factor(self.step, progress, o["warmup"])
        for g in self.opt.param_groups:
            g["lr"] = o["lr"] * factor
        c1 = clock()
        loss = net.nll(b.x, b.sel, b.y, e, hidden=self.hidden)
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
                             "train_loss": train_loss, **self._weight_record()})
        if ppl < self.best["ppl"]:
            self.best.update(ppl=ppl, state=copy.deepcopy(self.lm.net.state_dict()),
                             step=self.step, seconds=self.spent, weight=self.weight)
        mixed = "" if self.weight is None else f" mixed (network weight {self.weight:.3f})"
        self.log(f"step {self.step}: {self.spent:.0f} CPU s, train loss {train_loss:.4f}, "
                 f"valid ppl{mixed} {ppl:.2f} (best {self.best['ppl']:.2f})")
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

        A residual hybrid whose best weights are still its start (step 0) *is* its base model,
        and a mixed one (``mix``) whose best mixture is no better on valid than the explicit
        model alone adds nothing to it: that is said in the log and recorded
        (``improved: false``) rather than returned silently."""
        net = self.lm.net
        net.load_state_dict(self.best["state"])
        net.eval()
        start = self.history[0]["valid_ppl"]
        if self.mix is not None:
            improved, what, start = self.best["ppl"] < self.base_ppl, "its explicit model", self.base_ppl
        else:
            improved = self.best["step"] > 0
            what = "its explicit base" if self.lm.explicit is not None else "its initial weights"
        if not improved:
            self.log(f"neural: NO GAIN: after {self.step} steps and {self.spent:.0f} CPU s no "
                     f"checkpoint beat {what} on valid (ppl {start:.2f}); the model returned is "
                     f"{what} (give it a larger max_seconds)")
        elif self.mix is not None:
            self.log(f"neural: best valid ppl mixed {self.best['ppl']:.2f} (network weight "
                     f"{self.best['weight']:.3f}) at step {self.best['step']} "
                     f"({self.best['seconds']:.0f} CPU s); the explicit model alone {start:.2f}")
        else:
            self.log(f"neural: best valid ppl {self.best['ppl']:.2f} at step {self.best['step']} "
                     f"({self.best['seconds']:.0f} CPU s), from {start:.2f} at the start")
        self.lm.training = {**self.options, "max_seconds": max_seconds, "max_steps": max_steps,
                            "steps": self.step, "epochs": round(self.epochs, 4),
                            "cpu_seconds": round(self.spent, 2),
                            "prep_cpu_seconds": round(self.prep_seconds, 2),
                            "best_step": self.best["step"],
                            "best_seconds": round(self.best["seconds"], 2),
                            "best_valid_ppl": self.best["ppl"], "improved": improved,
                            "start_valid_ppl": self.history[0]["valid_ppl"],
                            "valid_sample_tokens": self.vd.n_targets, "history": self.history,
                            "scale": float(net.scale.detach()),
                            **({} if self.mix is None else {"mix_weight": self.best["weight"],
                                                            "base_valid_ppl": self.base_ppl})}
        return self.lm


def fit(lm: NeuralLM, train_lines, valid_lines, *, max_seconds: float, max_steps: int | None = None,
        schedule: str = "budget", **options) -> NeuralLM:
    """Train ``lm.net`` in place for ``max_seconds`` CPU s; returns ``lm`` with the best weights.

    ``schedule``: ``"budget"`` (warm-up and cosine decay fitted to ``max_seconds`` /
    ``max_steps``) or ``"anytime"`` (``lr_factor``). ``options``: ``Trainer`` keywords (seed,
    batch_size, lr, warmup, weight_decay, eval_every, valid_tokens, crossfit, init, mix, log).
    """
    if schedule not in ("budget", "anytime"):
        raise InputError(f"schedule must be budget or anytime, got {schedule!r}")
    if not max_seconds > 0:
        raise OptionError(f"max_seconds must be > 0 CPU seconds, got {max_seconds}")
    if max_steps is not None and max_steps < 1:
        raise InputError(f"max_steps must be >= 1, got {max_steps}")
    horizon = (max_seconds, max_steps) if schedule == "budget" else None
    trainer = Trainer(lm, train_lines, valid_lines, horizon=horizon, **options)
    trainer.advance(max_seconds, max_steps)
    return trainer.finish(max_seconds, max_steps)
