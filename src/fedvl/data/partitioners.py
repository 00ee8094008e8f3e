"""Re-partition pooled samples across clients: label skew (Dirichlet) and quantity skew.

Pure functions of (labels, seed): they return index lists and never touch data.
"""

from __future__ import annotations

import numpy as np


def dirichlet_label_skew(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
                         min_size: int = 1) -> list[np.ndarray]:
    """Split sample indices so each class is spread over clients with Dir(alpha) shares.

    Small ``alpha`` -> each client sees few classes (strong skew); large ``alpha``
    -> close to IID. Redraws (up to 100 times) until every client has at least
    ``min_size`` samples, as in the common implementation of Hsu et al. 2019
    (https://arxiv.org/abs/1909.06335).
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    else:
        raise ValueError(f"could not give every one of {num_clients} clients {min_size} samples with alpha={alpha}")
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def quantity_skew(num_samples: int, num_clients: int, alpha: float, seed: int,
                  min_size: int = 1) -> list[np.ndarray]:
    """Split ``num_samples`` IID indices into client shards of Dir(alpha)-distributed sizes."""
    if num_samples < num_clients * min_size:
        raise ValueError(f"{num_samples} samples cannot give {num_clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(num_samples)
    shares = rng.dirichlet(np.full(num_clients, alpha))
    sizes = np.maximum(min_size, np.floor(shares * (num_samples - num_clients * min_size)).astype(int) + min_size)
    # Hand the rounding remainder (or excess) to the largest shard.
    sizes[np.argmax(sizes)] += num_samples - sizes.sum()
    return [np.sort(p) for p in np.split(idx, np.cumsum(sizes)[:-1])]
