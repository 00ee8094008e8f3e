"""What every backbone shares (the default model of :mod:`fedvl.models.backbones` and the
Hugging Face ones of :mod:`fedvl.models.hf`): the error for a missing pretrained part, the
key of a frozen vision tower and the answer head. Its own module so neither backbone
module imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ModelUnavailableError(RuntimeError):
    """A pretrained part is missing; the message names the package that provides it."""


@dataclass
class VisionSpec:
    """Identifies the frozen vision tower; part of the feature-cache key."""

    name: str
    image_size: int
    tokens: str = "s32"

    # Bump when image_features() changes what it computes: the cache key holds it.
    version: int = 2

    @property
    def key(self) -> str:
        return f"{self.name}-{self.image_size}px-{self.tokens}-v{self.version}"


class AnswerHead(nn.Module):
    """Question-conditioned attention pooling, then an MLP over the answers.

    The question (mean of its text tokens, how all-MiniLM-L6-v2 pools) forms
    the query of a small multi-head attention over all output tokens, so the
    head can read the visual token the question is about; mean pooling alone
    averages that token away and learned grounding far more slowly here.
    The question tokens are ``h[:, text_start:text_start + text_len]``: a soft
    prompt in front of them (peft=prompt) must not be averaged into the query.
    """

    def __init__(self, hidden: int, head_hidden: int, num_answers: int, heads: int = 4):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, head_hidden), nn.GELU(), nn.LayerNorm(head_hidden),
                                 nn.Linear(head_hidden, num_answers))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, text_len: int, text_start: int = 0) -> torch.Tensor:
        text = slice(text_start, text_start + text_len)
        tm = mask[:, text].unsqueeze(-1).to(h.dtype)
        question = (h[:, text] * tm).sum(1) / tm.sum(1).clamp_min(1.0)
        read, _ = self.attn(self.query(question).unsqueeze(1), h, h, key_padding_mask=mask == 0,
                            need_weights=False)
        return self.mlp(torch.cat([question, read.squeeze(1)], dim=-1))
