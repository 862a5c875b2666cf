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

    manifest.json    {"format": "lmkit-neural", "version": 2, "config": GPTConfig fields,
                      "residual": bool, "learn_scale": bool, "weights": {"file", "sha256",
                      "bytes"}, "tokenizer": {"file", "sha256", "bytes"}, "training": {...},
                      "versions": {...}}
    tokenizer.model  the SentencePiece model
    weights.npz      the network's state dict as plain float32 arrays (``io.store.write_npz``;
                     no pickle: version 1 folders, whose weights.pt was one, are refused)
    explicit/        the frozen explicit model folder (``LanguageModel.save``), residual only
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError, ModelFormatError
from ..model import BaseModel, LanguageModel
from ..io.readfile import sha256_file
from ..io.store import (MAX_TOKENIZER_BYTES, NEURAL_FORMAT, NEURAL_VERSION, NEURAL_WEIGHTS,
                        folder_tokenizer, manifest_stamp, read_manifest, read_member, read_npz, sha256_bytes,
                        write_folder, write_manifest, write_npz, write_synced)
from ..tokenizer import Tokenizer
from .data import ExplicitRows, SequenceData
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
            explicit: torch.Tensor | None, hidden=None) -> torch.Tensor:
        """Mean negative log-likelihood (nats) of the targets ``y`` (N,) at positions ``sel``;
        ``hidden``: another implementation of ``gpt.hidden`` (the trainer's compiled one)."""
        h = (hidden or self.gpt.hidden)(x)
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
        return _finite(out)

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
        return _finite(lp[0].double().numpy())

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path, command: str | None = None) -> Path:
        """Write the model folder atomically (see the module docstring); an existing folder is
        replaced only if it is an lmkit model (``io.store.write_folder``)."""
        def fill(tmp: Path) -> None:
            arrays = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
            size, digest = write_npz(tmp / NEURAL_WEIGHTS, arrays)
            proto = self.tokenizer.model_proto
            write_synced(tmp / "tokenizer.model", proto)
            if self.explicit is not None:
                self.explicit.save(tmp / "explicit")
            manifest = {"format": NEURAL_FORMAT, "version": NEURAL_VERSION,
                        "config": self.config.to_dict(), "residual": self.explicit is not None,
                        "learn_scale": isinstance(self.net.scale, nn.Parameter),
                        "weights": {"file": NEURAL_WEIGHTS, "sha256": digest, "bytes": size},
                        "training": self.training,
                        **manifest_stamp(proto, command, torch=torch.__version__)}
            write_manifest(tmp, manifest)

        return write_folder(path, fill)

    @classmethod
    def load(cls, path) -> "NeuralLM":
        """Read a folder written by ``save``. Nothing in it is unpickled: the weights are a
        plain ``.npz`` read by ``io.store.read_npz``; the manifest's config is range-checked
        (``check_config``), the arrays' names, shapes and dtypes must be the network's (checked
        on a network built without memory, so a forged size allocates nothing) and every value
        finite. Each problem is one ``ModelFormatError`` naming the file and the fix."""
        path = Path(path)
        manifest = read_manifest(path, ("neural",), check=check_config, takes=_TAKES)
        cfg = GPTConfig(**manifest["config"])
        residual, learn_scale = manifest["residual"], manifest["learn_scale"]
        tfile, wfile = path / "tokenizer.model", path / NEURAL_WEIGHTS
        proto = read_member(tfile, "tokenizer", limit=MAX_TOKENIZER_BYTES)
        if sha256_bytes(proto) != manifest["tokenizer"]["sha256"]:
            raise ModelFormatError(f"{tfile}: corrupt or changed (sha256 differs); re-train the model")
        tokenizer = folder_tokenizer(proto, tfile, cfg.vocab_size, "config vocab_size")
        with torch.device("meta"):  # the shapes the config implies, without allocating them
            expected = Network(cfg, learn_scale=learn_scale).state_dict()
        want, size = manifest["weights"]["sha256"], manifest["weights"]["bytes"]
        need = 4 * sum(v.numel() for v in expected.values())  # float32 values
        if not need <= size <= min(need + _NPZ_SLACK * (len(expected) + 1), MAX_WEIGHTS_BYTES):
            raise ModelFormatError(f"{path / 'manifest.json'}: the config implies {need} bytes of "
                                   f"weights, the manifest declares {size} (at most "
                                   f"{MAX_WEIGHTS_BYTES} are read); re-train the model")
        # the size first (a forged 3 GB file is refused unread), then the hash in 16 MiB chunks
        if sha256_file(wfile, "weights", "re-train the model", size=size,
                       error=ModelFormatError) != want:
            raise ModelFormatError(f"{wfile}: corrupt or changed (sha256 differs); re-train the model")
        arrays = read_npz(read_member(wfile, "weights", size=size), wfile)
        check_weights(arrays, {k: tuple(v.shape) for k, v in expected.items()}, wfile)
        explicit = LanguageModel.load(path / "explicit") if residual else None
        net = Network(cfg, learn_scale=learn_scale)
        net.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in arrays.items()})
        if explicit is not None and explicit.vocab_size != tokenizer.vocab_size:
            raise ModelFormatError(f"{path / 'explicit'}: V={explicit.vocab_size}, the network "
                                   f"{tokenizer.vocab_size}; re-train the model")
        return cls(tokenizer, net, explicit, manifest.get("training"))


def _finite(logp: np.ndarray) -> np.ndarray:
    """``logp`` if it holds no NaN (finite weights can still overflow float32 in the network:
    then one error, never a NaN probability); -inf is a probability of 0 and stays."""
    if np.isnan(logp).any():
        raise ModelFormatError("the network's log-probabilities overflow float32 (NaN): its "
                               "weights are too large; re-train the model")
    return logp


_TAKES = "pass a folder written by `lmkit train --solver transformer|residual`"
# The ranges a saved config may take: enough for any model that fits MAX_WEIGHTS_BYTES
_CONFIG_RANGES = {"vocab_size": (1, 1 << 24), "block_size": (1, 1 << 16), "n_layer": (1, 1024),
                  "n_head": (1, 1024), "n_embd": (1, 1 << 16)}


def check_config(manifest: dict, bad) -> None:
    """The neural manifest's ``config``: exactly ``GPTConfig``'s fields, integers in
    ``_CONFIG_RANGES``, ``n_embd`` a multiple of ``n_head``, ``dropout`` in [0, 1),
    ``head_bias`` a boolean; raises ``bad(what)`` (``io.store.check_manifest``'s error) naming
    the first bad field."""
    cfg = manifest["config"]
    names = [f.name for f in dataclasses.fields(GPTConfig)]
    if sorted(cfg) != sorted(names):
        raise bad(f"'config' must have the fields {names}, got {sorted(cfg)[:10]}")
    for name, (lo, hi) in _CONFIG_RANGES.items():
        v = cfg[name]
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise bad(f"'config.{name}' must be an integer in [{lo}, {hi}], got {str(v)[:40]}")
    if cfg["n_embd"] % cfg["n_head"]:
        raise bad(f"'config.n_embd' ({cfg['n_embd']}) must be a multiple of 'config.n_head' "
                  f"({cfg['n_head']})")
    d = cfg["dropout"]
    if not (isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d < 1):
        raise bad(f"'config.dropout' must be a number in [0, 1), got {str(d)[:40]}")
    if not isinstance(cfg["head_bias"], bool):
        raise bad(f"'config.head_bias' must be true or false, got {str(cfg['head_bias'])[:40]}")


def check_weights(arrays: dict, shapes: dict, where) -> None:
    """The weight arrays are exactly the network's: same names, shapes (``shapes``), float32,
    every value finite; else a ``ModelFormatError`` naming the first difference."""
    fix = "the weights do not fit the config; re-train the model"
    if sorted(arrays) != sorted(shapes):
        missing, extra = sorted(set(shapes) - set(arrays)), sorted(set(arrays) - set(shapes))
        raise ModelFormatError(f"{where}: arrays missing {missing[:3]}, unexpected {extra[:3]}; {fix}")
    for name, want in shapes.items():
        a = arrays[name]
        if a.dtype.str != "<f4" or a.shape != want:
            raise ModelFormatError(f"{where}: array {name!r} is {a.dtype.str} {a.shape}, the "
                                   f"config says <f4 {want}; {fix}")
        if not np.isfinite(a).all():
            raise ModelFormatError(f"{where}: array {name!r} holds NaN or infinite values; "
                                   "re-train the model (its training diverged or the file was changed)")


MAX_WEIGHTS_BYTES = 8 << 30
_NPZ_SLACK = 512  # bytes per array beyond its values: .npy header, alignment, zip records
