"""Secure aggregation of a train round with Flower's SecAgg+ (``run.secagg=true``).

Flower ships SecAgg+ as a legacy workflow (``flwr.server.workflow.SecAggPlusWorkflow``,
server) and a client mod (``flwr.client.mod.secaggplus_mod``); flwr 1.42 has no
Message-API version. fedvl's round loop drives that workflow for one round at a
time: :func:`secure_train` hands it the sampled nodes through a two-method stand-in
for a legacy strategy and receives only the unmasked weighted mean. The workflow's
four stages (keys, key shares, masked vectors, unmasking) run over the same grid.

What is summed is each client's update *delta* (trained minus global parameters),
weighted by its sample count (``algorithm.aggregation=weighted``) or by 1 (uniform):
the mod multiplies the delta by weight / max_weight, quantises it into
[-run.secagg_clip, run.secagg_clip] and masks it; the weights travel in the same
secure sum, so the server divides the summed weighted deltas by the summed weights
without seeing either per client. Deltas are small next to the parameters
themselves, so a tight clipping range keeps the quantisation error small.

The server never sees an individual update, so it cannot validate one: it validates
the aggregate instead (keys, shapes, finite values, the norm bound of
``algorithm.max_update_norm``). Sample counts and training metrics stay plaintext.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from fedvl.transport.flower_env import FLOWER_ENV  # noqa: F401  (first: before flwr is imported)

# isort: split
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from fedvl.algorithms.aggregate import Params, UpdateRejected, validate_update
from fedvl.schema import ExperimentConfig
from fedvl.seeding import derived_seed

FITINS_CONFIG = "fitins.config"  # present only in the masked-vector stage's message: a secure train round


# ---------------------------------------------------------------- protocol sizes


def shares_and_threshold(cfg: ExperimentConfig, sampled: int) -> tuple[int, int]:
    """The round's SecAgg+ graph: every client's secrets are split into ``shares`` shares
    (itself and its shares - 1 nearest neighbours; 0 = every sampled client, classic SecAgg)
    and ``threshold`` of them rebuild a secret (0 = a majority of the shares)."""
    shares = cfg.run.secagg_shares or sampled
    return shares, cfg.run.secagg_threshold or shares // 2 + 1


def _workflow_sizes(shares: int, threshold: int, sampled: int) -> tuple[int | float, int | float]:
    """Flower reads an int as a count and a float as a share of the clients / of the shares;
    its checks refuse some counts (shares <= 2, threshold == shares), which are exact as shares."""
    return 1.0 if shares >= sampled else shares, 1.0 if threshold >= shares else threshold


# ---------------------------------------------------------------- client side


def client_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's SecAgg+ client mod for secure train rounds only; a plain train message
    (``run.secagg=false``) goes straight to the train handler."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(msg: Message) -> bool:
    return FITINS_CONFIG in msg.content.config_records


def read_fitins(msg: Message) -> tuple[dict[str, Any], Params]:
    """The round config and the global parameters of a secure train message."""
    # read directly: the legacy FitIns converter refuses the list of parameter names
    config = dict(msg.content.config_records[FITINS_CONFIG])
    arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(msg.content.array_records["fitins.parameters"],
                                                                     keep_input=True))
    return config, {k: torch.from_numpy(a.copy()) for k, a in zip(config["keys"], arrays, strict=True)}


def masked_reply(msg: Message, cfg: ExperimentConfig, cid: str, rnd: int, global_params: Params,
                 params: Params, num_examples: int, metrics: dict[str, float]) -> Message:
    """The train reply the SecAgg+ mod masks: the update's delta and the client's weight.
    The mod then empties the reply's arrays; only the masked vector leaves the node."""
    delta = [(params[k].to(torch.float64) - global_params[k].to(torch.float64)).numpy() for k in global_params]
    if not all(np.isfinite(d).all() for d in delta):  # an honest client never masks garbage
        raise FloatingPointError(f"client {cid}: its update has NaN or Inf; not sending it")
    clip = cfg.run.secagg_clip
    clipped = int(sum((np.abs(d) > clip).sum() for d in delta))
    weight = num_examples if cfg.algorithm.aggregation == "weighted" else 1
    # the mod rounds stochastically with numpy's global generator: seeded here, the run is reproducible
    np.random.seed(derived_seed(cfg.run.seed, "secagg-rounding", rnd, cid) % 2**32)
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(delta), weight,
                 dict(metrics, n=num_examples, secagg_clipped=clipped))
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


# ---------------------------------------------------------------- server side


@dataclass
class _Node:
    """What the workflow needs of a legacy client proxy."""

    node_id: int
    cid: str


@dataclass
class _Round:
    """The two methods of a legacy strategy the SecAgg+ workflow calls: which nodes train
    (with what), and the hand-over of the unmasked aggregate."""

    fitins: dict[str, FitIns]
    nodes: dict[str, int]
    mean: list[np.ndarray] | None = None
    results: dict[str, FitRes] = field(default_factory=dict)

    def configure_fit(self, server_round, parameters, client_manager):
        return [(_Node(self.nodes[cid], cid), ins) for cid, ins in self.fitins.items()]

    def aggregate_fit(self, server_round, results, failures):
        # every FitRes carries the same parameters: the workflow's unmasked weighted mean
        self.results = {proxy.cid: res for proxy, res in results}
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


def secure_train(grid, cfg: ExperimentConfig, nodes: dict[str, int], sampled: list[str], rnd: int,
                 global_params: Params, max_weight: int, timeout: float | None
                 ) -> tuple[Params | None, dict[str, FitRes]]:
    """One train round under SecAgg+: (new global parameters, plaintext FitRes of every client
    whose masked vector is in the sum); ``None`` when the protocol halted (too many dropouts)."""
    keys = list(global_params)
    down = ndarrays_to_parameters([global_params[k].numpy() for k in keys])
    fitins = {cid: FitIns(down, {"cid": cid, "round": rnd, "keys": keys}) for cid in sampled}
    shares, threshold = shares_and_threshold(cfg, len(sampled))
    num_shares, num_threshold = _workflow_sizes(shares, threshold, len(sampled))
    workflow = SecAggPlusWorkflow(num_shares, num_threshold, clipping_range=cfg.run.secagg_clip,
                                  max_weight=float(max_weight if cfg.algorithm.aggregation == "weighted" else 1),
                                  timeout=timeout)
    strategy = _Round(fitins, nodes)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=strategy)  # type: ignore[arg-type]
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # the parameters travel in ``fitins``
    workflow(grid, context)
    if strategy.mean is None:
        return None, {}
    mean = {k: (global_params[k].to(torch.float64) + torch.from_numpy(np.asarray(a, dtype=np.float64)))
            .to(global_params[k].dtype) for k, a in zip(keys, strategy.mean, strict=True)}
    return mean, strategy.results


def check_aggregate(cfg: ExperimentConfig, global_params: Params, new: Params) -> str | None:
    """What the server can still check under SecAgg+: the aggregate's keys, shapes, dtypes,
    finiteness and the size of its step (``algorithm.max_update_norm``). Returns why it is
    invalid, or None."""
    try:
        validate_update(global_params, new, 1, max_update_norm=cfg.algorithm.max_update_norm)
    except UpdateRejected as e:
        return str(e)
    return None


def round_record(cfg: ExperimentConfig, rnd: int, sampled: list[str], results: dict[str, FitRes]) -> dict[str, Any]:
    """The round's training record, from the clients' plaintext metrics."""
    train = {cid: {k: float(v) for k, v in res.metrics.items()} for cid, res in results.items()}
    losses = [m["train_loss"] for m in train.values() if math.isfinite(m.get("train_loss", math.nan))]
    shares, threshold = shares_and_threshold(cfg, len(sampled))
    clipped = sum(int(m.get("secagg_clipped", 0)) for m in train.values())
    if clipped:
        print(f"fedvl: round {rnd}: {clipped} update coordinate(s) beyond run.secagg_clip={cfg.run.secagg_clip} "
              "were clipped before secure aggregation", file=sys.stderr)
    return {"round": rnd, "sampled": list(sampled), "train": train,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "compute_s": float(sum(m.get("compute_s", 0.0) for m in train.values())),
            "secagg": {"clients": len(results), "shares": shares, "threshold": threshold, "clipped": clipped}}
