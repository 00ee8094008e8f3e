"""Every reader on fixture files in its source's exact format (tests/data/conftest.py)."""

import json

import numpy as np
import pytest

from fedvl.data.real import SOURCES, build_real_benchmark, check_sources, parse_source
from fedvl.data.real.base import DatasetError
from fedvl.data.real.splits import make_split
from fedvl.schema import ConfigError, DataConfig


def read(root, spec, split):
    fmt, arg = parse_source(spec)
    return SOURCES[fmt].read(root, arg, split, DataConfig())


@pytest.mark.parametrize("spec, split, n, image_suffix", [
    ("vqav2", "train", 8, "COCO_train2014_000000000001.jpg"),
    ("vqav2", "val", 8, "COCO_val2014_000000000100.jpg"),
    ("abstract", "train", 8, "abstract_v002_train2015_000000000001.png"),
    ("vizwiz", "val", 8, "val/VizWiz_val_00000000.jpg"),
    ("gqa", "train", 8, "images/t2350000.jpg"),
    ("cocoqa", "test", 8, "COCO_val2014_000000000600.jpg"),
    ("aqua", "test", 8, "Images/1000-testpainting.jpg"),  # the knowledge question is skipped
    ("clove:attribute", "train", 8, "textvqa/ft0.jpg"),
    ("clove:a", "val", 8, "textvqa/sv0.jpg"),
    ("folder:mine", "train", 8, "images/img1.png"),
])
def test_each_format_parses(real_root, spec, split, n, image_suffix):
    qs = read(real_root, spec, split)
    assert len(qs) == n
    assert str(qs[0].image).endswith(image_suffix) and qs[0].image.is_file()
    assert qs[0].answers[0] == "red" and qs[1].answers[0] == "green"
    multi = spec.split(":")[0] in ("vqav2", "abstract", "vizwiz", "folder", "clove")
    assert len(qs[0].answers) == (10 if multi else 1)
    assert "colo" in qs[0].question.lower()


def test_aqua_knowledge_questions_are_opt_in(real_root):
    fmt, arg = parse_source("aqua")
    with_kq = SOURCES[fmt].read(real_root, arg, "train", DataConfig(aqua_knowledge=True))
    assert len(with_kq) == 9 and with_kq[-1].answers == ["raphael"]  # normalised (lower case)


def test_vqa_annotations_are_normalised_and_joined_by_question_id(real_root):
    ann = real_root / "vqav2" / "v2_mscoco_train2014_annotations.json"
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["answers"] = [{"answer": "Two."}] * 4 + [{"answer": "three"}] * 6
    doc["annotations"].reverse()  # order must not matter: the join is on question_id
    ann.write_text(json.dumps(doc))
    qs = read(real_root, "vqav2", "train")
    assert qs[0].answers == ["2"] * 4 + ["3"] * 6


def test_split_labels_scores_and_vocab(real_root):
    qs = read(real_root, "vqav2", "train")
    qs[0].answers = ["red"] * 2 + ["pink"] * 8  # majority "pink" is outside the vocabulary below
    vocab = ["red", "green", "blue"]
    test = make_split("vqav2", qs, vocab, keep_unlabelled=True)
    train = make_split("vqav2", qs, vocab, keep_unlabelled=False)
    assert test.labels[0] == -1 and len(test) == 8
    assert len(train) == 5  # q0 (now pink) and the two white questions drop out of training
    assert test.score_idx[0, 0] == 0 and test.score_val[0, 0] == pytest.approx(0.6)  # 2 of 10 said red
    assert test.labels[1:4].tolist() == [1, 2, -1]  # green, blue, white
    assert len(test.images) == 8 and np.array_equal(test.image_index, np.arange(8))


def test_benchmark_builds_one_client_per_source_with_own_vocab(real_root):
    cfg = DataConfig(benchmark="real", root=str(real_root), clients=["vqav2", "cocoqa", "clove:attribute"],
                     answer_vocab=2)
    clients = build_real_benchmark(cfg, seed=0)
    assert [c.client_id for c in clients] == ["c0-vqav2", "c1-cocoqa", "c2-clove-attribute"]
    for c in clients:
        assert c.train.vocab == ["blue", "green"]  # 2 each of red/green/blue/white: top-2 alphabetical
        assert set(c.train.labels.tolist()) <= {0, 1} and len(c.train) == 4
        assert len(c.test) == 8 and (c.test.labels == -1).sum() == 4
    shared = build_real_benchmark(DataConfig(benchmark="real", root=str(real_root), clients=["gqa", "aqua"],
                                             vocab_scope="shared", answer_vocab=3), seed=0)
    assert shared[0].train.vocab == shared[1].train.vocab == ["blue", "green", "red"]


def test_question_caps_are_seeded_samples(real_root):
    cfg = DataConfig(benchmark="real", root=str(real_root), clients=["gqa"], max_train_questions=3,
                     max_test_questions=5)
    a, b = build_real_benchmark(cfg, 0)[0], build_real_benchmark(cfg, 0)[0]
    assert len(a.test) == 5 and a.test.questions == b.test.questions
    assert len(a.train) <= 3


def test_clear_errors(real_root):
    with pytest.raises(DatasetError, match="not a directory"):
        check_sources(DataConfig(benchmark="real", root=str(real_root / "nope")))
    with pytest.raises(DatasetError, match="unknown source format 'vqa3'"):
        parse_source("vqa3")
    with pytest.raises(DatasetError, match="needs an argument"):
        parse_source("clove")
    with pytest.raises(DatasetError, match="unknown CLOVE stage"):
        read(real_root, "clove:zzz", "train")
    (real_root / "gqa" / "images" / "t2350003.jpg").unlink()
    with pytest.raises(DatasetError, match="t2350003.jpg not found"):
        build_real_benchmark(DataConfig(benchmark="real", root=str(real_root), clients=["gqa"]), 0)
    (real_root / "vizwiz" / "Annotations" / "train.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read(real_root, "vizwiz", "train")
    (real_root / "cocoqa" / "train" / "types.txt").write_text("2\n")
    with pytest.raises(DatasetError, match="one line per question"):
        read(real_root, "cocoqa", "train")
    assert issubclass(DatasetError, ConfigError)  # the CLI prints it on one line, exit 2
