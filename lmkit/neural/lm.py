"""``NeuralLM``: a transformer language model, alone or as a residual on a frozen explicit model.

Next-token log-probabilities (natural logs)::

    scratch:  log_softmax(f_theta(context))
    residual: log_softmax(a * log P_explicit(. | context) + f_theta(context))

``f_theta`` is ``transformer.GPT``; ``P_explicit`` any lmkit ``LanguageModel`` (window, MKN,
MKN + window), frozen; ``a`` a scalar, learned when ``learn_scale`` (initialised to 1) else 1.
With ``f_theta = 0`` and ``a = 1`` the hybrid is exactly the explicit model.

The class offers what ``lmkit.evaluate`` and ``lmkit.generate`` use — ``tokenizer``,
``encode_lines``, ``log_proba_ids``, ``next_logp`` — and ``score`` / ``perplexity`` /
``sample`` / ``save`` / ``load``. Folder layout (written to a temp folder, then renamed)::

    manifest.json    {"format": "lmkit-neural", "version": 1, "config": GPTConfig fields,
                      "residual": bool, "learn_scale": bool, "weights": {"file", "sha256"},
                      "tokenizer": {"file", "sha256"}, "training": {...}, "versions": {...}}
    tokenizer.model  the SentencePiece model
    weights.pt       the network's state dict (torch.save; read with weights_only=True)
    explicit/        the frozen explicit model folder (``LanguageModel.save``), residual only
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError, MissingPathError, ModelFormatError
from ..model import BaseModel, LanguageModel
from ..store import manifest_stamp, peek_manifest, read_regular, sha256_bytes, write_folder
from ..tokenizer import Tokenizer
from .data import ExplicitRows, SequenceData
from .folder import FORMAT, VERSION
from .transformer import GPT, GPTConfig


INITS = ("random", "explicit")


class Network(nn.Module):
    """``f_theta`` plus the scale ``a`` on the explicit term (a parameter, or a fixed buffer)."""

    def __init__(self, cfg: GPTConfig, learn_scale: bool = True):
        super().__init__()
        self.gpt = GPT(cfg)
        one = torch.ones(())
        if learn_scale:
            self.scale = nn.Parameter(one)
        else:
            self.register_buffer("scale", one)

    def log_proba(self, x: torch.Tensor, sel: torch.Tensor, explicit: torch.Tensor | None):
        """Log-distributions (N, V) float32 at the flat positions ``sel`` of the inputs ``x``."""
        h = self.gpt.hidden(x)
        logits = self.gpt.head(h.reshape(-1, h.shape[-1])[sel])
        if explicit is not None:
            logits = logits + self.scale * explicit
        return torch.log_softmax(logits, dim=-1)

    def nll(self, x: torch.Tensor, sel: torch.Tensor, y: torch.Tensor,
            explicit: torch.Tensor | None) -> torch.Tensor:
        """Mean negative log-likelihood (nats) of the targets ``y`` (N,) at positions ``sel``."""
        h = self.gpt.hidden(x)
        logits = self.gpt.head(h.reshape(-1, h.shape[-1])[sel])
        if explicit is not None:
            logits = logits + self.scale * explicit
        return torch.nn.functional.cross_entropy(logits, y)


class NeuralLM(BaseModel):
    """A trained (or freshly initialised) network + tokenizer (+ frozen explicit model)."""

    def __init__(self, tokenizer: Tokenizer, net: Network, explicit: LanguageModel | None = None,
                 training: dict | None = None):
        if explicit is not None and explicit.vocab_size != tokenizer.vocab_size:
            raise InputError(f"explicit model has V={explicit.vocab_size}, tokenizer "
                             f"{tokenizer.vocab_size}; use the explicit model's tokenizer")
        if net.gpt.cfg.vocab_size != tokenizer.vocab_size:
            raise InputError(f"network has V={net.gpt.cfg.vocab_size}, tokenizer "
                             f"{tokenizer.vocab_size}; build the network with the tokenizer's size")
        self.tokenizer = tokenizer
        self.net = net
        self.explicit = explicit
        self.training = dict(training or {})

    @classmethod
    def create(cls, tokenizer: Tokenizer, *, explicit: LanguageModel | None = None,
               config: GPTConfig | None = None, learn_scale: bool = True, seed: int = 0,
               init: str = "random"):
        """A freshly initialised model (weights drawn with ``torch.manual_seed(seed)``);
        ``init="explicit"`` adds the output bias that ``init_explicit`` (called by the trainer,
        which has the training ids) fills."""
        cfg = config or GPTConfig(vocab_size=tokenizer.vocab_size)
        if cfg.vocab_size != tokenizer.vocab_size:
            cfg = GPTConfig(**{**cfg.to_dict(), "vocab_size": tokenizer.vocab_size})
        if init not in INITS:
            raise InputError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if init == "explicit" and not cfg.head_bias:
            cfg = GPTConfig(**{**cfg.to_dict(), "head_bias": True})
        torch.manual_seed(seed)
        net = Network(cfg, learn_scale=learn_scale and explicit is not None)
        if explicit is not None:
            # f_theta starts at exactly 0 (the final LayerNorm's gain), so the hybrid starts as
            # the explicit model; the gain's gradient is non-zero, so learning starts at once
            torch.nn.init.zeros_(net.gpt.ln_f.weight)
        return cls(tokenizer, net, explicit)

    @property
    def config(self) -> GPTConfig:
        return self.net.gpt.cfg

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def describe(self) -> str:
        kind = "residual on " + self.explicit.describe() if self.explicit else "transformer"
        gain = ""
        if self.training.get("improved") is False and self.explicit is not None:
            gain = "; NO GAIN: training did not beat the base on valid, this is the base model"
        return (f"neural {kind}; {self.net.gpt.n_params() / 1e6:.2f}M parameters, "
                f"scale={float(self.net.scale.detach()):.4g}{gain}")

    # ---- scoring -----------------------------------------------------------------------------
    def init_explicit(self, seqs: list, rank: int | None = None, seed: int = 0) -> dict:
        """Explicit initialisation (``explicit_init.py``) from the training ids ``seqs``: the
        output bias from the unigram, the first ``rank`` embedding columns (shared by the tied
        head) from the bigram PMI. Needs ``head_bias``; returns what was set, for the record."""
        from .explicit_init import init_arrays
        gpt = self.net.gpt
        if not gpt.cfg.head_bias:
            raise InputError("explicit init needs a network with head_bias=True "
                             "(NeuralLM.create(..., init='explicit') makes one)")
        tok = self.tokenizer
        bias, emb = init_arrays(seqs, self.vocab_size, tok.bos_id, tok.eos_id, gpt.cfg.n_embd,
                                rank=rank, seed=seed)
        with torch.no_grad():
            gpt.head_bias.copy_(torch.from_numpy(bias))
            gpt.wte.weight[:, :emb.shape[1]] = torch.from_numpy(emb)
        return {"init": "explicit", "init_rank": int(emb.shape[1])}

    def data(self, seqs: list, explicit: bool = True) -> tuple[SequenceData, ExplicitRows | None]:
        """Windows of ``seqs`` and, for a hybrid, the explicit model's rows of every target."""
        tok = self.tokenizer
        d = SequenceData(seqs, tok.bos_id, tok.eos_id, self.config.block_size)
        use = explicit and self.explicit is not None
        return d, (ExplicitRows(self.explicit, seqs) if use else None)

    @torch.no_grad()
    def target_log_proba(self, d: SequenceData, rows: ExplicitRows | None,
                         batch_size: int = 128) -> np.ndarray:
        """log P(target) of every flat target of ``d``: float64 (N,)."""
        was_training = self.net.training
        self.net.eval()
        out = np.empty(d.n_targets)
        for ids in d.eval_order(batch_size):
            b = d.batch(ids)
            e = rows.log_proba(b.flat) if rows is not None else None
            lp = self.net.log_proba(b.x, b.sel, e)
            out[b.flat] = lp.gather(1, b.y[:, None])[:, 0].double().numpy()
        self.net.train(was_training)
        return out

    def log_proba_ids(self, seqs: list) -> tuple[np.ndarray, np.ndarray]:
        """Per-target natural-log probabilities (EOS included) and sequence index, flat order."""
        d, rows = self.data(seqs)
        seq_index = np.repeat(np.arange(len(seqs)), np.diff(d.offsets))
        return self.target_log_proba(d, rows), seq_index

    @torch.no_grad()
    def next_logp(self, prefix_ids) -> np.ndarray:
        """log P(next token | sequence so far) for every token id; (V,) float64."""
        prefix = [int(i) for i in prefix_ids]
        inp = ([self.tokenizer.bos_id] + prefix)[-self.config.block_size:]
        was_training = self.net.training
        self.net.eval()
        e = None
        if self.explicit is not None:
            e = torch.from_numpy(self.explicit.next_logp(prefix).astype(np.float32))[None]
        lp = self.net.log_proba(torch.tensor([inp]), torch.tensor([len(inp) - 1]), e)
        self.net.train(was_training)
        return lp[0].double().numpy()

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path, command: str | None = None) -> Path:
        """Write the model folder atomically (see the module docstring); an existing folder is
        replaced only if it is an lmkit model (``store.write_folder``)."""
        def fill(tmp: Path) -> None:
            torch.save(self.net.state_dict(), tmp / "weights.pt")
            proto = self.tokenizer.model_proto
            (tmp / "tokenizer.model").write_bytes(proto)
            if self.explicit is not None:
                self.explicit.save(tmp / "explicit")
            manifest = {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
                        "residual": self.explicit is not None,
                        "learn_scale": isinstance(self.net.scale, nn.Parameter),
                        "weights": {"file": "weights.pt", "sha256": _sha256(tmp / "weights.pt")},
                        "training": self.training,
                        **manifest_stamp(proto, command, torch=torch.__version__)}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

        return write_folder(path, fill)

    @classmethod
    def load(cls, path) -> "NeuralLM":
        """Read a folder written by ``save``; weights with ``torch.load(weights_only=True)``."""
        path = Path(path)
        manifest = read_manifest(path)
        try:
            cfg = GPTConfig(**manifest["config"])
            wfile, tfile = path / manifest["weights"]["file"], path / manifest["tokenizer"]["file"]
            want_w, want_t = manifest["weights"]["sha256"], manifest["tokenizer"]["sha256"]
            residual, learn_scale = bool(manifest["residual"]), bool(manifest["learn_scale"])
        except (KeyError, TypeError) as e:
            raise ModelFormatError(f"{path}: manifest lacks or mangles {e}; re-train the model") from None
        for f, want in ((wfile, want_w), (tfile, want_t)):
            if f.parent != path or not f.is_file():
                raise ModelFormatError(f"{path}: missing {f.name}; the folder is incomplete, re-train")
            if _sha256(f) != want:
                raise ModelFormatError(f"{f}: corrupt or changed (sha256 differs); re-train the model")
        explicit = LanguageModel.load(path / "explicit") if residual else None
        tokenizer = Tokenizer(tfile.read_bytes())
        net = Network(cfg, learn_scale=learn_scale)
        try:
            net.load_state_dict(torch.load(wfile, map_location="cpu", weights_only=True))
        except (RuntimeError, ValueError, OSError) as e:
            why = " ".join(str(e).split())[:200]
            raise ModelFormatError(f"{wfile}: weights do not fit the config ({why}); re-train") from None
        return cls(tokenizer, net, explicit, manifest.get("training"))


def read_manifest(path: Path) -> dict:
    """The manifest of a neural model folder; clear errors for anything else."""
    if not path.is_dir():
        raise MissingPathError(f"{path}: no such model folder; train one with "
                               "`lmkit train --solver residual --output DIR`")
    manifest = peek_manifest(path)  # bounded read of untrusted input; None if unreadable
    if manifest is None or manifest.get("format") != FORMAT:
        raise ModelFormatError(f"{path}: not an lmkit neural model; pass the folder written by "
                               "`lmkit train --solver residual`")
    if manifest.get("version") != VERSION:
        raise ModelFormatError(f"{path}: neural format version {manifest.get('version')!r}, this "
                               f"lmkit reads {VERSION}; re-train the model")
    return manifest


def _sha256(p: Path) -> str:
    """sha256 of a regular file of at most ``MAX_WEIGHTS_BYTES`` (never a device or FIFO)."""
    return sha256_bytes(read_regular(p, MAX_WEIGHTS_BYTES, "weights"))


MAX_WEIGHTS_BYTES = 8 << 30
