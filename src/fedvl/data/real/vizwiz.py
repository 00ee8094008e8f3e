"""VizWiz-VQA: one JSON list per split (https://vizwiz.org/tasks-and-datasets/vqa/).

``<folder>/Annotations/{train,val}.json``: ``[{"image": "VizWiz_train_00000000.jpg",
"question", "answers": [{"answer", "answer_confidence"} x 10], "answerable",
"answer_type"}]``; images in ``<folder>/{train,val}/``. We read ``image``,
``question`` and ``answers[*].answer``. The test split has no answers, so the
client's test split is ``val``.
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import Question, answered, field, inside, read_json, records, require


def read(folder: Path, split: str) -> list[Question]:
    path = folder / "Annotations" / f"{split}.json"
    rows = records(read_json(path, "VizWiz annotations"), path)
    image_dir = require(folder / split, "VizWiz images")
    out = []
    for i, r in enumerate(rows):
        qid = f"{split}-{i}"
        votes = records(field(r, "answers", path), path, f"question {qid}'s answers")
        answers = [field(a, "answer", path) for a in votes]
        image = inside(image_dir, field(r, "image", path), path, qid)
        out.append(Question(image, str(field(r, "question", path)), answered(answers, path, qid), qid))
    return out
