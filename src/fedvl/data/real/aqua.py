"""AQUA, VQA on art (Garcia et al. 2020, https://arxiv.org/abs/2008.12520; noagarcia/ArtVQA).

``<folder>/{train,val,test}.json``: ``[{"image": "<SemArt file name>",
"question", "answer", "need_external_knowledge"}]``; the paintings come from
SemArt: ``<folder>/Images/<image>``. We read ``image``, ``question``,
``answer``; ``data.aqua_knowledge=false`` (the default) keeps only the visual
questions (``need_external_knowledge`` false), which an image model can answer.
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import Question, answered, field, inside, read_json, records, require


def read(folder: Path, split: str, knowledge: bool = False) -> list[Question]:
    path = folder / f"{split}.json"
    rows = records(read_json(path, "AQUA questions"), path)
    image_dir = require(folder / "Images", "SemArt images for AQUA")
    out = []
    for i, r in enumerate(rows):
        if not knowledge and bool(r.get("need_external_knowledge", False)):
            continue
        qid = f"{split}-{i}"
        out.append(Question(inside(image_dir, field(r, "image", path), path, qid), str(field(r, "question", path)),
                            answered([field(r, "answer", path)], path, qid), qid))
    return out
