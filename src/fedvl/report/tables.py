"""Summary tables: markdown for the results folder, rich for the terminal."""

from __future__ import annotations

from typing import Any


def _fmt(key: str, x: float | None) -> str:
    """Scores in percent; losses as they are."""
    if x is None:
        return "-"
    return f"{x:.3f}" if "loss" in key else f"{100 * x:.1f}"


def _label(key: str) -> str:
    return key if "loss" in key else f"{key} %"


def final_rows(record: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    rows = list(record["eval"].items())
    rows.append(("average", record["avg"]))
    return rows


def markdown_summary(record: dict[str, Any], title: str, notes: list[str]) -> str:
    metric_keys = [k for k in record["avg"] if k not in ("n",)]
    head = "| client | " + " | ".join(_label(k) for k in metric_keys) + " | test n |"
    sep = "|---" * (len(metric_keys) + 2) + "|"
    lines = [f"# {title}", "", f"Round {record['round']} (final).", "", head, sep]
    for cid, m in final_rows(record):
        n = m.get("n", "")
        lines.append(f"| {cid} | " + " | ".join(_fmt(k, m.get(k)) for k in metric_keys) + f" | {n} |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def print_summary(console, record: dict[str, Any], title: str) -> None:
    from rich.table import Table

    metric_keys = [k for k in record["avg"] if k not in ("n",)]
    table = Table(title=title)
    table.add_column("client")
    for k in metric_keys:
        table.add_column(_label(k), justify="right")
    table.add_column("test n", justify="right")
    for cid, m in final_rows(record):
        style = "bold" if cid == "average" else None
        table.add_row(cid, *(_fmt(k, m.get(k)) for k in metric_keys), str(m.get("n", "")), style=style)
    console.print(table)
