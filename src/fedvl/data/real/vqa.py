"""VQAv2-style questions + annotations JSON: VQAv2, VQA Abstract Scenes, and a user's own folder.

Format (GT-Vision-Lab/VQA API, https://visualqa.org/download.html): a questions
file ``{"data_subtype": "train2014", "questions": [{"image_id", "question",
"question_id"}, ...]}`` and an annotations file ``{"annotations": [{"question_id",
"image_id", "multiple_choice_answer", "answers": [{"answer", ...} x 10], ...}]}``.
We read those fields and nothing else. Image file names follow the API:
``COCO_<data_subtype>_<image_id:012d>.jpg`` (VQAv2) and
``abstract_v002_<data_subtype>_<image_id:012d>.png`` (Abstract Scenes).
"""

from __future__ import annotations

from pathlib import Path

from fedvl.data.real.base import (DatasetError, Question, answered, field, first_existing, inside, no_duplicates,
                                  read_json, records, require)

# split -> (questions file, annotations file, image folder) under the source folder
VQAV2_FILES = {
    "train": ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json", "train2014"),
    "val": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", "val2014"),
}
ABSTRACT_FILES = {
    "train": ("OpenEnded_abstract_v002_train2015_questions.json", "abstract_v002_train2015_annotations.json",
              "train2015"),
    "val": ("OpenEnded_abstract_v002_val2015_questions.json", "abstract_v002_val2015_annotations.json", "val2015"),
}
# A user's own data in the same format, with plain names.
FOLDER_FILES = {
    "train": ("train_questions.json", "train_annotations.json", "images"),
    "val": ("val_questions.json", "val_annotations.json", "images"),
}


def _image_names(kind: str, subtype: str, image_id: int | str) -> list[str]:
    if kind == "abstract":
        return [f"abstract_v002_{subtype}_{int(image_id):012d}.png"]
    if kind == "vqav2":
        return [f"COCO_{subtype}_{int(image_id):012d}.jpg", f"{int(image_id):012d}.jpg"]
    # own folder: the image_id is the file name, with or without its extension
    s = str(image_id)
    return [s] + [s + ext for ext in (".jpg", ".jpeg", ".png")]


def read_vqa_pair(questions_path: Path, annotations_path: Path, image_dir: Path, kind: str) -> list[Question]:
    """Join questions and annotations on ``question_id``; one :class:`Question` each."""
    qdoc = read_json(questions_path, f"{kind} questions")
    adoc = read_json(annotations_path, f"{kind} annotations")
    require(image_dir, f"{kind} images")
    subtype = qdoc.get("data_subtype", "") if isinstance(qdoc, dict) else ""
    questions = records(field(qdoc, "questions", questions_path), questions_path, "'questions'")
    annotations = records(field(adoc, "annotations", annotations_path), annotations_path, "'annotations'")
    no_duplicates([field(q, "question_id", questions_path) for q in questions], questions_path, "question_id")
    no_duplicates([field(a, "question_id", annotations_path) for a in annotations], annotations_path, "question_id")
    anns = {a["question_id"]: a for a in annotations}
    out = []
    for q in questions:
        qid = q["question_id"]
        ann = anns.get(qid)
        if ann is None:
            raise DatasetError(f"{annotations_path}: no annotation for question_id {qid} of {questions_path}")
        answers = [field(a, "answer", annotations_path) for a in records(field(ann, "answers", annotations_path),
                                                                        annotations_path, f"question {qid}'s answers")]
        if not answers:  # a record with only the consensus answer
            answers = [field(ann, "multiple_choice_answer", annotations_path)]
        image_id = field(q, "image_id", questions_path)
        try:
            names = _image_names(kind, subtype, image_id)
        except (TypeError, ValueError):
            raise DatasetError(f"{questions_path}: question {qid}: image_id {image_id!r} is not a number") from None
        image = first_existing([inside(image_dir, n, questions_path, qid) for n in names], f"{kind} image {image_id}")
        out.append(Question(image, str(field(q, "question", questions_path)),
                            answered(answers, annotations_path, qid), str(qid)))
    return out


def read(kind: str, folder: Path, split: str) -> list[Question]:
    files = {"vqav2": VQAV2_FILES, "abstract": ABSTRACT_FILES, "folder": FOLDER_FILES}[kind]
    qfile, afile, images = files[split]
    return read_vqa_pair(folder / qfile, folder / afile, folder / images, kind)
