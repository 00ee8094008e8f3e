"""``fedvl compare``: several methods x seeds on the same clients, and their paper-style table."""

from __future__ import annotations

import argparse

from fedvl.commands import split_args

COMPARE_HELP = """\
Run every method on the same clients with the same seeds and write a paper-style
table (compare.md / compare.json: one row per method, one column per client plus
the average, mean ± std over seeds, trainable and communicated parameters) and
compare.png (average accuracy per round per method). Finished runs are reused
and a half-done run continues from its last checkpoint, so an interrupted
comparison resumes. The folder records each method's settings
(compare-settings.json): rerunning it with other settings is refused unless
--overwrite, which runs every method and seed afresh. Methods must be of one
family (parameter exchange, or the FedMMKT knowledge family), each named once.

--sweep KEY=V1,V2,... (repeatable: several make a grid) runs every method and
seed at every grid point, each point in its own folder (e.g. rounds-2+local_steps-5/).
Every comparison also writes frontier.md / frontier.json / frontier.png: final
average accuracy against the MB each client sent up and against rounds, one
point per method and grid point, the Pareto-optimal ones marked.

  fedvl compare --benchmark domain --algorithms feddat,fedavg-adapter,fedavg-lora,local,centralized --seeds 0,1,2
  fedvl compare --algorithms fedavg,fedavg-lora,local --sweep algorithm.rounds=4,8 --sweep algorithm.local_steps=5,10
"""


def add_parser(sub) -> None:
    cmp_ = sub.add_parser("compare", help="run several methods x seeds on the same clients, paper-style table",
                          description=COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    cmp_.add_argument("--algorithms", "--methods", dest="methods", required=True,
                      help="comma-separated methods: ALGORITHM or ALGORITHM-PEFT "
                           "(e.g. feddat,fedavg-adapter,fedavg-lora,local)")
    cmp_.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    cmp_.add_argument("--benchmark", help="shortcut for data.benchmark=...")
    cmp_.add_argument("--name", help="folder under run.output_dir (default: compare-<benchmark>)")
    cmp_.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                      help="run every method and seed at each of these values of a config key (repeatable: "
                           "a grid); values are read as in key=value overrides")
    cmp_.add_argument("--overwrite", action="store_true",
                      help="run every method and seed afresh, also in a folder that ran other settings")
    cmp_.add_argument("--quiet", action="store_true", help="no live progress bars")
    cmp_.add_argument("--jobs", type=int, default=1, metavar="N",
                      help="runs side by side, each in its own process (give each run.threads=1 on a small "
                           "machine); the numbers are the same as one at a time (default: 1)")
    cmp_.set_defaults(handler=main)


def main(ns) -> int:
    from fedvl.config import load_config
    from fedvl.experiment import run_comparison
    from fedvl.schema import ConfigError

    path, overrides = split_args(ns.args)
    if ns.benchmark:
        overrides = [f"data.benchmark={ns.benchmark}"] + overrides
    try:
        seeds = [int(s) for s in ns.seeds.split(",") if s != ""]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {ns.seeds!r}") from None
    from fedvl.runfolder import check_name

    check_name(ns.name or "", "--name")  # one folder under run.output_dir, like run.name
    from fedvl.sweep import parse_sweep

    sweep = parse_sweep(ns.sweep)
    methods = [m for m in ns.methods.split(",") if m]
    if not methods or not seeds:
        raise ConfigError("--algorithms and --seeds must name at least one method and one seed")
    if not 1 <= ns.jobs <= 64:
        raise ConfigError(f"--jobs must be 1..64, got {ns.jobs}")
    from fedvl.rounds.family import family_of

    # the folder is named by the family's benchmark (a knowledge-transfer comparison is not on a
    # data.benchmark); a comparison that mixes families is refused by run_comparison
    bench = family_of(methods[0]).benchmark(lambda: load_config(path, overrides))
    run_comparison(path, overrides, methods, seeds, ns.name or f"compare-{bench}",
                   progress_enabled=not ns.quiet, overwrite=ns.overwrite, sweep=sweep, jobs=ns.jobs)
    return 0
