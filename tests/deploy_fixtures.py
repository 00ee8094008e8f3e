"""What the deployment tests share: the processes on this machine, and the check that a deployed run
gave the in-process simulator's numbers."""

from pathlib import Path

import pytest


def cmdlines(live: bool = False) -> dict[int, str]:
    """pid -> command line of every process (Linux /proc); ``live``: zombies left out."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if live and (d / "stat").read_text().split(") ", 1)[1][0] == "Z":
                continue
        except OSError:
            continue
        out[int(d.name)] = cmd
    return out


def running_with(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    return [pid for pid, cmd in cmdlines(live=True).items() if text in cmd]


def assert_as_in_process(args: list[str], hist: list[dict], tmp_path: Path, *, tol: float = 1e-5,
                         drop: tuple[str, ...] = ("run.name",), parts: tuple[str, ...] = (),
                         skip: tuple[str, ...] = ()) -> None:
    """Run ``args`` (less the overrides starting with ``drop``) in process and check every client's
    scores in every round of ``hist`` against it within ``tol``; ``parts``: further per-round sections
    (e.g. FedMMKT's ``server``) checked key by key; ``skip``: score names that are timings."""
    from fedvl.config import load_config
    from fedvl.experiment import run_experiment
    from fedvl.report.history import History

    cfg = load_config(None, [a for a in args if not a.startswith(drop)] + ["run.name=sim"])
    run_experiment(cfg, tmp_path / "sim", progress_enabled=False)
    for a, b in zip(History.read(tmp_path / "sim"), hist, strict=True):
        for cid in a["eval"]:
            for k, v in a["eval"][cid].items():
                if k not in skip:
                    assert b["eval"][cid][k] == pytest.approx(v, abs=tol), (a["round"], cid, k)
        for part in parts:
            assert set(b.get(part, {})) == set(a.get(part, {}))
            for k, v in a.get(part, {}).items():
                assert b[part][k] == pytest.approx(v, abs=tol), (a["round"], part, k)
