"""The knowledge family (FedMMKT and its baselines), registered as an exchange family
(:mod:`fedvl.rounds.family`): a synthetic set goes down, logits and prototypes on it (or, for
kt-fedavg, task-model weights) come back. Its clients hold task models of their own
architectures, so it has no global model. Light at import: each part is imported when used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedvl.rounds.family import Finished, register_family
from fedvl.schema import ConfigError, ExperimentConfig


class KnowledgeFamily:
    name = "knowledge"
    # its clients, data and models are its own sections: it reads no model, data, attack or privacy
    sections = frozenset({"algorithm", "run", "t2i", "fedmmkt"})

    def check(self, cfg: ExperimentConfig) -> None:
        """Beyond each algorithm's own check (:func:`fedvl.fedmmkt.validate.validate_kt`, which depends
        on whether the algorithm pools its clients' data): no data-parallel client."""
        if cfg.run.client_procs > 1:
            raise ConfigError(f"run.client_procs splits one client's fine-tuning; algorithm.name={cfg.algorithm.name} "
                              "(knowledge transfer) trains its own task models: leave run.client_procs=1 (fedvl join: "
                              "one device)")

    def round_seconds(self, cfg: ExperimentConfig) -> tuple[float, str] | None:
        return None  # no cost model measured (the generator's work depends on t2i.source and its cache)

    def benchmark(self, config: Callable[[], ExperimentConfig]) -> str:
        return "fedmmkt"  # its own clients, whatever the config's data section says

    def comparison_title(self, cfg: ExperimentConfig) -> str:
        return "FedMMKT"

    def build(self, cfg: ExperimentConfig, run_dir: Path, progress, clients: list[int] | None):
        from fedvl.fedmmkt.federation import build

        def pretrain_step(done: int, total: int, loss: float) -> None:
            progress.client_start(0, "generator pretraining", 1, 1)
            progress.step(done, total, loss)

        return build(cfg, run_dir, status=progress.status, on_pretrain_step=pretrain_step, clients=clients)

    def build_node(self, cfg: ExperimentConfig, clients: list[int] | None):
        from fedvl.fedmmkt.federation import build

        # a node builds its clients' data and task models, never the server's generator or judge
        return build(cfg, None, status=lambda s: None, clients=clients, server=False)

    def server(self, fed, run_dir: Path | None, config_digest: str | None):
        from fedvl.fedmmkt.exchange import KnowledgeServer
        from fedvl.fedmmkt.federation import ServerState

        return KnowledgeServer(fed, ServerState(), run_dir, config_digest)

    def node(self, fed, store):
        from fedvl.fedmmkt.exchange import KnowledgeNode

        return KnowledgeNode(fed, store)

    def codec(self):
        from fedvl.fedmmkt.codec import KnowledgeCodec

        return KnowledgeCodec()

    def report(self, run: Finished) -> tuple[str, list[str], dict[str, Any]]:
        from fedvl.fedmmkt.experiment import report

        return report(run)


KNOWLEDGE = register_family(KnowledgeFamily())
