"""The parameter family (FedAvg, FedProx, FedDAT, local, centralized), registered as an exchange
family (:mod:`fedvl.rounds.family`): the global travelling parameters go down, each client's
trained travelling parameters come back. Light at import: each part is imported when used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedvl.rounds.family import Finished, register_family
from fedvl.schema import ExperimentConfig


class ParameterFamily:
    name = "parameters"
    sections = frozenset({"model", "data", "algorithm", "run", "attack", "privacy"})

    def check(self, cfg: ExperimentConfig) -> None:
        from fedvl.finetune.checks import check_parameter_run

        check_parameter_run(cfg)

    def round_seconds(self, cfg: ExperimentConfig) -> tuple[float, str] | None:
        from fedvl.finetune.estimate import round_seconds

        return round_seconds(cfg)

    def benchmark(self, config: Callable[[], ExperimentConfig]) -> str:
        return config().data.benchmark

    def comparison_title(self, cfg: ExperimentConfig) -> str:
        return f"{cfg.data.benchmark} benchmark"

    def build(self, cfg: ExperimentConfig, run_dir: Path, progress, clients: list[int] | None):
        from fedvl.finetune.federation import build_federation

        return build_federation(cfg, status=progress.status, only=clients)

    def build_node(self, cfg: ExperimentConfig, clients: list[int] | None):
        from fedvl.finetune.federation import build_federation

        return build_federation(cfg, status=lambda s: None, only=clients)

    def server(self, fed, run_dir: Path | None, config_digest: str | None):
        from fedvl.finetune.exchange import ParameterServer
        from fedvl.rounds.state import ClientStateStore

        # a deployment's server sees no client state (its nodes keep their own, per round), so its
        # checkpoints hold the global side only
        store = ClientStateStore(run_dir / "client_states") if run_dir is not None else None
        return ParameterServer(fed, store, run_dir, config_digest=config_digest)

    def node(self, fed, store):
        from fedvl.finetune.exchange import ParameterNode

        return ParameterNode(fed, store)

    def codec(self):
        from fedvl.finetune.codec import ParameterCodec

        return ParameterCodec()

    def report(self, run: Finished) -> tuple[str, list[str], dict[str, Any]]:
        from fedvl.report.plots import plot_accuracy

        cfg, fed, final = run.cfg, run.fed, run.final
        params = fed.param_report()
        title = f"{cfg.algorithm.name} · {cfg.model.peft} · {cfg.data.benchmark} benchmark"
        notes = [
            f"model {cfg.model.name}" + (f" on the VL base {params['base_key']}" if params.get("base_key") else "")
            + f"; trainable {params['trainable_params']:,} of {params['total_params']:,} "
            f"parameters ({100 * params['trainable_frac']:.2f}%); travelling {params['travel_params']:,} "
            f"({100 * params['travel_frac']:.2f}%, {params['bytes_up_per_client_round'] / 1e6:.2f} MB up per client "
            "per round" + (f", {params['bytes_down_per_client_round'] / 1e6:.2f} MB down with the merged base weights"
                           if fed.down_only and not fed.algo.pooled else "") + ")",
            f"aggregation: {cfg.algorithm.aggregation}, rule {cfg.algorithm.aggregator}"
            + (f" (update clip {cfg.algorithm.clip_update_norm:g})" if cfg.algorithm.clip_update_norm > 0 else "")
            + (" (update clip: round median norm)" if cfg.algorithm.clip_to_median else "")
            + (f"; server optimizer {cfg.algorithm.server_opt} (server_lr {cfg.algorithm.server_lr:g})"
               if cfg.algorithm.server_opt != "none" and fed.travel and not fed.algo.pooled else "")
            + "; average = unweighted mean over clients",
            f"wall time {run.wall_s:.1f}s (setup {run.setup_s:.1f}s); seed {cfg.run.seed}",
        ]
        rejected = sum(len(r.get("rejected", {})) for r in run.history.rounds)
        notes.append(f"rejected updates: {rejected} over {len(run.history.rounds)} rounds")
        if fed.attackers:
            notes.append(f"attack: {cfg.attack.kind} x{cfg.attack.scale:g} by {', '.join(fed.attackers)}")
        if "privacy" in final:
            notes.append(f"differential privacy: epsilon {final['privacy']['epsilon']:.3g} at delta "
                         f"{final['privacy']['delta']:g} (clip {cfg.privacy.clip_norm:g}, noise multiplier "
                         f"{cfg.privacy.noise_multiplier:g}, opacus RDP accountant)")
        plot_accuracy(run.history.rounds_with_eval(), run.run_dir / "accuracy.png", title)
        summary = {"final": final, "params": params, "wall_s": run.wall_s, "setup_s": run.setup_s,
                   "algorithm": cfg.algorithm.name, "peft": cfg.model.peft, "benchmark": cfg.data.benchmark,
                   "rejected_updates": rejected, "attackers": fed.attackers, "privacy": final.get("privacy"),
                   # wall clock at the end of this process's first training step (startup benchmark)
                   "started_unix": run.started_unix, "first_step_unix": run.first_step_unix}
        return title, notes, summary


PARAMETERS = register_family(ParameterFamily())
