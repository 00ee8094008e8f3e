"""Small client task models of different architectures (FedMMKT's heterogeneous clients).

Every model maps an image to a feature of the shared prototype width ``proto_dim`` and
then to class logits: the feature is what per-class prototypes are built from, and a
common width is what lets the server compare prototypes of different architectures
(the clients also pull their features toward the server's global prototypes, which
gives the spaces a common geometry; FedProto-style, our choice).
"""

from __future__ import annotations

import torch
from torch import nn


class TaskModel(nn.Module):
    def __init__(self, body: nn.Module, body_dim: int, proto_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.proj = nn.Linear(body_dim, proto_dim)
        self.classifier = nn.Linear(proto_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (feature (B, proto_dim), logits (B, classes))."""
        feat = torch.relu(self.proj(self.body(x)))
        return feat, self.classifier(feat)


def _cnn(width: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    c_in = 3
    for c in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c_in


def _mlp(image_size: int, hidden: int) -> tuple[nn.Module, int]:
    d = 3 * image_size * image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU()), \
        hidden // 2


def _resmlp(image_size: int, patch: int, dim: int) -> tuple[nn.Module, int]:
    """Patches -> linear embedding -> two token-mixing MLP blocks (an MLP-Mixer-style net)."""

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            n = (image_size // patch) ** 2
            self.embed = nn.Conv2d(3, dim, patch, stride=patch)
            self.blocks = nn.ModuleList(
                nn.ModuleDict({"norm1": nn.LayerNorm(dim), "tok": nn.Sequential(nn.Linear(n, n), nn.GELU()),
                               "norm2": nn.LayerNorm(dim), "ch": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                                                              nn.Linear(2 * dim, dim))})
                for _ in range(2))

        def forward(self, x):
            h = self.embed(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
            for b in self.blocks:
                h = h + b["tok"](b["norm1"](h).transpose(1, 2)).transpose(1, 2)
                h = h + b["ch"](b["norm2"](h))
            return h.mean(1)

    return Mixer(), dim


ARCHITECTURES = ("cnn", "mlp", "mixer", "cnn-wide")


def build_task_model(arch: str, num_classes: int, image_size: int, proto_dim: int, seed: int) -> TaskModel:
    torch.manual_seed(seed)
    if arch == "cnn":
        body, d = _cnn(16)
    elif arch == "cnn-wide":
        body, d = _cnn(32)
    elif arch == "mlp":
        body, d = _mlp(image_size, 512)
    elif arch == "mixer":
        body, d = _resmlp(image_size, 4, 64)
    else:
        raise ValueError(f"unknown task model {arch!r} (known: {', '.join(ARCHITECTURES)})")
    return TaskModel(body, d, proto_dim, num_classes)
