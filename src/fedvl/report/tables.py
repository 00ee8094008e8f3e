"""Summary tables: markdown for the results folder, rich for the terminal."""

from __future__ import annotations

from typing import Any


def _fmt(key: str, x: float | None) -> str:
    """Scores in percent; losses and seconds as they are."""
    if x is None:
        return "-"
    if key.endswith("seconds"):
        return f"{x:.1f}"
    return f"{x:.3f}" if "loss" in key else f"{100 * x:.1f}"


def _label(key: str) -> str:
    if key.endswith("seconds"):
        return key.replace("_seconds", " s")
    return key if "loss" in key else f"{key} %"


def absences(record: dict[str, Any], rounds: list[dict[str, Any]] | None = None) -> tuple[list[str], list[str]]:
    """(every client of the run, in the order first seen; one line per client absent from some
    evaluated round, saying which, and how the averages are taken then). ``rounds``: the run's
    records (metrics.jsonl); without them only the final record's own absences are known."""
    from fedvl.report.history import client_rounds, missed_rounds, spans

    rounds = list(rounds or [])
    if all(r.get("round") != record["round"] for r in rounds):
        rounds.append(record)
    reported = client_rounds(rounds)
    clients = list(reported)
    lines = []
    for cid, missed in missed_rounds(rounds).items():
        line = f"{cid} missed {spans(missed)}"
        if record["round"] in missed:
            line += (f", the final round included (its last scores: round {reported[cid][-1]})" if reported[cid]
                     else ": it reported no scores at all")
        lines.append(line)
    if lines:
        lines.append("averages are unweighted means over the clients present in each round")
    return clients, lines


def final_rows(record: dict[str, Any], clients: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """One row per client (those of ``clients`` absent from the final round: a row of "-" saying
    so), then the average, labelled with the clients it is over when some are missing."""
    present = record.get("eval", {})
    clients = clients if clients is not None else list(present)
    rows: list[tuple[str, dict[str, Any]]] = [(cid, present.get(cid, {"n": "missing"})) for cid in clients]
    missing = [cid for cid in clients if cid not in present]
    label = f"average of the {len(present)} of {len(clients)} clients present" if missing else "average"
    rows.append((label, record["avg"]))
    return rows


def final_line(record: dict[str, Any], clients: list[str], rounds: list[dict[str, Any]] | None = None) -> str:
    last = max([record["round"], *(r["round"] for r in rounds or [])])
    head = f"Round {record['round']} (final)" if record["round"] == last else \
        f"Round {record['round']} (the last with scores: no client reported any in the final round, {last})"
    missing = [cid for cid in clients if cid not in record.get("eval", {})]
    if not missing:
        return f"{head}."
    return f"{head}: {len(clients) - len(missing)} of {len(clients)} clients reported; missing: {', '.join(missing)}."


def markdown_summary(record: dict[str, Any], title: str, notes: list[str],
                     rounds: list[dict[str, Any]] | None = None) -> str:
    clients, absent = absences(record, rounds)
    metric_keys = [k for k in record["avg"] if k not in ("n",)]
    head = "| client | " + " | ".join(_label(k) for k in metric_keys) + " | test n |"
    sep = "|---" * (len(metric_keys) + 2) + "|"
    lines = [f"# {title}", "", final_line(record, clients, rounds), "", head, sep]
    for cid, m in final_rows(record, clients):
        n = m.get("n", "")
        lines.append(f"| {cid} | " + " | ".join(_fmt(k, m.get(k)) for k in metric_keys) + f" | {n} |")
    lines += [""] + [f"- {n}" for n in absent + notes]
    return "\n".join(lines) + "\n"


def print_summary(console, record: dict[str, Any], title: str, rounds: list[dict[str, Any]] | None = None) -> None:
    from rich.table import Table

    clients, absent = absences(record, rounds)
    metric_keys = [k for k in record["avg"] if k not in ("n",)]
    table = Table(title=title, caption=final_line(record, clients, rounds))
    table.add_column("client")
    for k in metric_keys:
        table.add_column(_label(k), justify="right")
    table.add_column("test n", justify="right")
    for cid, m in final_rows(record, clients):
        style = "bold" if cid.startswith("average") else None
        table.add_row(cid, *(_fmt(k, m.get(k)) for k in metric_keys), str(m.get("n", "")), style=style)
    console.print(table)
    for line in absent:
        console.print(f"  {line}")
