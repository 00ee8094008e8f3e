"""COCO-QA (Ren et al. 2015, https://arxiv.org/abs/1505.02074): parallel text files.

``<folder>/{train,test}/{questions,answers,img_ids,types}.txt``: line i of each
file belongs to question i; ``img_ids`` are COCO image ids (train from COCO
train2014, test from val2014); ``types`` is 0 object, 1 number, 2 colour,
3 location (read and checked for length, not used). Images are looked up in
``<folder>/images/`` as ``COCO_train2014_<id:012d>.jpg``,
``COCO_val2014_<id:012d>.jpg`` or ``<id:012d>.jpg``.
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import DatasetError, Question, answered, first_existing, read_text, require


def _lines(path: Path) -> list[str]:
    return read_text(path, "COCO-QA file").splitlines()


def read(folder: Path, split: str) -> list[Question]:
    d = folder / split
    cols = {name: _lines(d / f"{name}.txt") for name in ("questions", "answers", "img_ids", "types")}
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"COCO-QA {d}: the four files must have one line per question, got {lengths}")
    image_dir = require(folder / "images", "COCO-QA images")
    out = []
    for i, (q, a, img) in enumerate(zip(cols["questions"], cols["answers"], cols["img_ids"])):
        try:
            image_id = int(img)
        except ValueError:
            raise DatasetError(f"{d / 'img_ids.txt'} line {i + 1}: {img!r} is not a COCO image id") from None
        names = [f"COCO_train2014_{image_id:012d}.jpg", f"COCO_val2014_{image_id:012d}.jpg", f"{image_id:012d}.jpg"]
        image = first_existing([image_dir / n for n in names], f"COCO-QA image {image_id}")
        out.append(Question(image, q.strip(), answered([a], d / "answers.txt", f"on line {i + 1}"), f"{split}-{i}"))
    return out
