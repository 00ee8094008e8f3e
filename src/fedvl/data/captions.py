"""The image-caption corpus of VL pretraining: captions and hard negatives.

The public corpus (``fedvl pretrain vl``) renders scenes of the synthetic world
in the ``gallery`` style, which no benchmark client uses, and describes each one
with a caption. A hard negative changes exactly one thing the image decides (a
colour, a shape, a size, a position or a count), so image-text matching can only
be solved by looking. Captions describe; they never ask: no benchmark question
template or answer pairing appears here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedvl.data.world import COLORS, COLUMNS, SHAPES, SIZES, Obj, random_scene, render

ROWS = ["top", "center", "bottom"]
NUMBERS = ["no", "one", "two", "three", "four"]
KINDS = ("scene", "object", "count", "relation")


@dataclass
class CaptionSet:
    """Images of the corpus and, per caption, its image, text and whether it matches."""

    images: np.ndarray  # (N, H, W, 3) uint8
    scenes: list[list[Obj]]
    image: list[int]
    text: list[str]
    match: list[bool]
    kind: list[str]


def _where(o: Obj) -> str:
    return f"at the {ROWS[o.row]} {COLUMNS[o.col]}"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _phrase(o: Obj) -> str:
    return f"{_a(o.size)} {o.color} {o.shape} {_where(o)}"


def _shape_word(shape: str, n: int) -> str:
    return shape if n == 1 else shape + ("es" if shape.endswith("s") else "s")


def _holds(scene: list[Obj], o: Obj) -> bool:
    return any(x == o for x in scene)


def _left_of(scene: list[Obj], a: Obj, b: Obj) -> bool:
    """Whether some object looking like ``a`` (colour, shape) is left of one looking like ``b``."""
    return any(x.color == a.color and x.shape == a.shape and y.color == b.color and y.shape == b.shape
               and x.col < y.col for x in scene for y in scene)


def _changed(o: Obj, scene: list[Obj], rng: np.random.Generator) -> Obj:
    """``o`` with one of colour, shape, size or position changed so that no object of the scene is it."""
    while True:
        attr = ["color", "shape", "size", "cell"][int(rng.integers(4))]
        if attr == "cell":
            free = [c for c in range(9) if all(x.row * 3 + x.col != c for x in scene)]
            if not free:
                continue
            c = int(free[int(rng.integers(len(free)))])
            new = replace(o, row=c // 3, col=c % 3)
        else:
            pool = {"color": list(COLORS), "shape": SHAPES, "size": SIZES}[attr]
            others = [v for v in pool if v != getattr(o, attr)]
            new = replace(o, **{attr: str(others[int(rng.integers(len(others)))])})
        if not _holds(scene, new):
            return new


def describe(scene: list[Obj], kind: str, negative: bool, rng: np.random.Generator,
             count_negatives: str = "uniform") -> str:
    """One caption of ``kind`` for the scene: true, or (``negative``) false in exactly one detail.

    ``count_negatives``: how a false count caption picks its number. ``uniform``: any other number
    (the shipped base's corpus; true counts are mostly "no" / "one", so the number alone gives the
    answer away). ``matched``: the number is the drawn colour's or shape's true count, and the caption
    names another one whose count differs, so true and false captions state numbers alike."""
    objs = [scene[i] for i in rng.permutation(len(scene))]
    if kind == "relation":
        pairs = [(a, b) for a in objs for b in objs if a.col < b.col]
        if not pairs:
            kind = "object"  # everything in one column: no left/right to state
        else:
            a, b = pairs[int(rng.integers(len(pairs)))]
            for _ in range(8 if negative else 0):
                # the relation flipped, or one of the two objects changed; kept only if no other
                # pair of the scene makes the changed caption true
                x, y = (b, a) if rng.random() < 0.5 else (_changed(a, scene, rng), b)
                if not _left_of(scene, x, y):
                    return f"{_a(x.color)} {x.shape} left of {_a(y.color)} {y.shape}"
            if not negative:
                return f"{_a(a.color)} {a.shape} left of {_a(b.color)} {b.shape}"
            kind = "object"
    if kind == "scene":
        if negative:
            i = int(rng.integers(len(objs)))
            objs[i] = _changed(objs[i], scene, rng)
        parts = [_phrase(o) for o in objs]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if kind == "object":
        o = objs[0]
        return f"there is {_phrase(_changed(o, scene, rng) if negative else o)}"
    if kind == "count":
        by_color = rng.random() < 0.5
        attr, pool = ("color", list(COLORS)) if by_color else ("shape", SHAPES)
        v = str(rng.choice(pool))
        n = sum(getattr(x, attr) == v for x in scene)
        if by_color:
            what = lambda k: f"{v} object" + ("" if k == 1 else "s")  # noqa: E731
        else:
            what = lambda k: _shape_word(v, k)  # noqa: E731
        if negative and count_negatives == "matched":
            # the number is the true count of the drawn value (as a true caption states it); the caption
            # names another value whose count differs: numbers of true and false captions are alike
            wrong = [u for u in pool if sum(getattr(x, attr) == u for x in scene) != n]
            u = str(wrong[int(rng.integers(len(wrong)))])
            if by_color:
                return f"{'there is' if n == 1 else 'there are'} {NUMBERS[n]} {u} object" + ("" if n == 1 else "s")
            return f"{'there is' if n == 1 else 'there are'} {NUMBERS[n]} {_shape_word(u, n)}"
        if negative:
            n = [k for k in range(len(NUMBERS)) if k != n][int(rng.integers(len(NUMBERS) - 1))]
        return f"{'there is' if n == 1 else 'there are'} {NUMBERS[n]} {what(n)}"
    raise ValueError(f"unknown caption kind {kind!r}")


def make_corpus(n_images: int, captions_per_image: int, image_size: int, seed: int,
                max_objects: int = 4, domain: str = "gallery", count_negatives: str = "uniform") -> CaptionSet:
    """``n_images`` scenes, each with ``captions_per_image`` captions, half of them hard negatives."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, 1, max_objects) for _ in range(n_images)]
    images = (np.stack([render(s, domain, image_size, rng) for s in scenes]) if scenes
              else np.zeros((0, image_size, image_size, 3), np.uint8))
    out = CaptionSet(images=images, scenes=scenes, image=[], text=[], match=[], kind=[])
    for i, scene in enumerate(scenes):
        for _ in range(captions_per_image):
            negative = bool(rng.random() < 0.5)
            out.kind.append(KINDS[int(rng.integers(len(KINDS)))])  # as drawn (a relation may read as an object)
            out.text.append(describe(scene, out.kind[-1], negative, rng, count_negatives))
            out.image.append(i)
            out.match.append(not negative)
    return out
