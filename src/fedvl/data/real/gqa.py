"""GQA question files (https://cs.stanford.edu/people/dorarad/gqa/download.html).

``<folder>/questions/{train,val}_balanced_questions.json``: a mapping
question id -> ``{"imageId", "question", "answer", "fullAnswer", "types", ...}``;
images ``<folder>/images/<imageId>.jpg``. We read ``imageId``, ``question`` and
``answer`` (one answer: exact-match scoring, as GQA's own evaluation).
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import DatasetError, Question, field, normalized, read_json, require


def read(folder: Path, split: str) -> list[Question]:
    path = folder / "questions" / f"{split}_balanced_questions.json"
    records = read_json(path, "GQA questions")
    if not isinstance(records, dict):
        raise DatasetError(f"{path}: expected a mapping question id -> question (GQA format)")
    image_dir = require(folder / "images", "GQA images")
    return [Question(image_dir / f"{field(r, 'imageId', path)}.jpg", str(field(r, "question", path)),
                     normalized([field(r, "answer", path)]), str(qid)) for qid, r in records.items()]
