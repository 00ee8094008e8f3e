"""VizWiz-VQA: one JSON list per split (https://vizwiz.org/tasks-and-datasets/vqa/).

``<folder>/Annotations/{train,val}.json``: ``[{"image": "VizWiz_train_00000000.jpg",
"question", "answers": [{"answer", "answer_confidence"} x 10], "answerable",
"answer_type"}]``; images in ``<folder>/{train,val}/``. We read ``image``,
``question`` and ``answers[*].answer``. The test split has no answers, so the
client's test split is ``val``.
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import Question, field, normalized, read_json, require


def read(folder: Path, split: str) -> list[Question]:
    path = folder / "Annotations" / f"{split}.json"
    records = read_json(path, "VizWiz annotations")
    image_dir = require(folder / split, "VizWiz images")
    out = []
    for i, r in enumerate(records):
        answers = [field(a, "answer", path) for a in field(r, "answers", path)]
        image = image_dir / field(r, "image", path)
        out.append(Question(image, str(field(r, "question", path)), normalized(answers), f"{split}-{i}"))
    return out
