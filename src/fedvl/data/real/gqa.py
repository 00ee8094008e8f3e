"""GQA question files (https://cs.stanford.edu/people/dorarad/gqa/download.html).

``<folder>/questions/{train,val}_balanced_questions.json``: a mapping
question id -> ``{"imageId", "question", "answer", "fullAnswer", "types", ...}``;
images ``<folder>/images/<imageId>.jpg``. We read ``imageId``, ``question`` and
``answer`` (one answer: exact-match scoring, as GQA's own evaluation).
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import DatasetError, Question, answered, field, inside, read_json, records, require


def read(folder: Path, split: str) -> list[Question]:
    path = folder / "questions" / f"{split}_balanced_questions.json"
    doc = read_json(path, "GQA questions", key="question id")
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a mapping question id -> question (GQA format)")
    image_dir = require(folder / "images", "GQA images")
    rows = records(list(doc.values()), path)
    return [Question(inside(image_dir, f"{field(r, 'imageId', path)}.jpg", path, qid), str(field(r, "question", path)),
                     answered([field(r, "answer", path)], path, qid), str(qid)) for qid, r in zip(doc, rows)]
