"""The knowledge exchange (the FedMMKT family: fedmmkt, kt-distill, kt-local, kt-fedavg): a
synthetic set goes down with the previous round's distillation set and global prototypes,
logits and prototypes on the synthetic set come back (or, for kt-fedavg, task-model weights,
averaged within each architecture and sent back down before evaluation).

:class:`KnowledgeServer` is the server side of :func:`fedvl.rounds.loop.run_rounds`; it reads
only the flags of the algorithm's :class:`fedvl.fedmmkt.algorithms.KTServerRule`.
:class:`KnowledgeNode` is the client side of the clients one process holds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedvl.algorithms.aggregate import UpdateRejected
from fedvl.fedmmkt.algorithms import (
    DistillSet,
    averaged_keys,
    ensemble,
    global_prototypes,
    next_pool,
    quality_filter,
    training_pool,
)
from fedvl.fedmmkt.data import ImageTextSet, prompt
from fedvl.rounds.checkpoint import commit_round, resume_from
from fedvl.fedmmkt.federation import (
    KTFederation,
    ServerState,
    average_by_arch,
    check_report,
    cpu_state,
    eval_generator,
    generate,
    task_model,
    update_generator,
)
from fedvl.rounds.loop import InProcess, play_round
from fedvl.rounds.state import ClientStateStore
from fedvl.seeding import derived_seed


@dataclass
class KTDown:
    """What every client of a round receives."""

    synthetic: ImageTextSet | None
    """This round's synthetic set, to report logits and prototypes on (None: nothing to report)."""
    distill: DistillSet | None
    """The previous round's accepted samples and their ensemble soft labels."""
    protos: torch.Tensor | None
    """The previous round's global prototypes."""
    send_weights: bool = False
    """Send the trained task-model weights back (kt-fedavg)."""


class KnowledgeServer:
    """Generates, ensembles, filters, updates the generator, scores it. ``state`` carries what the
    server keeps from one round to the next (:class:`ServerState`). With a ``run_dir`` every round
    is checkpointed: the clients' task models, and the server's tensors (the generator's trainable
    parameters and their optimiser state, the alignment head, the synthetic and distillation sets,
    the prototypes, the sample grids)."""

    def __init__(self, fed: KTFederation, state: ServerState | None = None, run_dir: Path | None = None,
                 config_digest: str | None = None):
        self.fed, self.state = fed, state if state is not None else ServerState()
        self.run_dir, self.config_digest = run_dir, config_digest
        self.rounds = fed.cfg.algorithm.rounds
        self.averaged: dict[str, dict[str, torch.Tensor]] | None = None
        self.timing: dict[str, float] = {}
        self._t = 0.0

    def sample(self, rnd: int) -> list[str]:
        return list(self.fed.client_ids)  # every client, every round

    def configure_fit(self, rnd: int, sampled: list[str], progress) -> KTDown:
        fed, kt, strat, state = self.fed, self.fed.cfg.fedmmkt, self.fed.server, self.state
        self.timing = {}
        if strat.synthetic and (state.synthetic is None or strat.regenerate):
            if progress:
                progress.phase(f"round {rnd} · generating the synthetic set")
            tg = time.perf_counter()
            state.synthetic = generate(fed, kt.synthetic_per_class, derived_seed(fed.cfg.run.seed, "synthetic", rnd))
            self.timing["generate_s"] = time.perf_counter() - tg
        self._t = time.perf_counter()
        # what the clients train on: the scored pool, or in round 1 the fresh set with its prompt labels
        pool = training_pool(kt, state.distill, *((state.synthetic.images, state.synthetic.labels)
                                                  if state.synthetic is not None else (None, None)))
        return KTDown(state.synthetic if strat.synthetic else None, pool, state.protos, strat.average_weights)

    def aggregate_fit(self, rnd: int, sampled: list[str], replies: dict[str, dict[str, Any]], failed: dict[str, str],
                      progress) -> dict[str, Any]:
        fed, kt, strat, state = self.fed, self.fed.cfg.fedmmkt, self.fed.server, self.state
        self.timing["clients_s"] = time.perf_counter() - self._t
        # in sampling order, whatever order the transport delivered them in: the ensemble and the
        # prototypes sum over clients, and float sums depend on their order
        replies = {cid: replies[cid] for cid in sampled if cid in replies}
        train_metrics = {cid: r["train"] for cid, r in replies.items()}
        reports: dict[str, dict[str, torch.Tensor]] = {}
        rejected: dict[str, str] = {}
        if strat.synthetic:
            for cid, r in replies.items():
                try:
                    check_report(r.get("report"), len(state.synthetic), len(fed.classes), kt.proto_dim)
                    reports[cid] = r["report"]
                except UpdateRejected as e:
                    rejected[cid] = str(e)
        record: dict[str, Any] = {"round": rnd, "sampled": sampled, "train": train_metrics}
        self.averaged = average_by_arch(fed.archs, {c: r["weights"] for c, r in replies.items()},
                                        {c: r["num_examples"] for c, r in replies.items()}) \
            if strat.average_weights else None
        server: dict[str, float] = {}
        if strat.synthetic:
            if not reports:
                raise RuntimeError(f"round {rnd}: every client report was rejected ({rejected}); stopping")
            probs = ensemble({k: v["logits"] for k, v in reports.items()}, kt.confidence_weighting)
            keep = quality_filter(probs, state.synthetic.labels, kt.filter_threshold)
            state.protos = global_prototypes({k: v["protos"] for k, v in reports.items()},
                                             {k: v["proto_counts"] for k, v in reports.items()})
            state.seen = torch.stack([v["proto_counts"] for v in reports.values()]).sum(0) > 0
            server = {"accepted_frac": float(keep.float().mean()),
                      "ensemble_agrees": float((probs.argmax(1) == state.synthetic.labels).float().mean())}
            if strat.update_generator:
                if progress:
                    progress.phase(f"round {rnd} · updating the generator")
                tu = time.perf_counter()
                server.update(update_generator(fed, state.synthetic, keep, probs, state, rnd))
                self.timing["generator_update_s"] = time.perf_counter() - tu
            # the scored synthetic set (ensemble labels, prompt labels, the filter's verdict) joins next round's pool
            state.distill = next_pool(state.distill, state.synthetic.images, state.synthetic.labels, probs, keep,
                                      kt.synthetic_rounds if strat.regenerate else 1)
        if rejected:
            record["rejected"] = rejected
        if failed:
            record["dropped"] = failed
        record["server"] = server
        record["train_loss"] = sum(m["train_loss"] for m in train_metrics.values()) / len(train_metrics)
        self._t = time.perf_counter()
        return record

    def eval_targets(self, rnd: int) -> list[str]:
        return list(self.fed.client_ids)

    def configure_evaluate(self, rnd: int) -> dict[str, dict[str, torch.Tensor]] | None:
        return self.averaged  # kt-fedavg: each architecture's average, which its clients keep

    def aggregate_evaluate(self, rnd: int, record: dict[str, Any], scores: dict[str, dict[str, float]],
                           failed: dict[str, str], progress) -> None:
        fed, state = self.fed, self.state
        if scores:  # every client can miss an evaluation (a deployment's nodes gone): the round has no average
            record["eval"] = scores
            record["avg"] = {k: sum(m[k] for m in scores.values()) / len(scores) for k in ("acc", "bal_acc")}
        if failed:
            record["eval_dropped"] = failed
        if fed.judge is not None and (rnd == 1 or fed.server.update_generator or rnd == self.rounds):
            record["generator"], imgs = eval_generator(fed)
            state.samples.setdefault("first", imgs.images)
            state.samples["last"] = imgs.images
        self.timing["eval_s"] = time.perf_counter() - self._t
        record["timing"] = self.timing
        if progress and "generator" in record:
            g = record["generator"]
            progress.status(f"round {rnd}: generator judge accuracy {100 * g['judge_acc']:.1f}% · feature "
                            f"distance {g['feature_distance']:.2f} · accepted "
                            f"{100 * record['server'].get('accepted_frac', 0):.0f}% of the synthetic set")

    def commit(self, rnd: int, history) -> None:
        if self.run_dir is not None:
            commit_round(self.run_dir, rnd, self._tensors(), self.fed.store, history.rounds, {},
                         self.fed.cfg.run.keep_checkpoints, config_digest=self.config_digest)

    def _tensors(self) -> dict[str, torch.Tensor]:
        fed, st = self.fed, self.state
        out: dict[str, torch.Tensor] = {}
        if fed.gen_opt is not None:
            out |= {f"gen.{n}": p.detach().cpu() for n, p in fed.generator.named_parameters() if p.requires_grad}
            out |= {f"align.{n}": p.detach().cpu() for n, p in fed.align_head.named_parameters()}
            for i, s in fed.gen_opt.state_dict()["state"].items():
                out |= {f"opt.{i}.{k}": v.detach().cpu() for k, v in s.items()}
        if st.synthetic is not None:
            out |= {"state.synthetic.images": st.synthetic.images, "state.synthetic.labels": st.synthetic.labels}
        if st.distill is not None:
            out |= {f"state.distill.{k}": v for k, v in st.distill.tensors().items()}
        if st.protos is not None:
            out |= {"state.protos": st.protos, "state.seen": st.seen}
        out |= {f"samples.{k}": v for k, v in st.samples.items()}
        # copies: after round 1 the first and last sample grids are one tensor, which safetensors refuses
        return {k: v.clone() for k, v in out.items()}

    def resume(self, history, warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> int:
        """Continue from the newest good checkpoint of ``run_dir`` (:func:`resume_from`, as
        :meth:`fedvl.finetune.exchange.ParameterServer.resume`); returns the round to start at."""
        return resume_from(self.run_dir, None, self.fed.store, history, self.rounds, self._restore, warn)

    def _restore(self, ckpt) -> None:
        """The server's tensors and its sets, from a checkpoint's (:meth:`_tensors`)."""
        fed, st = self.fed, self.state
        t = ckpt.global_params
        if fed.gen_opt is not None:
            with torch.no_grad():
                for prefix, module in (("gen.", fed.generator), ("align.", fed.align_head)):
                    for n, p in module.named_parameters():
                        if prefix + n in t:
                            p.copy_(t[prefix + n])
            saved = fed.gen_opt.state_dict()
            saved["state"] = {}
            for key, v in t.items():
                if key.startswith("opt."):
                    _, i, k = key.split(".", 2)
                    saved["state"].setdefault(int(i), {})[k] = v
            fed.gen_opt.load_state_dict(saved)
        if "state.synthetic.images" in t:
            labels = t["state.synthetic.labels"]
            st.synthetic = ImageTextSet(t["state.synthetic.images"], labels,
                                        [prompt(fed.classes[k]) for k in labels.tolist()])
        if "state.distill.images" in t:
            st.distill = DistillSet.from_tensors({k[len("state.distill."):]: v for k, v in t.items()
                                                  if k.startswith("state.distill.")})
        st.protos, st.seen = t.get("state.protos"), t.get("state.seen")
        st.samples = {k[len("samples."):]: v for k, v in t.items() if k.startswith("samples.")}


class KnowledgeNode:
    """Trains a client's own task model (from its state in ``store``) and answers with what the
    round asks for: its logits and prototypes on the synthetic set, or its weights. ``store``: the
    run folder's client states in process and in a simulation, a deployed node's own per-round
    store (:class:`fedvl.rounds.state.RoundedStateStore`) in a deployment."""

    def __init__(self, fed: KTFederation, store: ClientStateStore):
        self.fed, self.store = fed, store

    def fit(self, cid: str, rnd: int, down: KTDown, on_step=None) -> dict[str, Any]:
        fed, cfg = self.fed, self.fed.cfg
        store = self.store.at(rnd, fit=True)
        model = task_model(fed, cid, store)
        gen = torch.Generator().manual_seed(derived_seed(cfg.run.seed, "batches", rnd, cid))
        torch.manual_seed(derived_seed(cfg.run.seed, "torch", rnd, cid))
        data = fed.train[cid]
        reply: dict[str, Any] = {"train": fed.client.train(model, data.images, data.labels, down.distill, down.protos,
                                                           gen, on_step=on_step, rnd=rnd, rounds=cfg.algorithm.rounds)}
        state = cpu_state(model)
        store.save(cid, state)
        if down.synthetic is not None:
            reply["report"] = fed.client.report(model, down.synthetic.images, down.synthetic.labels, len(fed.classes))
        if down.send_weights:  # FedBN (fedavg_private_bn): the batch-norm entries never leave the client
            shared = averaged_keys(model, cfg.fedmmkt.fedavg_private_bn)
            reply["weights"] = {k: v for k, v in state.items() if k in shared}
            reply["num_examples"] = len(data)  # the weight of this client in its architecture's average
        return reply

    def evaluate(self, cid: str, rnd: int, down: dict[str, dict[str, torch.Tensor]] | None) -> dict[str, float]:
        fed, store = self.fed, self.store.at(rnd, fit=False)
        if down is not None:  # the architecture's average; entries it leaves out (FedBN) stay the client's own
            store.save(cid, {**store.load(cid), **down[fed.archs[cid]]})  # (every client trained this round)
        return fed.client.evaluate(task_model(fed, cid, store), fed.test[cid].images, fed.test[cid].labels)

    def holds(self, cid: str) -> bool:
        return cid in self.fed.train


def run_round(fed: KTFederation, rnd: int, state: ServerState, progress=None) -> dict[str, Any]:
    """One round in process (:func:`fedvl.rounds.loop.play_round`); returns its record."""
    return play_round(KnowledgeServer(fed, state), InProcess(KnowledgeNode(fed, fed.store)), rnd, progress)
