"""Model-poisoning attacks for robustness experiments (never for real runs).

A share of the clients, chosen once per run from the seed, replaces the update
it would send by a malicious one built from its honest delta Δ = u - g:

* ``sign_flip``: g - scale·Δ (sign-flipping, e.g. Fang et al. 2020, https://arxiv.org/abs/1911.11815);
* ``scaled``: g + scale·Δ (boosted / model-replacement updates, Bagdasaryan et al. 2020,
  https://arxiv.org/abs/1807.00459);
* ``noise``: g + scale·ε with ε Gaussian of the honest delta's per-tensor RMS (random updates of a
  plausible size, Blanchard et al. 2017, https://arxiv.org/abs/1703.02891).

Applied inside ``runtime.simulator.client_fit``, so every runtime gets it.
"""

from __future__ import annotations

import numpy as np
import torch

from fedvl.algorithms.aggregate import Params
from fedvl.schema import ConfigError
from fedvl.seeding import derived_seed

ATTACKS = ("sign_flip", "scaled", "noise")


def choose_attackers(client_ids: list[str], fraction: float, seed: int) -> list[str]:
    """round(fraction·n) clients, the same ones for the same seed (and for every runtime)."""
    k = round(fraction * len(client_ids))
    if k <= 0:
        return []
    rng = np.random.default_rng(derived_seed(seed, "attackers"))
    chosen = rng.choice(len(client_ids), size=min(k, len(client_ids)), replace=False)
    return [client_ids[i] for i in sorted(chosen)]


def attack_update(reference: Params, update: Params, kind: str, scale: float, generator: torch.Generator) -> Params:
    """The malicious update a client sends instead of ``update`` (see the module docstring)."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r} (known: {', '.join(ATTACKS)})")
    out: Params = {}
    for k, g in reference.items():
        g64 = g.to(torch.float64)
        delta = update[k].to(torch.float64) - g64
        if kind == "sign_flip":
            bad = g64 - scale * delta
        elif kind == "scaled":
            bad = g64 + scale * delta
        else:
            rms = delta.pow(2).mean().sqrt() if delta.numel() else delta.new_zeros(())
            bad = g64 + scale * rms * torch.randn(g.shape, generator=generator, dtype=torch.float64)
        out[k] = bad.to(g.dtype)
    return out


def check_options(cfg) -> None:
    """The ``attack`` section (experiments only), run when a config loads."""
    atk = cfg.attack
    if atk.kind != "none" and round(atk.fraction * cfg.data.num_clients) < 1:
        raise ConfigError(f"attack.kind={atk.kind} with attack.fraction={atk.fraction} of {cfg.data.num_clients} "
                          "clients selects no attacker; raise attack.fraction")
