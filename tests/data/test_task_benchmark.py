"""Task benchmark: one task per client (vqa, itm, entail), each with its own head and label space."""

import re

import numpy as np
import pytest
import torch

from fedvl.data.benchmarks import build_benchmark
from fedvl.data.features import EncodedSplit
from fedvl.data.world import ANSWERS, COLORS, SHAPES, TASKS, caption, random_scene, statement
from fedvl.models.backbones import build_model
from fedvl.models.params import param_group
from fedvl.report.history import History
from fedvl.schema import ConfigError, DataConfig, ModelConfig
from fedvl.transport.inprocess import build_federation, simulate
from fedvl.rounds.state import ClientStateStore

# Written out by hand so the test checks the rule, not the generator's tables.
OBJ = re.compile(r"(small|large) (\w+) (\w+)")
NON_VISUAL_WORDS = ("made of", "heavy", "light as", "warm", "painted", "new", "belongs", "smells", "bought")
PLURALS = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
           "crosses": "cross"}
COLUMN = {"left": 0, "middle": 1, "right": 2}


def _scenes(n=200, seed=0, max_objects=4):
    rng = np.random.default_rng(seed)
    return rng, [random_scene(rng, 1, max_objects) for _ in range(n)]


def _objects(scene):
    return sorted((o.size, o.color, o.shape) for o in scene)


def test_task_label_lists():
    assert TASKS["vqa"] is ANSWERS  # 23 answers
    assert TASKS["itm"] == ["match", "mismatch"]
    assert TASKS["entail"] == ["entailed", "contradicted", "unknown"]


def test_itm_captions_list_the_scene_or_change_one_attribute():
    rng, scenes = _scenes()
    labels = []
    for scene in scenes:
        text, label = caption(scene, rng)
        listed = sorted(OBJ.findall(text))
        assert text.startswith("a ") and len(listed) == len(scene)
        if label == "match":
            assert listed == _objects(scene)
        else:
            assert label == "mismatch"
            # exactly one attribute of one object changed: a one-element symmetric difference
            # whose two objects differ in exactly one of size, colour, shape
            truth = _objects(scene)
            extra = [x for x in listed if listed.count(x) > truth.count(x)]
            missing = [x for x in truth if truth.count(x) > listed.count(x)]
            assert len(set(extra)) == 1 and len(set(missing)) == 1, (text, scene)
            assert sum(a != b for a, b in zip(extra[0], missing[0])) == 1
        labels.append(label)
    share = labels.count("match") / len(labels)
    assert 0.4 <= share <= 0.6


def _decide(text, scene):
    """True / False for a visual statement, by hand-written parsing."""
    objs = _objects(scene)
    if m := re.fullmatch(r"there is a (small|large) (\w+) (\w+)\.", text):
        return m.groups() in objs
    if m := re.fullmatch(r"the number of (\w+) objects is (\d)\.", text):
        assert m.group(1) in COLORS
        return sum(o.color == m.group(1) for o in scene) == int(m.group(2))
    if m := re.fullmatch(r"the number of (\w+) is (\d)\.", text):
        shape = PLURALS[m.group(1)]
        return sum(o.shape == shape for o in scene) == int(m.group(2))
    if m := re.fullmatch(r"the (\w+) (\w+) is in the (left|middle|right) column\.", text):
        color, shape, col = m.groups()
        matches = [o for o in scene if o.color == color and o.shape == shape]
        assert len(matches) == 1  # only uniquely identified objects get a column statement
        return matches[0].col == COLUMN[col]
    raise AssertionError(f"unexpected statement {text!r}")


def test_entail_statements_are_decided_by_the_scene_or_not_visual():
    rng, scenes = _scenes(300, seed=1)
    seen = set()
    for scene in scenes:
        text, label = statement(scene, rng)
        seen.add(label)
        nonvisual = any(w in text for w in NON_VISUAL_WORDS)
        if label == "unknown":
            assert nonvisual, text
            # about an object that is in the scene (by colour, and shape if named)
            m = re.match(r"the (\w+) (\w+)", text)
            assert m.group(1) in {o.color for o in scene}
            if m.group(2) in SHAPES:
                assert (m.group(1), m.group(2)) in {(o.color, o.shape) for o in scene}
        else:
            assert not nonvisual, text
            assert _decide(text, scene) == (label == "entailed"), (text, label, scene)
    assert seen == {"entailed", "contradicted", "unknown"}


def test_task_benchmark_clients_and_labels():
    cfg = DataConfig(benchmark="task", num_clients=3, train_images=10, test_images=4, questions_per_image=2,
                     image_size=64)
    clients = build_benchmark(cfg, seed=0)
    assert [c.client_id for c in clients] == ["c0-vqa", "c1-itm", "c2-entail"]
    for c, task in zip(clients, TASKS):
        for split in (c.train, c.test):
            assert split.task == task and split.domain == cfg.task_domain
            labels = split.labels
            assert labels.min() >= 0 and labels.max() < len(TASKS[task])
            assert [TASKS[task][i] for i in labels] == [s.answer for s in split.samples]
    # same seed, same data
    again = build_benchmark(cfg, seed=0)
    assert all(np.array_equal(a.train.images, b.train.images) and a.train.samples == b.train.samples
               for a, b in zip(clients, again))


def test_model_has_one_head_per_task():
    model = build_model(ModelConfig(name="tiny", peft="head"), len(ANSWERS), 64, seed=0,
                        tasks=("vqa", "itm", "entail"))
    assert list(model.head) == ["vqa", "itm", "entail"]
    sizes = {t: model.head[t].mlp[-1].out_features for t in model.head}
    assert sizes == {"vqa": len(ANSWERS), "itm": 2, "entail": 3}
    assert {param_group(n) for n, _ in model.named_parameters() if n.startswith("head.")} == {"head"}
    ids = torch.randint(1000, 2000, (5, 6))
    mask = torch.ones_like(ids)
    feats = torch.randn(5, model.feature_channels, 2, 2)
    with torch.no_grad():
        assert model(ids, mask, feats, task="itm").shape == (5, 2)
        assert model(ids, mask, feats, task="entail").shape == (5, 3)
        assert model(ids, mask, feats).shape == (5, len(ANSWERS))  # default task: vqa
    # a vqa-only model (every other benchmark) is initialised exactly as a task model's vqa part
    plain = build_model(ModelConfig(name="tiny", peft="head"), len(ANSWERS), 64, seed=0)
    assert list(plain.head) == ["vqa"]
    p = dict(plain.named_parameters())
    for n, t in model.named_parameters():
        if n in p:
            assert torch.equal(p[n], t), n


def test_encoded_split_concat_rejects_mixed_tasks():
    def part(task):
        return EncodedSplit(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long),
                            torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                            torch.zeros(1, 4, 1, 1), task=task)

    assert EncodedSplit.concat([part("itm"), part("itm")]).task == "itm"
    with pytest.raises(ValueError, match="different tasks"):
        EncodedSplit.concat([part("itm"), part("vqa")])


@pytest.mark.parametrize("name", ["fedavg", "feddat"])
def test_task_benchmark_simulates_with_local_heads(name, tiny_cfg, tmp_path):
    cfg = tiny_cfg("data.benchmark=task", "data.num_clients=3", f"algorithm.name={name}")
    fed = build_federation(cfg, status=lambda s: None)
    assert list(fed.model.head) == ["vqa", "itm", "entail"]
    heads = [n for n in fed.trainable if param_group(n) == "head"]
    assert heads and set(heads) <= set(fed.local) and not set(heads) & set(fed.travel)
    assert fed.travel  # adapters still travel
    assert {param_group(n) for n in fed.travel} <= {"adapter.shared", "connector"}
    run_dir = tmp_path / name
    run_dir.mkdir()
    final = simulate(fed, run_dir, History(run_dir))
    store = ClientStateStore(run_dir / "client_states")
    for cid, data in fed.test.items():
        task = cid.split("-", 1)[1]
        assert data.task == task
        state = store.load(cid)
        for n in heads:
            moved = not torch.equal(state[n], fed.init_local[n])
            assert moved == n.startswith(f"head.{task}."), (cid, n)
        m = final["eval"][cid]
        assert m["n"] == len(data) and 0.0 <= m["acc"] <= 1.0
    assert len(History.read(run_dir)) == 2


@pytest.mark.parametrize("extra,message", [
    (["data.num_clients=4"], "data.num_clients must be <= 3"),
    (["data.num_clients=3", "algorithm.name=centralized"], "undefined on data.benchmark=task"),
    (["data.num_clients=3", "data.partition=dirichlet"], "undefined on data.benchmark=task"),
    (["data.num_clients=3", "data.task_domain=mars"], "data.task_domain: unknown domain 'mars'"),
])
def test_task_benchmark_config_errors(extra, message, tiny_cfg):
    with pytest.raises(ConfigError, match=message) as e:
        tiny_cfg("data.benchmark=task", *extra)
    assert "\n" not in str(e.value)
