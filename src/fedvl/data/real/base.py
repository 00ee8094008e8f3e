"""What every reader returns, and the shared file helpers.

A reader turns one source's own files into a list of :class:`Question`: the
image's path, the question text and the human answers (normalised). Images are
only located here, never opened: decoding happens later, in chunks, while the
frozen features are computed (:mod:`fedvl.data.real.encode`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvl.data.real.answers import normalize_answer
from fedvl.schema import ConfigError

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


class _Repeated(dict):
    """A JSON object one of whose keys repeats (``json.load`` keeps the last value, silently)."""

    first: str


def _note_repeats(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    repeated = _Repeated(out)
    repeated.first = next(k for k, _ in pairs if k in seen or seen.add(k))
    return repeated


def read_text(path: Path, what: str) -> str:
    """The text of a dataset file, which must be UTF-8 (a byte-order mark is dropped), or one line naming it.
    Every reader reads its question and annotation files through here."""
    require(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{what}: {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                           f"{e.start}); convert it, e.g. with iconv -t UTF-8") from None
    except OSError as e:
        raise DatasetError(f"{what}: {path} cannot be read ({e.strerror or e})") from None


def read_json(path: Path, what: str, key: str | None = None) -> Any:
    """The parsed file; ``key``: the top-level object maps ids (named ``key``) to records, and an id
    that repeats is an error (a duplicate would silently replace the question before it)."""
    text = read_text(path, what)
    try:
        doc = json.loads(text, object_pairs_hook=_note_repeats if key else None)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{what}: {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(doc, _Repeated):
        raise DatasetError(f"{path}: duplicate {key} {doc.first} (every question needs its own id)")
    return doc


def field(record: dict, key: str, path: Path) -> Any:
    """``record[key]`` or a one-line error naming the file and the missing field."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise DatasetError(f"{path}: a record has no '{key}' field (expected format: {DOCS})") from None


def normalized(answers: list[str]) -> list[str]:
    return [normalize_answer(str(a)) for a in answers]


def records(value: Any, path: Path, what: str = "the file") -> list[dict]:
    """``value`` as a list of JSON objects, or a one-line error naming the file (e.g. ``{"questions": 5}``)."""
    if not isinstance(value, list):
        raise DatasetError(f"{path}: {what} must be a list of records, got {type(value).__name__} "
                           f"(expected format: {DOCS})")
    for i, r in enumerate(value):
        if not isinstance(r, dict):
            raise DatasetError(f"{path}: record {i} of {what} is a {type(r).__name__}, not an object "
                               f"(expected format: {DOCS})")
    return value


def answered(answers: list[str], path: Path, qid: Any) -> list[str]:
    """Normalised answers with at least one non-empty: a question nobody answered has no label to learn
    (its loss and balanced accuracy would be NaN)."""
    if not isinstance(answers, list):
        raise DatasetError(f"{path}: question {qid}: answers must be a list, got {type(answers).__name__}")
    out = normalized(answers)
    if not any(out):
        raise DatasetError(f"{path}: question {qid} has no usable answer (every answer is empty)")
    return out


def no_duplicates(ids: list[Any], path: Path, key: str) -> None:
    """Question ids are unique: a duplicate silently merges two questions' labels."""
    seen: set = set()
    for i in ids:
        if not isinstance(i, (int, str)):
            raise DatasetError(f"{path}: {key} {i!r} is not a number or a string")
        if i in seen:
            raise DatasetError(f"{path}: duplicate {key} {i} (every question needs its own id)")
        seen.add(i)


def inside(folder: Path, name: Any, path: Path, qid: Any) -> Path:
    """``folder / name``, refusing a name that leaves ``folder`` (``../..``, an absolute path).
    Checked on the path as written, not resolved: a dataset may symlink its image folder elsewhere."""
    image = folder / str(name)
    if not os.path.normpath(image).startswith(os.path.normpath(folder) + os.sep):
        raise DatasetError(f"{path}: question {qid}: image {str(name)!r} lies outside the dataset folder {folder}")
    return image


def first_existing(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(f"{what}: no image file at {candidates[0]} (nor {len(candidates) - 1} other usual names); "
                       f"expected layout: {DOCS}")
