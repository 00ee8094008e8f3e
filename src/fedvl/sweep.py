"""``fedvl compare --sweep KEY=V1,V2,...``: a grid of config overrides. Every grid point runs every
method and seed of the comparison, in its own folder (``<compare>/<point>/<method>/seed<N>``).

Pure functions over the ``--sweep`` texts: nothing runs, nothing is written.
"""

from __future__ import annotations

import itertools
import re

from fedvl.schema import ConfigError, ExperimentConfig, _load, _short

Sweep = list[tuple[str, list[str]]]
"""(dotted config key, its values as given), in the order the --sweep options came."""

# keys a sweep may not vary: the comparison sets them itself, or they change where a run computes, not what
_NOT_SWEPT = {
    "run.seed": "give the seeds with --seeds",
    "algorithm.name": "name the methods with --algorithms",
    "model.peft": "name the methods with --algorithms (ALGORITHM-PEFT)",
    "run.name": "the comparison names its runs' folders",
    "run.output_dir": "the comparison's folder is run.output_dir/--name",
    "run.device": "it changes where a run computes, not what",
    "run.threads": "it changes where a run computes, not what",
    "run.cache_dir": "it changes where a run computes, not what",
}


def parse_sweep(specs: list[str]) -> Sweep:
    """``["run.rounds=2,4", ...]`` -> ``[("run.rounds", ["2", "4"]), ...]``. Every key must be a config key
    that a ``key=value`` override accepts, and every value one it takes (checked here, one line each);
    ranges and cross-field checks follow when the comparison loads each point's config."""
    sweep: Sweep = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        if not sep or not key or not text:
            raise ConfigError(f"--sweep {_short(spec)} is not KEY=V1,V2,... (e.g. --sweep algorithm.local_steps=5,10)")
        if key in _NOT_SWEPT:
            raise ConfigError(f"--sweep cannot vary {key}: {_NOT_SWEPT[key]}")
        if any(key == k for k, _ in sweep):
            raise ConfigError(f"--sweep names {key} twice: give all its values in one --sweep")
        values = text.split(",")
        if "" in values:
            raise ConfigError(f"--sweep {key}: value {values.index('') + 1} is empty (comma-separated, no empty items)")
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:
            raise ConfigError(f"--sweep {key} lists {_short(twice)} twice: each value is one grid point")
        for v in values:
            try:
                _load(ExperimentConfig(), None, [f"{key}={v}"], "")
            except ConfigError as e:
                raise ConfigError(f"--sweep: {e}") from None
        sweep.append((key, values))
    return sweep


def grid(sweep: Sweep) -> list[list[str]]:
    """Every grid point as its ``key=value`` overrides, the last --sweep varying fastest
    (no sweep: one point without overrides)."""
    return [[f"{k}={v}" for k, v in zip([k for k, _ in sweep], combo)]
            for combo in itertools.product(*[values for _, values in sweep])]


def point_names(sweep: Sweep) -> list[str]:
    """A readable folder name for every point of :func:`grid`, e.g. ``rounds-2+local_steps-10``: each
    key by its last part (the whole key where two keys share it), characters a folder name should
    not hold as ``_``. No ``=``: a path with one would read as an override on a command line.
    No sweep: the one point is the comparison folder itself (``""``)."""
    if not sweep:
        return [""]
    last = [k.rsplit(".", 1)[-1] for k, _ in sweep]
    short = [s if last.count(s) == 1 else k for s, (k, _) in zip(last, sweep)]
    names = ["+".join(f"{s}-{re.sub(r'[^A-Za-z0-9._-]', '_', v)}" for s, v in zip(short, combo))
             for combo in itertools.product(*[values for _, values in sweep])]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"--sweep: two grid points would share the folder name {twice!r}; "
                          "give values that differ in letters, digits, '.', '_' or '-'")
    return names
