"""Turn a :class:`Split` into model-ready tensors, computing frozen vision features once.

The vision tower never trains, so its output per image is a constant: it is
computed once, stored in half precision on disk under ``cache_dir`` and reused
by every round, client and later run. The cache key hashes the image bytes and
the vision model's identity, so a changed image or model misses the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedvl.data.world import Split
from fedvl.io import atomic_write


@dataclass
class EncodedSplit:
    input_ids: torch.Tensor  # (N, L) long
    attention_mask: torch.Tensor  # (N, L) long
    image_index: torch.Tensor  # (N,) long, row of ``features``
    labels: torch.Tensor  # (N,) long
    features: torch.Tensor  # (N_images, C, h, w) half
    task: str = "vqa"  # the label space of ``labels`` (a key of world.TASKS); picks the model's head
    # Real VQA data (fedvl.data.real): the human answers of each question as (label index, VQA score)
    # pairs, -1 = padding; ``labels`` may hold -1 there (a test answer outside the vocabulary).
    score_idx: torch.Tensor | None = None  # (N, A) long
    score_val: torch.Tensor | None = None  # (N, A) float

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[idx],
            "attention_mask": self.attention_mask[idx],
            "features": self.features[self.image_index[idx]].float(),
            "labels": self.labels[idx],
        }

    @staticmethod
    def concat(parts: list["EncodedSplit"]) -> "EncodedSplit":
        tasks = {p.task for p in parts}
        if len(tasks) != 1:
            # labels of different tasks index different label lists: pooling them is undefined
            raise ValueError(f"cannot concatenate splits of different tasks {sorted(tasks)}")
        offsets = np.cumsum([0] + [p.features.shape[0] for p in parts[:-1]])
        width = max(p.input_ids.shape[1] for p in parts)

        def pad(t: torch.Tensor, to: int = width, value: float = 0) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, to - t.shape[1]), value=value)

        scored = {}
        if all(p.score_idx is not None for p in parts):
            a = max(p.score_idx.shape[1] for p in parts)
            scored = {"score_idx": torch.cat([pad(p.score_idx, a, -1) for p in parts]),
                      "score_val": torch.cat([pad(p.score_val, a) for p in parts])}
        return EncodedSplit(
            input_ids=torch.cat([pad(p.input_ids) for p in parts]),
            attention_mask=torch.cat([pad(p.attention_mask) for p in parts]),
            image_index=torch.cat([p.image_index + int(o) for p, o in zip(parts, offsets)]),
            labels=torch.cat([p.labels for p in parts]),
            features=torch.cat([p.features for p in parts]),
            task=parts[0].task,
            **scored,
        )


def image_features(model, images: np.ndarray, cache_dir: str | None, batch_size: int = 64) -> torch.Tensor:
    """Frozen vision features for every image, from the cache when possible."""
    spec = model.vision_spec
    key = hashlib.sha256(images.tobytes() + repr(images.shape).encode()).hexdigest()[:24]
    path = Path(cache_dir) / "features" / f"{spec.key}-{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if feats.shape[0] == images.shape[0] and feats.shape[1] == model.feature_channels:
                return feats
        except Exception:  # a truncated or corrupt cache file is recomputed, not trusted
            pass
    chunks = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(images[start:start + batch_size])
        chunks.append(model.image_features(chunk).half().cpu())  # cached and batched from the CPU
    feats = torch.cat(chunks) if chunks else torch.zeros(0)
    if path is not None:
        atomic_write(path, lambda tmp: torch.save(feats, tmp))
    return feats


def encode_split(split: Split, model, tokenizer, max_len: int, cache_dir: str | None) -> EncodedSplit:
    questions = [s.question for s in split.samples]
    tok = tokenizer(questions, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return EncodedSplit(
        input_ids=tok["input_ids"],
        attention_mask=tok["attention_mask"],
        image_index=torch.tensor([s.image for s in split.samples], dtype=torch.long),
        labels=torch.from_numpy(split.labels),
        features=image_features(model, split.images, cache_dir),
        task=split.task,
    )
