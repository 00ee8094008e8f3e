"""What every reader returns, and the shared file helpers.

A reader turns one source's own files into a list of :class:`Question`: the
image's path, the question text and the human answers (normalised). Images are
only located here, never opened: decoding happens later, in chunks, while the
frozen features are computed (:mod:`fedvl.data.real.encode`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvl.config import ConfigError
from fedvl.data.real.answers import normalize_answer

DOCS = "docs/datasets.md"


class DatasetError(ConfigError):
    """A dataset file is missing or not in the expected format (one line, CLI exit 2)."""


@dataclass
class Question:
    image: Path
    question: str
    answers: list[str]
    """Normalised human answers: 10 for VQAv2 / VizWiz / Abstract Scenes / CLOVE, one elsewhere."""
    qid: str


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what}: {path} not found (expected layout: {DOCS})")
    return path


def read_json(path: Path, what: str) -> Any:
    require(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{what}: {path} is not valid JSON ({e.msg}, line {e.lineno})") from None


def field(record: dict, key: str, path: Path) -> Any:
    """``record[key]`` or a one-line error naming the file and the missing field."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise DatasetError(f"{path}: a record has no '{key}' field (expected format: {DOCS})") from None


def normalized(answers: list[str]) -> list[str]:
    return [normalize_answer(str(a)) for a in answers]


def first_existing(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(f"{what}: no image file at {candidates[0]} (nor {len(candidates) - 1} other usual names); "
                       f"expected layout: {DOCS}")
