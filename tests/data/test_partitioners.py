import numpy as np
import pytest

from fedvl.data.partitioners import dirichlet_label_skew, quantity_skew


def _labels(n=600, k=6, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


def test_dirichlet_is_a_partition_and_deterministic():
    y = _labels()
    parts = dirichlet_label_skew(y, 5, alpha=0.5, seed=1)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(len(y)))
    again = dirichlet_label_skew(y, 5, alpha=0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def _mean_label_entropy(parts, y, k=6):
    ents = []
    for p in parts:
        h = np.bincount(y[p], minlength=k) / len(p)
        h = h[h > 0]
        ents.append(-(h * np.log(h)).sum())
    return float(np.mean(ents))


def test_smaller_alpha_means_stronger_label_skew():
    y = _labels(3000)
    skewed = _mean_label_entropy(dirichlet_label_skew(y, 5, 0.1, seed=0), y)
    mild = _mean_label_entropy(dirichlet_label_skew(y, 5, 100.0, seed=0), y)
    assert mild > np.log(6) - 0.05  # near uniform over 6 classes
    assert skewed < mild - 0.4


def test_quantity_skew_sizes():
    parts = quantity_skew(1000, 4, alpha=0.3, seed=2, min_size=10)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 1000 and min(sizes) >= 10
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    assert max(sizes) > 2 * min(sizes)  # actually skewed at alpha 0.3 for this seed


def test_quantity_skew_too_few_samples():
    with pytest.raises(ValueError):
        quantity_skew(5, 4, 1.0, 0, min_size=2)
