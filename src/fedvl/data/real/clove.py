"""CLOVE (Lei et al., AAAI 2023, https://arxiv.org/abs/2208.12037; showlab/CLVQA, CLOVE-json.zip).

Function stages: ``<folder>/function/functional_<stage>_{train,val}.json`` with
stage in object, attribute, relation, logical, knowledge, scenetext. Scene
stages: ``<folder>/scene/scene_<letter>#<Name>_{train,val}.json`` with letter
a (ShopAndDining) .. f (Outdoors). Each file is a JSON list of samples; we read
``image_id``, ``image_source`` (``vg`` or ``textvqa``), ``question``,
``question_id`` and ``answers`` (10 answers; one answer is repeated 10 times),
falling back to ``answer``. Images: ``<folder>/vg/image/<image_id>.jpg`` and
``<folder>/textvqa/<image_id>.jpg``, the layout of FedDAT's CLOVE loader.
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import (DatasetError, Question, answered, field, first_existing, inside, no_duplicates,
                                  read_json, records)

FUNCTION_STAGES = ("object", "attribute", "relation", "logical", "knowledge", "scenetext")
SCENE_STAGES = {"a": "ShopAndDining", "b": "Workplace", "c": "HomeOrHotel", "d": "Transportation",
                "e": "SportAndLeisure", "f": "Outdoors"}


def stage_file(folder: Path, stage: str, split: str) -> Path:
    if stage in FUNCTION_STAGES:
        return folder / "function" / f"functional_{stage}_{split}.json"
    if stage in SCENE_STAGES:
        return folder / "scene" / f"scene_{stage}#{SCENE_STAGES[stage]}_{split}.json"
    raise DatasetError(f"unknown CLOVE stage {stage!r} (function: {', '.join(FUNCTION_STAGES)}; "
                       f"scene: {', '.join(SCENE_STAGES)})")


def _image(folder: Path, source: str, image_id: str, path: Path, qid: str) -> list[Path]:
    names = [f"vg/image/{image_id}.jpg", f"vg/{image_id}.jpg"] if source == "vg" else [f"{source}/{image_id}.jpg"]
    return [inside(folder, n, path, qid) for n in names]


def read(folder: Path, stage: str, split: str) -> list[Question]:
    path = stage_file(folder, stage, split)
    rows = records(read_json(path, f"CLOVE {stage}"), path)
    # the id falls back to the image id, which several questions share: only real question ids must be unique
    no_duplicates([r["question_id"] for r in rows if "question_id" in r], path, "question_id")
    out = []
    for r in rows:
        image_id = str(field(r, "image_id", path))
        qid = str(r.get("question_id", image_id))
        answers = r.get("answers") or [field(r, "answer", path)]
        image = first_existing(_image(folder, str(r.get("image_source", "vg")), image_id, path, qid),
                               f"CLOVE image {image_id}")
        out.append(Question(image, str(field(r, "question", path)), answered(answers, path, qid), qid))
    return out
