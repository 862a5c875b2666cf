"""A small causal transformer (nanoGPT-like): token ids -> next-token logits.

Input: int64 tensor ``idx`` (B, T) with T <= ``block_size``, position 0 of every row the BOS id.
Output: float32 logits (B, T, V) (``forward``; ``hidden`` + ``head`` score chosen positions); row ``t`` scores the token after ``idx[:, :t+1]``. Padding at
the end of a row never changes earlier positions (causal attention), so batches are right-padded.

Pre-LayerNorm blocks, GELU MLP of width 4C, learned positions, output head tied to the token
embedding, no biases in the linear layers (``head_bias``: an optional one on the output layer). Default size (4 layers, 4 heads, width 256, V 4096,
block 64): 4.22M parameters.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TokenizerConfig


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = TokenizerConfig.vocab_size  # always given: the tokenizer's
    block_size: int = 64   # longest context seen at once; longer lines are scored in windows
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0   # runs here stay below one epoch, where dropout only slows learning
    head_bias: bool = False  # a bias on the output layer (explicit init puts the unigram there)

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        if cfg.head_bias:
            self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx):
        """Final hidden states (B, T, C) after the last LayerNorm."""
        T = idx.shape[1]
        assert T <= self.cfg.block_size, "callers cut contexts to block_size"
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def head(self, h):
        """Logits (..., V) of hidden states (..., C): the head is tied to the token embedding."""
        out = h @ self.wte.weight.T
        return out + self.head_bias if self.cfg.head_bias else out

    def forward(self, idx):
        return self.head(self.hidden(idx))
