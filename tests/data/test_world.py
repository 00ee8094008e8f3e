import numpy as np
import pytest

from fedvl.data.benchmarks import build_benchmark
from fedvl.data.world import ANSWERS, COLORS, COLUMNS, COUNTS, DOMAINS, FUNCTIONS, SHAPES, SIZES, YESNO, ask, make_split, random_scene
from fedvl.schema import DataConfig


def test_same_seed_same_pixels_and_questions():
    a = make_split("photo", 6, 2, 64, FUNCTIONS, seed=3)
    b = make_split("photo", 6, 2, 64, FUNCTIONS, seed=3)
    c = make_split("photo", 6, 2, 64, FUNCTIONS, seed=4)
    assert np.array_equal(a.images, b.images)
    assert [s.question for s in a.samples] == [s.question for s in b.samples]
    assert not np.array_equal(a.images, c.images)


def test_shapes_and_dtypes():
    s = make_split("sketch", 5, 3, 96, FUNCTIONS, seed=0)
    assert s.images.shape == (5, 96, 96, 3) and s.images.dtype == np.uint8
    assert len(s.samples) == 15
    assert all(0 <= smp.image < 5 for smp in s.samples)


@pytest.mark.parametrize("function,answers", [
    ("attribute", set(COLORS) | set(SIZES)),
    ("object", set(SHAPES)),
    ("counting", set(COUNTS)),
    ("relation", set(COLUMNS) | set(YESNO)),
    ("logic", set(YESNO)),
])
def test_label_sets_per_function(function, answers):
    rng = np.random.default_rng(0)
    seen = {ask(random_scene(rng), function, rng)[1] for _ in range(400)}
    assert seen <= answers
    assert len(seen) >= 2  # the function is not constant
    assert seen <= set(ANSWERS)


def test_answers_are_true_of_the_scene():
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = random_scene(rng)
        q, a = ask(scene, "counting", rng)
        noun = q.removeprefix("how many ").removesuffix(" are there?")
        if noun.endswith(" objects"):
            assert int(a) == sum(o.color == noun.split()[0] for o in scene)
        else:
            assert int(a) == sum(o.shape + "s" == noun for o in scene)


def test_domains_render_differently():
    imgs = {d: make_split(d, 3, 1, 64, FUNCTIONS, seed=0).images.astype(float) for d in DOMAINS}
    # same seed -> same scenes; the style alone must change the pixels substantially
    assert np.abs(imgs["photo"] - imgs["sketch"]).mean() > 20
    assert imgs["night"].mean() < imgs["sketch"].mean() - 100


def test_domain_benchmark_one_domain_per_client():
    cfg = DataConfig(num_clients=3, train_images=4, test_images=3, image_size=64)
    clients = build_benchmark(cfg, seed=0)
    assert [c.client_id for c in clients] == ["c0-photo", "c1-sketch", "c2-night"]
    assert [c.train.domain for c in clients] == ["photo", "sketch", "night"]
    assert all(len(c.test.samples) == 3 * cfg.questions_per_image for c in clients)
    # train and test are different images
    assert not np.array_equal(clients[0].train.images[:3], clients[0].test.images)


def test_repartition_dirichlet_keeps_every_sample():
    cfg = DataConfig(num_clients=3, train_images=30, test_images=10, image_size=64, partition="dirichlet",
                     dirichlet_alpha=0.3)
    natural = build_benchmark(DataConfig(num_clients=3, train_images=30, test_images=10, image_size=64), 0)
    skewed = build_benchmark(cfg, 0)
    assert sum(len(c.train.samples) for c in skewed) == sum(len(c.train.samples) for c in natural)
    for c in skewed:  # each sample still points at its own image
        assert all(0 <= s.image < len(c.train.images) for s in c.train.samples)
