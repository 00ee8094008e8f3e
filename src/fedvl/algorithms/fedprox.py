"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020, https://arxiv.org/abs/1812.06127.

Client: the task loss plus (mu/2)·||w - w_global||² over the travelling
parameters, which keeps local models near the global one under heterogeneity.
Server: FedAvg. Options: ``fedvl.options.fedprox`` (``algorithm.prox_mu``).
"""

from __future__ import annotations

import torch

from fedvl.algorithms.base import Algorithm, ClientContext, ClientUpdate, ServerRule, register
from fedvl.engine.loops import cross_entropy_step
from fedvl.options.fedprox import FedProxOptions
from fedvl.schema import check_ranges


class FedProxClient(ClientUpdate):
    def make_step(self, ctx: ClientContext, optimizer: torch.optim.Optimizer):
        mu = self.cfg.algorithm.prox_mu
        named = dict(ctx.model.named_parameters())
        # the global parameters arrive on the CPU: one copy on the model's device for the whole round
        pairs = [(named[n], ctx.global_params[n].to(named[n].device)) for n in ctx.travel_names]

        def proximal() -> torch.Tensor:
            return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in pairs)

        return cross_entropy_step(ctx.model, optimizer, extra_loss=proximal if pairs else None,
                                  amp=ctx.amp)


def check_options(cfg) -> None:
    """FedProx's own options (``fedvl.options.fedprox``), run when a config loads."""
    check_ranges(cfg.algorithm, "algorithm.", list(FedProxOptions.RANGES))


ALGORITHM = register(Algorithm(
    name="fedprox",
    server=ServerRule,
    client=FedProxClient,
    summary="FedAvg with a proximal term mu/2·||w - w_global||² on the client",
    check=check_options,
))
