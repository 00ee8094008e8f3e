"""Run one experiment end to end and write its results folder.

Results folder: ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per
round), ``summary.md`` / ``summary.json`` (final table, parameter counts, wall
time), ``accuracy.png``, ``client_states/`` and ``status.json``, which reads
``running`` until the run completes, then ``complete`` (or ``failed`` with the
error): a crashed run is never presented as complete.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fedvl.config import ConfigError, ExperimentConfig, dump_config
from fedvl.report.history import History, set_status, write_json_atomic


def run_dir_for(cfg: ExperimentConfig, overwrite: bool = False) -> Path:
    name = cfg.run.name or f"{cfg.algorithm.name}-{cfg.data.benchmark}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(cfg.run.output_dir) / name
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"results folder {path} already exists; choose another run.name or pass --overwrite")
    return path


def run_experiment(cfg: ExperimentConfig, run_dir: Path, console=None, progress_enabled: bool = True) -> dict[str, Any]:
    from rich.console import Console

    from fedvl.report.plots import plot_accuracy
    from fedvl.report.tables import markdown_summary, print_summary
    from fedvl.runtime.progress import Progress
    from fedvl.runtime.simulator import build_federation, simulate

    console = console or Console()
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    set_status(run_dir, "running")
    t0 = time.perf_counter()
    progress = Progress(console, cfg.algorithm.rounds, enabled=progress_enabled)
    try:
        fed = build_federation(cfg, status=progress.status)
        setup_s = time.perf_counter() - t0
        history = History(run_dir)
        final = simulate(fed, run_dir, history, progress)
    except BaseException as e:
        progress.close()
        set_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        raise
    progress.close()
    wall = time.perf_counter() - t0
    params = fed.param_report()
    title = f"{cfg.algorithm.name} · {cfg.model.peft} · {cfg.data.benchmark} benchmark"
    notes = [
        f"model {cfg.model.name}; trainable {params['trainable_params']:,} of {params['total_params']:,} "
        f"parameters ({100 * params['trainable_frac']:.2f}%); travelling {params['travel_params']:,} "
        f"({100 * params['travel_frac']:.2f}%, {params['bytes_up_per_client_round'] / 1e6:.2f} MB up per client per round)",
        f"aggregation: {cfg.algorithm.aggregation}; average = unweighted mean over clients",
        f"wall time {wall:.1f}s (setup {setup_s:.1f}s); seed {cfg.run.seed}",
    ]
    (run_dir / "summary.md").write_text(markdown_summary(final, title, notes))
    plot_accuracy(history.rounds_with_eval(), run_dir / "accuracy.png", title)
    summary = {"final": final, "params": params, "wall_s": wall, "setup_s": setup_s,
               "algorithm": cfg.algorithm.name, "peft": cfg.model.peft, "benchmark": cfg.data.benchmark}
    write_json_atomic(run_dir / "summary.json", summary)
    print_summary(console, final, title)
    for n in notes:
        console.print(f"  {n}")
    console.print(f"results: {run_dir}")
    set_status(run_dir, "complete", wall_s=wall)
    return summary
