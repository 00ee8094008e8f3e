"""Run one experiment end to end and write its results folder.

Results folder: ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per
round), ``summary.md`` / ``summary.json`` (final table, parameter counts, wall
time), ``accuracy.png``, ``client_states/``, ``checkpoints/`` (one per round,
the newest kept, for ``fedvl run --resume``) and ``status.json``, which reads
``running`` until the run completes, then ``complete`` (or ``failed`` with the
error): a crashed run is never presented as complete.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fedvl.config import run_config_text
from fedvl.report.history import History, write_json_atomic
from fedvl.rounds.checkpoint import resume_round
from fedvl.runfolder import read_status, write_status
from fedvl.schema import ConfigError, ExperimentConfig, dump_config


def run_dir_for(cfg: ExperimentConfig, overwrite: bool = False) -> Path:
    """The run's folder, checked before any work: a plain name, a writable place, free or replaceable.
    The name is checked here, when a run starts, not when a config loads: a comparison's runs are
    named ``method/seedN`` inside its own folder, and their config.yaml must load for ``--resume``."""
    from fedvl.runfolder import check_free, check_name, check_not_live, check_writable

    check_name(cfg.run.name)
    check_writable(cfg.run.output_dir, "run.output_dir")
    check_writable(cfg.run.cache_dir, "run.cache_dir")
    name = cfg.run.name or f"{cfg.algorithm.name}-{cfg.data.benchmark}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(cfg.run.output_dir) / name
    check_free(path, overwrite)
    check_not_live(path)  # a live run is not replaced: said now, not after its data were built
    return path


def config_digest(cfg: ExperimentConfig) -> str:
    """What a checkpoint records of the config it was made with (the resolved config, so a
    comment or a reordering in config.yaml is not a change)."""
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()


def _check_config_unchanged(run_dir: Path, cfg: ExperimentConfig, accept: bool) -> None:
    from fedvl.rounds.checkpoint import checkpoint_config_digest

    saved = checkpoint_config_digest(run_dir)
    if saved is not None and saved[1] != config_digest(cfg) and not accept:
        raise ConfigError(f"{run_dir / 'config.yaml'} changed since the checkpoint of round {saved[0]}; restore it, "
                          f"or continue with the new config: fedvl run --resume {run_dir} --accept-config-change")


def run_experiment(cfg: ExperimentConfig, run_dir: Path, console=None, progress_enabled: bool = True,
                   runner=None, server_only: bool = False, resume: bool = False, overwrite: bool = False,
                   accept_config_change: bool = False) -> dict[str, Any]:
    """Build the federation, run every round, write the results folder: the same steps for every
    algorithm, with the parts that differ (the federation, the server side, the summary) its
    exchange family's (:mod:`fedvl.rounds.family`).

    ``runner(fed, run_dir, history, progress, server, start) -> final record`` runs the rounds
    (:func:`fedvl.transport.inprocess.runner_for`): the in-process simulator by default, Flower's
    simulation for ``run.runtime=flower-sim``, or a Flower deployment's grid (``server_only``:
    the server builds the model but holds no client data). ``resume=True``
    continues the run already in ``run_dir`` from its newest good checkpoint
    (``fedvl run --resume``, ``fedvl serve --resume``), refusing a changed
    config unless ``accept_config_change``. A new run builds (and so validates)
    its data before its folder is created, or an ``overwrite``-n one emptied;
    the folder stays locked by this process until the run ends (:mod:`fedvl.runfolder`).
    A ``KeyboardInterrupt`` (SIGINT, or SIGTERM via the CLI) leaves status
    ``interrupted`` with the round to resume from.
    """
    from rich.console import Console

    from fedvl.report.progress import Progress
    from fedvl.report.trackers import open_trackers
    from fedvl.rounds.family import Finished, family_of
    from fedvl.runfolder import RunFolder
    from fedvl.transport.inprocess import runner_for

    if runner is None and cfg.run.runtime == "flower-deploy":
        raise ConfigError("run.runtime=flower-deploy is a real Flower deployment: start it with `fedvl serve` and "
                          "`fedvl join`")
    console = console or Console()
    t0, started_unix = time.perf_counter(), time.time()
    progress = Progress(console, cfg.algorithm.rounds, enabled=progress_enabled)
    folder = RunFolder(run_dir)
    family = family_of(cfg.algorithm.name)
    trackers = None
    try:
        if resume:  # the folder exists: claim it before anything else, so a live run is never joined
            folder.acquire(fresh=False)
            _check_config_unchanged(run_dir, cfg, accept_config_change)
        # the server side holds no client data when the clients build their own (deployment, Ray workers)
        ray_workers = cfg.run.runtime == "flower-sim" and cfg.run.flower_backend == "ray"
        server_only = server_only or ray_workers
        fed = family.build(cfg, run_dir, progress, [] if server_only else None)
        if not resume:  # config and data are valid: only now is the folder made (or an old run replaced)
            folder.acquire(fresh=True, overwrite=overwrite)
            (run_dir / "config.yaml").write_text(run_config_text(cfg))
        write_status(run_dir, "running")
    except BaseException:
        progress.close()
        folder.release(abandon=not resume)
        raise
    try:
        trackers = open_trackers(cfg, run_dir)  # only once the folder is ours: trackers write into it
        setup_s = time.perf_counter() - t0
        history = History(run_dir, trackers)
        # checkpointed and resumed the same way in every runtime and family
        server = family.server(fed, run_dir, config_digest(cfg))
        start = server.resume(history) if resume else 1
        final = runner_for(cfg, runner)(fed, run_dir, history, progress, server, start)
        progress.close()
        wall = time.perf_counter() - t0
        title, notes, summary = family.report(Finished(cfg, fed, server, history, final, run_dir, wall, setup_s,
                                                       started_unix, progress.first_step_unix))
        return _write_results(run_dir, console, title, notes, summary, trackers)
    except KeyboardInterrupt:
        progress.close()
        write_status(run_dir, "interrupted", resume_from_round=resume_round(run_dir))
        if trackers is not None:
            trackers.finish(run_dir, ok=False)
        raise
    except BaseException as e:
        progress.close()
        _mark_failed(run_dir, e)
        if trackers is not None:
            trackers.finish(run_dir, ok=False)
        raise
    finally:
        if fed is not None:  # stops run.client_procs' workers
            fed.close()
        folder.release()


def _mark_failed(run_dir: Path, e: BaseException) -> None:
    """Status ``failed`` with the reason; on a full or broken disk even that may not be written."""
    try:
        write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}", resume_from_round=resume_round(run_dir))
    except OSError:
        pass


def _write_results(run_dir: Path, console, title: str, notes: list[str], summary: dict[str, Any],
                   trackers=None) -> dict[str, Any]:
    """What every run ends with: summary.md / summary.json, the table on the console, status complete."""
    from fedvl.report.history import client_rounds, missed_rounds
    from fedvl.report.tables import markdown_summary, print_summary

    rounds = History.read(run_dir)  # every round of the run, also those before a resume
    if "eval" not in summary["final"]:  # no client answered the final evaluation: report the last round with scores
        scored = [r for r in rounds if "eval" in r]
        if not scored:
            raise RuntimeError(f"no client reported test scores in any of the {len(rounds)} round(s)")
        summary["final"] = scored[-1]
    missed = missed_rounds(rounds)
    # a client may miss any round and come back: which rounds each one's scores come from
    summary["clients"] = {cid: {"reported_rounds": got, "missed_rounds": missed.get(cid, [])}
                          for cid, got in client_rounds(rounds).items()}
    (run_dir / "summary.md").write_text(markdown_summary(summary["final"], title, notes, rounds))
    write_json_atomic(run_dir / "summary.json", summary)
    print_summary(console, summary["final"], title, rounds)
    for n in notes:
        console.print(f"  {n}")
    console.print(f"results: {run_dir}")
    if trackers is not None:  # the summary and plots go to the trackers as artifacts
        trackers.finish(run_dir, ok=True)
    write_status(run_dir, "complete", wall_s=summary["wall_s"])
    return summary


def parse_method(spec: str) -> tuple[str, str | None]:
    """``fedavg-lora`` -> (fedavg, lora); ``feddat`` -> (feddat, None: the config's peft)."""
    from fedvl.algorithms import available_algorithms

    if spec in available_algorithms():
        return spec, None
    algo, _, peft = spec.partition("-")
    if algo not in available_algorithms() or not peft:
        raise ConfigError(f"unknown method '{spec}': use ALGORITHM or ALGORITHM-PEFT, e.g. fedavg-lora "
                          f"(algorithms: {', '.join(available_algorithms())})")
    return algo, peft


def _same_config(saved: Path, cfg: ExperimentConfig) -> bool:
    """Whether a finished run used ``cfg`` (fields added since it ran count with their defaults)."""
    from fedvl.config import load_config

    try:
        old = load_config(str(saved), [])
    except (ConfigError, OSError):
        return False
    old.run.output_dir, old.run.name = cfg.run.output_dir, cfg.run.name
    return dump_config(old) == dump_config(cfg)


SETTINGS_FILE = "compare-settings.json"
# what a comparison's runs may change between invocations without being other runs: where they
# compute (as `fedvl run --resume` allows) and the keys each run sets itself
_PER_RUN_KEYS = {"run.seed", "run.name", "run.output_dir", "run.device", "run.threads", "run.cache_dir",
                 "run.client_procs"}


def _settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """A method's run settings as ``section.key -> value`` (the sections its config.yaml holds)."""
    import yaml

    data = yaml.safe_load(run_config_text(cfg))
    flat = {f"{sec}.{k}": v for sec, keys in data.items() for k, v in keys.items()}
    return {k: v for k, v in flat.items() if k not in _PER_RUN_KEYS}


def _check_methods(methods: list[str], seeds: list[int]) -> None:
    """One comparison: no method or seed twice (it would count one run as two), one exchange family."""
    from fedvl.rounds.family import family_of

    for what, items in (("--algorithms", methods), ("--seeds", seeds)):
        twice = next((x for i, x in enumerate(items) if x in items[:i]), None)
        if twice is not None:
            raise ConfigError(f"{what} names {twice} twice: a comparison runs each once")
    families: dict[str, str] = {}
    for m in methods:
        families.setdefault(family_of(parse_method(m)[0]).name, m)
    if len(families) > 1:  # e.g. fedavg (parameters) and fedmmkt (knowledge): other clients, data and models
        mixed = " with ".join(f"the {family.removesuffix('s')} family ({m})" for family, m in families.items())
        raise ConfigError(f"--algorithms mixes {mixed}: their clients, data and models differ, so their numbers "
                          "are not comparable; compare each family on its own")


def _sweep_text(sweep: list) -> str:
    return "with " + " ".join(f"--sweep {k}={','.join(v)}" for k, v in sweep) if sweep else "without --sweep"


def _check_settings(out_dir: Path, settings: dict[str, dict[str, Any]], overwrite: bool,
                    sweep: list[tuple[str, list[str]]] = ()) -> None:
    """Refuse to mix a comparison folder's runs with runs of other settings; record this one's.
    A method run before with the same settings is reused; a method new to the folder is added.
    ``settings`` is keyed by each method's folder (``<point>/<method>`` in a sweep), and the folder
    records its ``--sweep``: another sweep is refused too. An option added to fedvl since a method
    ran counts with its default (as in :func:`_same_config`)."""
    import json

    path = out_dir / SETTINGS_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() and not overwrite else {"methods": {}}
        recorded, old_sweep = data["methods"], data.get("sweep", [])
        if not isinstance(recorded, dict) or not isinstance(old_sweep, list):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError, AttributeError):
        raise ConfigError(f"{path} is damaged: pass --overwrite to start the comparison afresh, or choose "
                          "another --name") from None
    new_sweep = [[k, list(v)] for k, v in sweep]
    if recorded and old_sweep != new_sweep:
        raise ConfigError(f"comparison {out_dir} ran {_sweep_text(old_sweep)}, not {_sweep_text(new_sweep)}: pass "
                          "--overwrite to start it afresh, or choose another --name")
    defaults = {f"{sec}.{k}": v for sec, keys in ExperimentConfig().to_dict().items() for k, v in keys.items()}
    for m, new in settings.items():
        old = recorded.get(m)
        if old is None:
            continue
        old = {**{k: defaults[k] for k in new if k not in old and k in defaults}, **old}
        if old == new:
            continue
        key = next(k for k in [*old, *new] if old.get(k, "<unset>") != new.get(k, "<unset>"))
        raise ConfigError(f"comparison {out_dir} ran {m} with {key}={json.dumps(old.get(key, '<unset>'))}, not "
                          f"{json.dumps(new.get(key, '<unset>'))}: pass --overwrite to start it afresh, or choose "
                          "another --name")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"methods": {**recorded, **settings}, **({"sweep": new_sweep} if new_sweep else {})})


def _unfinished(run_dir: Path) -> str | None:
    """Why a comparison's run cannot be reused as it is (None: complete, with readable results)."""
    import json

    record = read_status(run_dir)
    if record is None:
        return "not run yet"
    state = record.get("state")
    if state == "damaged":
        return "its status.json is damaged"
    if state != "complete":
        return f"status {state}"
    try:
        json.loads((run_dir / "summary.json").read_text())["final"]["avg"]
        History.read(run_dir)
    except FileNotFoundError as e:
        return f"its {Path(e.filename).name} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return "its summary.json or metrics.jsonl is damaged"
    return None


def _run_quietly(cfg: ExperimentConfig, run_dir: Path, resume: bool) -> float:
    """One run of a comparison in a worker process: its own output stays in its folder."""
    import io

    from rich.console import Console

    out = run_experiment(cfg, run_dir, console=Console(file=io.StringIO()), progress_enabled=False, resume=resume,
                         overwrite=True)
    return float(out["final"]["avg"]["acc"])


def _run_side_by_side(pending: list[tuple[str, ExperimentConfig, Path, bool]], jobs: int, console) -> None:
    """Run ``pending`` in ``jobs`` processes, in order, one line per finished run. A failed run stops the
    comparison after the runs in flight end (those not started are left for the next invocation)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    console.print(f"{len(pending)} run(s), {min(jobs, len(pending))} side by side")
    # spawn: a fresh interpreter per worker (no torch state or threads inherited from this process)
    with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = {ex.submit(_run_quietly, cfg, run_dir, resume): label for label, cfg, run_dir, resume in pending}
        try:
            for fut in as_completed(futures):
                console.print(f"{futures[fut]}: done, average accuracy {100 * fut.result():.1f}%")
        except BaseException:  # leaving the block waits for the runs in flight; the others never start
            for f in futures:
                f.cancel()
            raise


def run_comparison(config_path: str | None, overrides: list[str], methods: list[str], seeds: list[int],
                   name: str, console=None, progress_enabled: bool = True, overwrite: bool = False,
                   sweep: list[tuple[str, list[str]]] | None = None, jobs: int = 1) -> Path:
    """Run every (method, seed) on the same clients and write the paper-style table.

    Finished runs (status ``complete``) are reused and a stopped run continues
    from its last checkpoint, so an interrupted comparison resumes where it stopped.
    The folder records each method's settings (``compare-settings.json``): rerunning it with
    other settings is refused, unless ``overwrite``, which runs every (method, seed) afresh.
    ``sweep`` (:func:`fedvl.sweep.parse_sweep`): every grid point runs every method and seed in
    its own folder, ``<point>/<method>/seed<N>``. Every comparison ends with its accuracy vs
    communication frontier (``frontier.md`` / ``.json`` / ``.png``). ``jobs`` > 1 runs that many
    runs side by side, each in its own process (every run's numbers are its own: seeded, threads fixed).
    """
    import json

    from rich.console import Console

    from fedvl.config import load_config
    from fedvl.report.compare import absence_notes, comparison_rows, load_runs, markdown_table, plot_average
    from fedvl.sweep import grid, point_names

    console = console or Console()
    sweep = sweep or []
    _check_methods(methods, seeds)
    points = list(zip(point_names(sweep), grid(sweep)))  # without a sweep: one point, the folder itself
    configs: dict[str, list[tuple[ExperimentConfig, Path]]] = {}  # keyed by each method's folder
    settings: dict[str, dict[str, Any]] = {}
    for point, point_overrides in points:  # validate everything before running anything
        for m in methods:
            algo, peft = parse_method(m)
            extra = [f"algorithm.name={algo}"] + ([f"model.peft={peft}"] if peft else [])
            group = f"{point}/{m}" if point else m
            configs[group] = []
            for s in seeds:
                cfg = load_config(config_path, overrides + point_overrides + extra + [f"run.seed={s}"])
                out = Path(cfg.run.output_dir) / name
                cfg.run.output_dir, cfg.run.name = str(out), f"{group}/seed{s}"
                configs[group].append((cfg, out / group / f"seed{s}"))
            settings[group] = _settings(configs[group][0][0])
            same = next((o for o in settings if o != group and settings[o] == settings[group]), None)
            if same is not None:
                raise ConfigError(f"--algorithms: {same} and {group} are the same run with this config; name it once")
    out_dir = Path(next(iter(configs.values()))[0][0].run.output_dir)
    from fedvl.runfolder import check_writable

    check_writable(out_dir, "run.output_dir")
    _check_settings(out_dir, settings, overwrite, sweep)
    # seed-major order: an interrupted comparison leaves whole seeds of every method, not all
    # seeds of the first methods only
    pending: list[tuple[str, ExperimentConfig, Path, bool]] = []
    for i in range(len(seeds)):
        for m in configs:  # (in a sweep, "m" is "<point>/<method>")
            cfg, run_dir = configs[m][i]
            why = _unfinished(run_dir)
            if why is None and not overwrite:
                console.print(f"[dim]{m} seed {cfg.run.seed}: already complete, reused[/dim]")
                if not _same_config(run_dir / "config.yaml", cfg):
                    console.print(f"[yellow]{m} seed {cfg.run.seed}: its config.yaml differs from this comparison's; "
                                  f"delete {run_dir} to run it again[/yellow]")
                continue
            if jobs == 1:
                console.rule(f"{m} · seed {cfg.run.seed}")
            if why not in (None, "not run yet") and not why.startswith("status "):
                console.print(f"[yellow]{m} seed {cfg.run.seed}: {why}; running it again[/yellow]")
            # a run stopped mid-way (or whose results files are gone) with the same config continues
            # from its last checkpoint; one whose last round is done just writes its results again
            saved = run_dir / "config.yaml"
            resume = not overwrite and saved.is_file() \
                and saved.read_text() in (run_config_text(cfg), dump_config(cfg)) \
                and (run_dir / "checkpoints").is_dir()  # (dump_config: a config.yaml holding every section)
            if jobs > 1:
                pending.append((f"{m} seed {cfg.run.seed}", cfg, run_dir, resume))
                continue
            run_experiment(cfg, run_dir, console=console, progress_enabled=progress_enabled, resume=resume,
                           overwrite=True)  # a stale run of this comparison (a fedvl run) is replaced
    if pending:
        _run_side_by_side(pending, jobs, console)
    runs = load_runs({m: [d for _, d in items] for m, items in configs.items()})
    first = next(iter(configs.values()))[0][0]
    from fedvl.rounds.family import family_of

    title = f"{family_of(first.algorithm.name).comparison_title(first)} · {len(seeds)} seed(s)"
    parts, tables = [f"# Comparison: {title}", ""], {}
    for point, point_overrides in points:  # a sweep: one pair of tables per grid point
        point_runs = {m: runs[f"{point}/{m}" if point else m] for m in methods}
        rows = {metric: comparison_rows(point_runs, metric) for metric in ("acc", "bal_acc")}
        if point:
            parts += [f"## {' '.join(point_overrides)}", ""]
        for metric, metric_rows in rows.items():
            parts += [f"##{'#' if point else ''} {metric}", "", markdown_table(metric_rows, metric)]
        tables[point] = {r["method"]: r for r in rows["acc"]}
    absent = absence_notes(runs)
    if absent:  # a client that left and came back, or left for good, is part of the result
        parts += ["Clients missing from evaluated rounds (averages are over the clients present):", "",
                  *(f"- {line}" for line in absent), ""]
    rounds = "per grid point" if any(k == "algorithm.rounds" for k, _ in sweep) else first.algorithm.rounds
    parts.append(f"Aggregation: {first.algorithm.aggregation}. Rounds: {rounds}. "
                 f"Command config: {config_path or 'embedded default'} {' '.join(overrides)}"
                 + (f", {_sweep_text(sweep)} (the sweep's values win)" if sweep else "") + "\n")
    (out_dir / "compare.md").write_text("\n".join(parts))
    # without a sweep {method: row}, as always; with one {point: {method: row}}
    (out_dir / "compare.json").write_text(json.dumps(tables if sweep else tables[""], indent=2))
    plot_average({m.replace("/", " · ") if sweep else m: r for m, r in runs.items()}, out_dir / "compare.png", title)
    console.print("\n".join(parts))
    _write_frontier(out_dir, points, methods, configs, runs, sweep, title)
    console.print(f"comparison: {out_dir / 'compare.md'}; accuracy vs communication: {out_dir / 'frontier.md'}")
    return out_dir


def _write_frontier(out_dir: Path, points: list[tuple[str, list[str]]], methods: list[str],
                    configs: dict[str, list[tuple[ExperimentConfig, Path]]], runs: dict[str, list[dict[str, Any]]],
                    sweep: list[tuple[str, list[str]]], title: str) -> None:
    """frontier.json / frontier.md / frontier.png: every method at every grid point."""
    from fedvl.report.frontier import write_frontier

    def value(cfg: ExperimentConfig, key: str) -> Any:  # a swept option as the run read it (typed)
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    groups = []
    for point, _ in points:
        for m in methods:
            group = f"{point}/{m}" if point else m
            groups.append({"method": m, "point": point, "runs": runs[group],
                           "run_dirs": [d.relative_to(out_dir).as_posix() for _, d in configs[group]],
                           "settings": {k: value(configs[group][0][0], k) for k, _ in sweep}})
    write_frontier(out_dir, groups, sweep, title)
