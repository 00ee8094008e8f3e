"""Small fixture files in each real dataset's exact format, written by the tests themselves
(the ``real_root`` fixture in tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (250, 250, 250)}


def write_image(path: Path, colour: str, size: int = 16) -> None:
    """A tiny image whose whole content is one colour (so a model can learn it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    px = np.clip(np.array(COLOURS[colour]) + rng.integers(-10, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(px).save(path)  # the suffix picks PNG or JPEG


def ten(answer: str, other: str | None = None, n_other: int = 0) -> list[dict]:
    """Ten VQA annotator answers: ``10 - n_other`` times ``answer``, ``n_other`` times ``other``."""
    answers = [answer] * (10 - n_other) + [other] * n_other
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def write_vqa(folder: Path, qfile: str, afile: str, image_dir: str, subtype: str, name_fn, items) -> None:
    """VQAv2 questions + annotations; ``items``: (image_id, colour, question, answers list)."""
    questions, annotations = [], []
    for k, (image_id, colour, question, answers) in enumerate(items):
        write_image(folder / image_dir / name_fn(subtype, image_id), colour)
        questions.append({"image_id": image_id, "question": question, "question_id": 10000 + k})
        annotations.append({"question_id": 10000 + k, "image_id": image_id, "question_type": "what color",
                            "answer_type": "other", "multiple_choice_answer": answers[0]["answer"],
                            "answers": answers})
    (folder / qfile).write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                            "data_subtype": subtype, "license": {}, "questions": questions}))
    (folder / afile).write_text(json.dumps({"info": {}, "data_subtype": subtype, "annotations": annotations}))


def colour_items(start: int, n: int) -> list:
    names = list(COLOURS)
    return [(start + i, names[i % 4], "What colour is the picture?", ten(names[i % 4])) for i in range(n)]


def write_all(root: Path, n: int = 8) -> None:
    """Every supported format under ``root``, ``n`` questions per split."""
    coco = lambda sub, i: f"COCO_{sub}_{i:012d}.jpg"  # noqa: E731
    abstract = lambda sub, i: f"abstract_v002_{sub}_{i:012d}.png"  # noqa: E731
    v = root / "vqav2"
    v.mkdir(parents=True)
    write_vqa(v, "v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json",
              "train2014", "train2014", coco, colour_items(1, n))
    write_vqa(v, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json",
              "val2014", "val2014", coco, colour_items(100, n))
    a = root / "abstract"
    a.mkdir(parents=True)
    write_vqa(a, "OpenEnded_abstract_v002_train2015_questions.json", "abstract_v002_train2015_annotations.json",
              "train2015", "train2015", abstract, colour_items(1, n))
    write_vqa(a, "OpenEnded_abstract_v002_val2015_questions.json", "abstract_v002_val2015_annotations.json",
              "val2015", "val2015", abstract, colour_items(200, n))
    names = list(COLOURS)
    # VizWiz
    w = root / "vizwiz"
    (w / "Annotations").mkdir(parents=True)
    for split in ("train", "val"):
        recs = []
        for i in range(n):
            img = f"VizWiz_{split}_{i:08d}.jpg"
            write_image(w / split / img, names[i % 4])
            recs.append({"image": img, "question": "What colour is this?", "answers": ten(names[i % 4]),
                         "answer_type": "other", "answerable": 1})
        (w / "Annotations" / f"{split}.json").write_text(json.dumps(recs))
    # GQA
    g = root / "gqa"
    (g / "questions").mkdir(parents=True)
    for split in ("train", "val"):
        recs = {}
        for i in range(n):
            image_id = f"{split[0]}{2350000 + i}"
            write_image(g / "images" / f"{image_id}.jpg", names[i % 4])
            recs[f"{split}{i:05d}"] = {"imageId": image_id, "question": "Which color is the image?",
                                       "answer": names[i % 4], "fullAnswer": f"The image is {names[i % 4]}.",
                                       "isBalanced": True, "types": {"structural": "query"}}
        (g / "questions" / f"{split}_balanced_questions.json").write_text(json.dumps(recs))
    # COCO-QA: train images from train2014, test images from val2014 (both in images/)
    c = root / "cocoqa"
    for split, prefix, base in (("train", "COCO_train2014_", 500), ("test", "COCO_val2014_", 600)):
        (c / split).mkdir(parents=True)
        ids = [base + i for i in range(n)]
        for i, image_id in enumerate(ids):
            write_image(c / "images" / f"{prefix}{image_id:012d}.jpg", names[i % 4])
        (c / split / "questions.txt").write_text("".join("what is the color of the picture\n" for _ in ids))
        (c / split / "answers.txt").write_text("".join(f"{names[i % 4]}\n" for i in range(n)))
        (c / split / "img_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        (c / split / "types.txt").write_text("".join("2\n" for _ in ids))
    # AQUA: one knowledge question per split that the default reader skips
    q = root / "aqua"
    q.mkdir(parents=True)
    for split in ("train", "val", "test"):
        recs = []
        for i in range(n):
            img = f"{1000 + i}-{split}painting.jpg"
            write_image(q / "Images" / img, names[i % 4])
            recs.append({"image": img, "question": "what colour dominates the painting", "answer": names[i % 4],
                         "need_external_knowledge": False})
        recs.append({"image": recs[0]["image"], "question": "who painted this in 1520", "answer": "Raphael",
                     "need_external_knowledge": True})
        (q / f"{split}.json").write_text(json.dumps(recs))
    # CLOVE: function stage "attribute", scene stage "a"; vg and textvqa images
    cl = root / "clove"
    for rel in ("function/functional_attribute", "scene/scene_a#ShopAndDining"):
        (cl / rel).parent.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            recs = []
            for i in range(n):
                source = "textvqa" if i == 0 else "vg"
                image_id = f"{rel[0]}{split[0]}{i}"
                folder = cl / "textvqa" if source == "textvqa" else cl / "vg" / "image"
                write_image(folder / f"{image_id}.jpg", names[i % 4])
                recs.append({"answer": names[i % 4], "answers": [names[i % 4]] * 10, "image_id": image_id,
                             "image_source": source, "question": "What color is the scene?",
                             "question_id": f"g{split}{i}", "set_name": split, "stage": "attribute"})
            (cl / f"{rel}_{split}.json").write_text(json.dumps(recs))
    # a user's own VQAv2-format folder
    f = root / "mine"
    f.mkdir(parents=True)
    own = lambda sub, i: f"{i}.png"  # noqa: E731
    for split, start in (("train", 1), ("val", 300)):
        items = colour_items(start, n)
        write_vqa(f, f"{split}_questions.json", f"{split}_annotations.json", "images", split, own,
                  [(f"img{i}", c, qq, aa) for i, c, qq, aa in items])
