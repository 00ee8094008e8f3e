import numpy as np
import pytest

from fedvl.config import load_config
from fedvl.data.benchmarks import build_benchmark
from fedvl.data.world import ANSWERS, COLORS, COUNTS, FUNCTIONS, SCENES, SHAPES, SIZES, Obj, make_split, random_scene
from fedvl.schema import ConfigError, DataConfig


def _small(**kw) -> DataConfig:
    return DataConfig(**{"train_images": 6, "test_images": 3, "questions_per_image": 2, "image_size": 64, **kw})


def _fingerprint(clients):
    return [(c.client_id, c.train.images.tobytes(), c.test.images.tobytes(),
             [(s.image, s.question, s.answer) for s in c.train.samples + c.test.samples]) for c in clients]


@pytest.mark.parametrize("benchmark,n", [("function", 3), ("scene", 3)])
def test_same_seed_same_benchmark(benchmark, n):
    cfg = _small(benchmark=benchmark, num_clients=n)
    assert _fingerprint(build_benchmark(cfg, 5)) == _fingerprint(build_benchmark(cfg, 5))
    assert _fingerprint(build_benchmark(cfg, 5)) != _fingerprint(build_benchmark(cfg, 6))


def test_function_benchmark_one_function_per_client():
    cfg = _small(benchmark="function", num_clients=5, train_images=20)
    clients = build_benchmark(cfg, seed=0)
    assert [c.client_id for c in clients] == [f"c{k}-{fn}" for k, fn in enumerate(FUNCTIONS)]
    answer_sets = []
    for c, fn in zip(clients, FUNCTIONS):
        for split, n_images in ((c.train, cfg.train_images), (c.test, cfg.test_images)):
            assert split.domain == cfg.function_domain  # one shared domain
            assert len(split.images) == n_images and len(split.samples) == n_images * cfg.questions_per_image
            assert {s.function for s in split.samples} == {fn}
        answer_sets.append(frozenset(s.answer for s in c.train.samples))
    # The functions answer from different vocabularies, so no two clients share an answer set.
    assert len(set(answer_sets)) == len(answer_sets)


# Written out by hand (not read from SCENES) so the test checks the rule, not the table.
RULES = {
    "sparse": lambda sc: len(sc) == 1,
    "crowded": lambda sc: 3 <= len(sc) <= 4,
    "left": lambda sc: all(o.col in (0, 1) for o in sc),
    "warm": lambda sc: all(o.color in ("red", "orange", "yellow") for o in sc),
    "cool": lambda sc: all(o.color in ("green", "blue", "purple") for o in sc),
    "round": lambda sc: all(o.shape in ("circle", "diamond") for o in sc),
}


def test_scene_benchmark_clients_obey_their_composition():
    assert list(SCENES) == list(RULES)
    cfg = _small(benchmark="scene", num_clients=6, train_images=15)
    clients = build_benchmark(cfg, seed=0)
    ids = [c.client_id for c in clients]
    assert ids == [f"c{k}-{name}" for k, name in enumerate(SCENES)] and len(set(ids)) == 6
    for c, name in zip(clients, SCENES):
        for split in (c.train, c.test):
            assert split.domain == cfg.scene_domain
            assert all(RULES[name](sc) for sc in split.scenes), name
            assert all(len({(o.row, o.col) for o in sc}) == len(sc) for sc in split.scenes)  # one object per cell
            assert all(s.answer in ANSWERS for s in split.samples)
        assert len({s.function for s in c.train.samples}) >= 3  # questions come from all functions
    # The rules actually change the scenes: e.g. crowded has more objects than sparse.
    n_objects = {c.client_id.split("-")[1]: np.mean([len(sc) for sc in c.train.scenes]) for c in clients}
    assert n_objects["crowded"] > n_objects["sparse"] == 1


@pytest.mark.parametrize("name", list(SCENES))
def test_compositions_keep_every_function_answerable(name):
    rng = np.random.default_rng(0)
    for max_objects in (1, 4, 9):  # max_objects=9 is capped (6 cells for "left", counts <= 4), not an error
        split = make_split("cartoon", 8, 5, 32, FUNCTIONS, seed=max_objects, max_objects=max_objects, composition=name)
        assert all(RULES[name](sc) and len(sc) <= 4 for sc in split.scenes)
        assert all(s.answer in ANSWERS for s in split.samples)
    scenes = [random_scene(rng, 1, 4, name) for _ in range(200)]
    assert all(o.size in SIZES and o.shape in SHAPES and o.color in COLORS for sc in scenes for o in sc)
    counts = {str(sum(o.color == c for o in sc)) for sc in scenes for c in COLORS}
    assert counts <= set(COUNTS)


def _reference_random_scene(rng, min_objects=1, max_objects=4):
    # The implementation before compositions existed: composition=None must draw exactly this.
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    return [Obj(shape=str(rng.choice(SHAPES)), color=str(rng.choice(list(COLORS))), size=str(rng.choice(SIZES)),
                row=int(c) // 3, col=int(c) % 3) for c in cells]


def test_no_composition_keeps_the_rng_stream():
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    for i in range(300):
        lo, hi = 1 + i % 2, 2 + i % 8
        assert random_scene(a, lo, hi) == _reference_random_scene(b, lo, hi)
    assert a.random() == b.random()  # and left both generators in the same state


@pytest.mark.parametrize("override,message", [
    (["data.benchmark=function", "data.num_clients=6"], "data.num_clients must be <= 5, got 6"),
    (["data.benchmark=scene", "data.num_clients=7"], "data.num_clients must be <= 6, got 7"),
    (["data.benchmark=function", "data.function_domain=mars"], "data.function_domain: unknown domain 'mars'"),
    (["data.benchmark=scene", "data.scene_domain=mars"], "data.scene_domain: unknown domain 'mars'"),
    (["data.benchmark=tasks"], "data.benchmark: 'tasks' is not one of"),
])
def test_benchmark_config_errors(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, override)
    assert "\n" not in str(e.value)


def test_function_and_scene_need_no_domain_list():
    # 5 / 6 clients with the default 4-entry data.domains: only the domain benchmark needs one per client.
    assert load_config(None, ["data.benchmark=function", "data.num_clients=5"]).data.num_clients == 5
    assert load_config(None, ["data.benchmark=scene", "data.num_clients=6"]).data.num_clients == 6


@pytest.mark.parametrize("benchmark,n", [("function", 5), ("scene", 6)])
def test_dirichlet_repartition(benchmark, n):
    natural = build_benchmark(_small(benchmark=benchmark, num_clients=n), 0)
    skewed = build_benchmark(_small(benchmark=benchmark, num_clients=n, partition="dirichlet", dirichlet_alpha=0.3), 0)
    assert [c.client_id for c in skewed] == [f"c{k}-dirichlet" for k in range(n)]
    for which in ("train", "test"):
        assert sum(len(getattr(c, which).samples) for c in skewed) == sum(len(getattr(c, which).samples) for c in natural)
    for c in skewed:  # each sample still points at its own image
        assert all(0 <= s.image < len(c.train.images) for s in c.train.samples)
        assert all(0 <= s.image < len(c.test.images) for s in c.test.samples)
