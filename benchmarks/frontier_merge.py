"""One accuracy-communication frontier from several `fedvl compare` folders (each a protocol, a sweep,
or a set of methods run separately), as `frontier.md` / `.json` / `.png` would be for one comparison.

    .venv/bin/python benchmarks/frontier_merge.py OUT_PREFIX "TITLE" FOLDER[:LABEL] ...

Every `<method>/seed<N>` (or `<point>/<method>/seed<N>`) run with a summary.json in a FOLDER is one
seed of the point "<method> (<LABEL or folder name> <point>)"; writes OUT_PREFIX.md and OUT_PREFIX.png.
References measured elsewhere (e.g. a local-only row of an earlier comparison) are added with
--ref "method=ACC%" (drawn as horizontal lines, listed in the table with no MB).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from fedvl.report.compare import load_runs
from fedvl.report.frontier import frontier_markdown, frontier_points, plot_frontier


def groups_of(folder: Path, label: str) -> list[dict]:
    seeds: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for summary in sorted(folder.rglob("seed*/summary.json")):
        run = summary.parent
        method = run.parent.name
        point = run.parent.parent.relative_to(folder).as_posix()
        seeds[(method, "" if point == "." else point)].append(run)
    out = []
    for (method, point), dirs in seeds.items():
        runs = load_runs({method: dirs})[method]
        where = f"{label} {point}".strip()
        # one curve per method and protocol: points of different protocols are not one method's curve
        out.append({"method": f"{method} ({where})", "point": where, "settings": {}, "runs": runs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_prefix")
    ap.add_argument("title")
    ap.add_argument("folders", nargs="+", help="FOLDER[:LABEL]")
    ap.add_argument("--ref", action="append", default=[], help="method=ACC (percent), e.g. local=51.4")
    ns = ap.parse_args()
    groups = []
    for spec in ns.folders:
        folder, _, label = spec.partition(":")
        groups += groups_of(Path(folder), label or Path(folder).name)
    points = frontier_points(groups)
    for ref in ns.ref:
        method, _, acc = ref.partition("=")
        points.append({"method": method, "point": "reference", "settings": {},
                       "acc": float(acc) / 100, "acc_std": 0.0, "mb": 0.0, "rounds": 0, "seeds": 3, "runs": [],
                       "pareto": None})
    out = Path(ns.out_prefix)
    out.with_suffix(".md").write_text(frontier_markdown(points, ns.title))
    plot_frontier(points, out.with_suffix(".png"), ns.title)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
