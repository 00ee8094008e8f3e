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

from fedvl.data.real.base import DatasetError, Question, field, first_existing, normalized, read_json, require

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
    anns = {field(a, "question_id", annotations_path): a for a in field(adoc, "annotations", annotations_path)}
    out = []
    for q in field(qdoc, "questions", questions_path):
        qid = field(q, "question_id", questions_path)
        ann = anns.get(qid)
        if ann is None:
            raise DatasetError(f"{annotations_path}: no annotation for question_id {qid} of {questions_path}")
        answers = [field(a, "answer", annotations_path) for a in field(ann, "answers", annotations_path)]
        if not answers:  # a record with only the consensus answer
            answers = [field(ann, "multiple_choice_answer", annotations_path)]
        image_id = field(q, "image_id", questions_path)
        image = first_existing([image_dir / n for n in _image_names(kind, subtype, image_id)], f"{kind} image {image_id}")
        out.append(Question(image, str(field(q, "question", questions_path)), normalized(answers), str(qid)))
    return out


def read(kind: str, folder: Path, split: str) -> list[Question]:
    files = {"vqav2": VQAV2_FILES, "abstract": ABSTRACT_FILES, "folder": FOLDER_FILES}[kind]
    qfile, afile, images = files[split]
    return read_vqa_pair(folder / qfile, folder / afile, folder / images, kind)
