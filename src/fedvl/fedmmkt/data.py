"""Image-text data for FedMMKT: one object per image, captioned by its class prompt.

A class is a (colour, shape) pair and its prompt names both ("a red circle"), so
the server's text-to-image model can be asked for any class by text alone. The
generator is pretrained on the public ``source`` style; every client holds private
images in a style of its own (``night``, ``sketch``, ...) that the generator never
saw. Images are the synthetic world's renderer at 3x the size with the object in
the middle cell, cropped to that cell, so the object fills the frame at 32 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedvl.data.world import COLORS, SHAPES, Obj, render


def class_names(colors: list[str], shapes: list[str]) -> list[str]:
    for c in colors:
        if c not in COLORS:
            raise ValueError(f"unknown colour {c!r} (known: {', '.join(COLORS)})")
    for s in shapes:
        if s not in SHAPES:
            raise ValueError(f"unknown shape {s!r} (known: {', '.join(SHAPES)})")
    return [f"{c} {s}" for c in colors for s in shapes]


def prompt(name: str) -> str:
    return f"a {name}"


@dataclass
class ImageTextSet:
    """Images in [-1, 1] (N, 3, H, W), class labels (N,), captions (the class prompts)."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor | np.ndarray | list[int]) -> ImageTextSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageTextSet(self.images[idx], self.labels[idx], [self.captions[i] for i in idx.tolist()])


def to_unit(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], the generator's pixel range."""
    return torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1.0)


def make_set(classes: list[str], domain: str, per_class: int, size: int, seed: int) -> ImageTextSet:
    """``per_class`` images of every class in ``domain``'s style; a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(per_class):
        for k, name in enumerate(classes):
            color, shape = name.split(" ")
            big = render([Obj(shape, color, "large", 1, 1)], domain, 3 * size, rng)
            images.append(to_unit(big[size:2 * size, size:2 * size]))
            labels.append(k)
    captions = [prompt(classes[k]) for k in labels]
    return ImageTextSet(torch.stack(images), torch.tensor(labels), captions)
