"""The synthetic vision-language world: seeded scenes, rendered images, template questions.

A scene is a handful of objects (shape, colour, size, grid cell) on a
background whose *style* is the visual domain. Questions come from templates
grouped by *function* (attribute, object, counting, relation, logic) so the
Function benchmark can give each client one function, as FedDAT's CLOVE-function.
A scene *composition* (:data:`SCENES`) restricts what scenes contain (how many
objects, which colours, shapes or cells) so the Scene benchmark can give each
client one kind of scene, as FedDAT's CLOVE-scene.
Everything is a pure function of a seed: the same seed gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ["circle", "square", "triangle", "diamond", "cross"]
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SIZES = ["small", "large"]
COLUMNS = ["left", "middle", "right"]
COUNTS = ["0", "1", "2", "3", "4"]
YESNO = ["yes", "no"]
FUNCTIONS = ["attribute", "object", "counting", "relation", "logic"]

# One global answer vocabulary: every client's head speaks it, so FedAvg of the
# head is meaningful. Per-client answer *distributions* still differ.
ANSWERS: list[str] = list(COLORS) + SHAPES + SIZES + COLUMNS + COUNTS + YESNO
ANSWER_INDEX = {a: i for i, a in enumerate(ANSWERS)}

# The Task benchmark (FedDAT's VQAv2 / NLVR2 / SNLI-VE style): each task has its
# own head and its own label space. A split's labels index its task's list.
TASKS: dict[str, list[str]] = {
    "vqa": ANSWERS,
    "itm": ["match", "mismatch"],
    "entail": ["entailed", "contradicted", "unknown"],
}
TASK_INDEX = {t: {a: i for i, a in enumerate(labels)} for t, labels in TASKS.items()}

# Properties an image cannot show: the subject of every "unknown" entailment statement.
NONVISUAL = ["is made of wood", "is made of metal", "is made of glass", "is made of plastic", "is heavy",
             "is light as a feather", "is warm to the touch", "was painted yesterday", "is brand new",
             "belongs to a child", "smells of lemons", "was bought in a shop"]


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    row: int
    col: int


@dataclass(frozen=True)
class DomainStyle:
    """How a domain draws a scene: what makes the clients' images differ."""

    background: str  # "noise", "flat", "white", "dark", "stripes"
    outline_only: bool = False
    brightness: float = 1.0
    noise: float = 0.0
    blur: float = 0.0
    colour_jitter: int = 0


DOMAINS: dict[str, DomainStyle] = {
    "photo": DomainStyle("noise", noise=18.0, blur=0.6, colour_jitter=20),
    "cartoon": DomainStyle("flat"),
    "sketch": DomainStyle("white", outline_only=True),
    "night": DomainStyle("dark", brightness=0.55, noise=10.0, colour_jitter=10),
    "painting": DomainStyle("stripes", blur=1.0, colour_jitter=35),
    "source": DomainStyle("flat", colour_jitter=5),  # the public domain (FedMMKT pretraining)
    # the image-caption corpus of VL pretraining (fedvl.data.captions): a style no benchmark client uses
    "gallery": DomainStyle("gradient", noise=6.0, blur=0.3, colour_jitter=15),
}


@dataclass(frozen=True)
class Composition:
    """What a scene may contain: the Scene benchmark's per-client shift.

    Every field only narrows the default world, so all question templates stay
    answerable and every answer stays inside :data:`ANSWERS`.
    """

    objects: tuple[int, int] | None = None
    """Inclusive range of the object count; None -> the caller's (min_objects, max_objects)."""
    shapes: tuple[str, ...] = tuple(SHAPES)
    colors: tuple[str, ...] = tuple(COLORS)
    columns: tuple[int, ...] = (0, 1, 2)
    """Grid columns objects may occupy (indices into COLUMNS)."""


# Six compositions that differ in count, layout, palette and shape, one per
# Scene-benchmark client. random_scene caps composed scenes at 4 objects so
# counting answers stay in COUNTS whatever max_objects is.
SCENES: dict[str, Composition] = {
    "sparse": Composition(objects=(1, 1)),
    "crowded": Composition(objects=(3, 4)),
    "left": Composition(columns=(0, 1)),
    "warm": Composition(colors=("red", "orange", "yellow")),
    "cool": Composition(colors=("green", "blue", "purple")),
    "round": Composition(shapes=("circle", "diamond")),
}
_ANY_SCENE = Composition()


@dataclass
class Sample:
    image: int
    question: str
    answer: str
    function: str


@dataclass
class Split:
    """Images (uint8, N x H x W x 3) and the questions that refer to them."""

    domain: str
    images: np.ndarray
    scenes: list[list[Obj]]
    samples: list[Sample] = field(default_factory=list)
    task: str = "vqa"
    """Which label list of :data:`TASKS` the samples' answers index."""

    @property
    def labels(self) -> np.ndarray:
        index = TASK_INDEX[self.task]
        return np.array([index[s.answer] for s in self.samples], dtype=np.int64)


# ------------------------------------------------------------------ scenes


def random_scene(
    rng: np.random.Generator,
    min_objects: int = 1,
    max_objects: int = 4,
    composition: str | None = None,
) -> list[Obj]:
    """A random scene; ``composition`` names a rule in :data:`SCENES` that narrows it.

    With ``composition=None`` the draws are exactly those of the unrestricted
    world (same RNG calls on the same populations), so existing seeds and the
    feature cache keyed on their images stay valid.
    """
    rule = _ANY_SCENE if composition is None else SCENES[composition]
    lo, hi = rule.objects or (min_objects, max_objects)
    cells = np.array([c for c in range(9) if c % 3 in rule.columns])
    if composition is not None:
        # Fit the rule's cells, and keep every count answerable: with a narrowed
        # palette or shape set, 5+ objects could force a count beyond COUNTS.
        hi = min(hi, len(cells), int(COUNTS[-1]))
        lo = min(lo, hi)
    n = int(rng.integers(lo, hi + 1))
    chosen = rng.choice(cells, size=n, replace=False)
    return [
        Obj(
            shape=str(rng.choice(rule.shapes)),
            color=str(rng.choice(rule.colors)),
            size=str(rng.choice(SIZES)),
            row=int(c) // 3,
            col=int(c) % 3,
        )
        for c in chosen
    ]


def _background(style: DomainStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    if style.background == "noise":
        base = rng.normal(128, 30, size=(size // 8, size // 8, 3)).clip(0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR), dtype=np.float32)
    elif style.background == "flat":
        tone = rng.integers(190, 240, size=3)
        img = np.ones((size, size, 3), np.float32) * tone
    elif style.background == "white":
        img = np.full((size, size, 3), 250.0, np.float32)
    elif style.background == "dark":
        img = np.full((size, size, 3), 25.0, np.float32) + rng.integers(0, 20, size=3)
    elif style.background == "stripes":
        a, b = rng.integers(120, 230, size=3), rng.integers(120, 230, size=3)
        period = int(rng.integers(6, 14))
        yy, xx = np.mgrid[0:size, 0:size]
        mask = (((xx + yy) // period) % 2).astype(np.float32)[..., None]
        img = mask * a + (1 - mask) * b
    elif style.background == "gradient":
        a, b = rng.integers(90, 250, size=3), rng.integers(90, 250, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = ((np.cos(angle) * xx + np.sin(angle) * yy) - min(0, np.cos(angle)) - min(0, np.sin(angle)))
        t = (t / (abs(np.cos(angle)) + abs(np.sin(angle))))[..., None].astype(np.float32)
        img = t * a + (1 - t) * b
    else:
        raise ValueError(f"unknown background {style.background!r}")
    return img


def render(scene: list[Obj], domain: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one scene in a domain's style -> uint8 (size, size, 3)."""
    style = DOMAINS[domain]
    canvas = Image.fromarray(_background(style, size, rng).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    cell = size / 3
    for o in scene:
        radius = cell * (0.22 if o.size == "small" else 0.42)
        jitter = cell * 0.5 - radius
        cx = (o.col + 0.5) * cell + rng.uniform(-jitter, jitter) * 0.6
        cy = (o.row + 0.5) * cell + rng.uniform(-jitter, jitter) * 0.6
        rgb = np.array(COLORS[o.color]) + rng.integers(-style.colour_jitter, style.colour_jitter + 1, 3)
        rgb = tuple(int(v) for v in (rgb * style.brightness).clip(0, 255))
        fill, outline, width = (None, rgb, max(2, size // 40)) if style.outline_only else (rgb, (0, 0, 0), 1)
        r = radius
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
        elif o.shape == "square":
            s = r * 0.85
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill, outline=outline, width=width)
        elif o.shape == "triangle":
            pts = [(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)]
            draw.polygon(pts, fill=fill, outline=outline, width=width)
        elif o.shape == "diamond":
            pts = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
            draw.polygon(pts, fill=fill, outline=outline, width=width)
        elif o.shape == "cross":
            t = r * 0.35
            for box in ([cx - r, cy - t, cx + r, cy + t], [cx - t, cy - r, cx + t, cy + r]):
                draw.rectangle(box, fill=fill if fill else None, outline=outline, width=width)
    if style.blur:
        canvas = canvas.filter(ImageFilter.GaussianBlur(style.blur))
    img = np.asarray(canvas, dtype=np.float32)
    if style.noise:
        img = img + rng.normal(0, style.noise, img.shape)
    return img.clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------- questions


def _desc(o: Obj) -> str:
    return f"{o.color} {o.shape}"


def ask(scene: list[Obj], function: str, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, answer) of the given function about the scene.

    Questions only refer to objects they identify uniquely, so every answer is
    determined by the image.
    """
    shapes = [o.shape for o in scene]
    colors = [o.color for o in scene]
    if function == "attribute":
        o = scene[int(rng.integers(len(scene)))]
        if shapes.count(o.shape) == 1 and rng.random() < 0.5:
            return f"what color is the {o.shape}?", o.color
        if [(x.color, x.shape) for x in scene].count((o.color, o.shape)) == 1:
            return f"what size is the {o.color} {o.shape}?", o.size
        # Grid cells are unique, so a cell always identifies one object.
        return f"what color is the object in the {_cell(o)} cell?", o.color
    if function == "object":
        o = scene[int(rng.integers(len(scene)))]
        if colors.count(o.color) == 1:
            return f"what shape is the {o.color} object?", o.shape
        return f"what shape is in the {_cell(o)} cell?", o.shape
    if function == "counting":
        if rng.random() < 0.5:
            c = str(rng.choice(list(COLORS)))
            return f"how many {c} objects are there?", str(colors.count(c))
        s = str(rng.choice(SHAPES))
        return f"how many {s}s are there?", str(shapes.count(s))
    if function == "relation":
        o = scene[int(rng.integers(len(scene)))]
        if [(x.color, x.shape) for x in scene].count((o.color, o.shape)) == 1:
            others = [x for x in scene if x is not o and x.col != o.col]
            if others and rng.random() < 0.5:
                p = others[int(rng.integers(len(others)))]
                if [(x.color, x.shape) for x in scene].count((p.color, p.shape)) == 1:
                    ans = "yes" if o.col < p.col else "no"
                    return f"is the {_desc(o)} left of the {_desc(p)}?", ans
            return f"which column is the {_desc(o)} in?", COLUMNS[o.col]
        col = int(rng.integers(3))
        ans = "yes" if any(x.color == o.color and x.shape == o.shape and x.col == col for x in scene) else "no"
        return f"is there a {_desc(o)} in the {COLUMNS[col]} column?", ans
    if function == "logic":
        a_col, a_shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        b_col, b_shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        if rng.random() < 0.5:  # make "yes" reachable often enough
            o = scene[int(rng.integers(len(scene)))]
            a_col, a_shape = o.color, o.shape
        has_a = (a_col, a_shape) in [(x.color, x.shape) for x in scene]
        has_b = (b_col, b_shape) in [(x.color, x.shape) for x in scene]
        if rng.random() < 0.5:
            return f"is there a {a_col} {a_shape} or a {b_col} {b_shape}?", "yes" if has_a or has_b else "no"
        return f"is there a {a_col} {a_shape} and a {b_col} {b_shape}?", "yes" if has_a and has_b else "no"
    raise ValueError(f"unknown question function {function!r}")


def _cell(o: Obj) -> str:
    return f"{['top', 'center', 'bottom'][o.row]} {COLUMNS[o.col]}"


def make_split(
    domain: str,
    n_images: int,
    questions_per_image: int,
    image_size: int,
    functions: list[str],
    seed: int,
    max_objects: int = 4,
    composition: str | None = None,
) -> Split:
    """Render ``n_images`` scenes of ``domain`` with questions drawn from ``functions``.

    ``composition`` (a key of :data:`SCENES`) restricts what the scenes contain.
    """
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, 1, max_objects, composition) for _ in range(n_images)]
    images = np.stack([render(s, domain, image_size, rng) for s in scenes]) if scenes else np.zeros(
        (0, image_size, image_size, 3), np.uint8)
    split = Split(domain=domain, images=images, scenes=scenes)
    for i, scene in enumerate(scenes):
        for _ in range(questions_per_image):
            fn = functions[int(rng.integers(len(functions)))]
            q, a = ask(scene, fn, rng)
            split.samples.append(Sample(image=i, question=q, answer=a, function=fn))
    return split


# ------------------------------------------------------------ task benchmark
# New functions only: they draw from their own seeds, so the domain / function /
# scene benchmarks' random streams are untouched.


def describe(o: Obj) -> str:
    return f"{o.size} {o.color} {o.shape}"


def _list_phrase(items: list[str]) -> str:
    phrases = [f"a {x}" for x in items]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: list[Obj], rng: np.random.Generator) -> tuple[str, str]:
    """Image-text matching: (caption listing every object, "match" | "mismatch").

    Half the captions are true; the others change exactly one attribute (colour,
    shape or size) of one object, so the listed objects no longer are the scene's.
    """
    objs = list(scene)
    if rng.random() < 0.5:
        return _list_phrase([describe(o) for o in objs]), "match"
    i = int(rng.integers(len(objs)))
    o = objs[i]
    attr = ["color", "shape", "size"][int(rng.integers(3))]
    pool = {"color": list(COLORS), "shape": SHAPES, "size": SIZES}[attr]
    others = [v for v in pool if v != getattr(o, attr)]
    objs[i] = replace(o, **{attr: str(others[int(rng.integers(len(others)))])})
    return _list_phrase([describe(x) for x in objs]), "mismatch"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _unique(scene: list[Obj], o: Obj) -> bool:
    return [(x.color, x.shape) for x in scene].count((o.color, o.shape)) == 1


def statement(scene: list[Obj], rng: np.random.Generator) -> tuple[str, str]:
    """Visual entailment (SNLI-VE style): (statement, "entailed" | "contradicted" | "unknown").

    Entailed / contradicted statements are about visible attributes, counts or
    columns and are decided by the scene; unknown ones give an object a property
    no image can show (:data:`NONVISUAL`).
    """
    label = TASKS["entail"][int(rng.integers(3))]
    o = scene[int(rng.integers(len(scene)))]
    if label == "unknown":
        who = f"the {o.color} {o.shape}" if rng.random() < 0.5 else f"the {o.color} object"
        return f"{who} {NONVISUAL[int(rng.integers(len(NONVISUAL)))]}.", label
    true = label == "entailed"
    kind = ["exists", "count", "column"][int(rng.integers(3))]
    if kind == "column" and _unique(scene, o):
        col = o.col if true else [c for c in range(3) if c != o.col][int(rng.integers(2))]
        return f"the {o.color} {o.shape} is in the {COLUMNS[col]} column.", label
    if kind == "count":
        if rng.random() < 0.5:
            what, n = f"{o.color} objects", sum(x.color == o.color for x in scene)
        else:
            what, n = plural(o.shape), sum(x.shape == o.shape for x in scene)
        if not true:
            n = int([c for c in COUNTS if int(c) != n][int(rng.integers(len(COUNTS) - 1))])
        return f"the number of {what} is {n}.", label
    # exists (also the fallback of a column statement about an ambiguous object)
    if true:
        return f"there is a {describe(o)}.", label
    present = {(x.size, x.color, x.shape) for x in scene}
    near = [(s, c, sh) for s in SIZES for c in COLORS for sh in SHAPES
            if (s, c, sh) not in present and [s != o.size, c != o.color, sh != o.shape].count(True) == 1]
    size, color, shape = near[int(rng.integers(len(near)))]
    return f"there is a {size} {color} {shape}.", label


def make_task_split(task: str, domain: str, n_images: int, questions_per_image: int, image_size: int,
                    seed: int, max_objects: int = 4) -> Split:
    """A split of one Task-benchmark task: ``vqa`` (every question function), ``itm`` or ``entail``."""
    if task == "vqa":
        split = make_split(domain, n_images, questions_per_image, image_size, FUNCTIONS, seed, max_objects)
        split.task = "vqa"
        return split
    make = {"itm": caption, "entail": statement}[task]
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, 1, max_objects) for _ in range(n_images)]
    images = np.stack([render(s, domain, image_size, rng) for s in scenes]) if scenes else np.zeros(
        (0, image_size, image_size, 3), np.uint8)
    split = Split(domain=domain, images=images, scenes=scenes, task=task)
    for i, scene in enumerate(scenes):
        for _ in range(questions_per_image):
            text, label = make(scene, rng)
            split.samples.append(Sample(image=i, question=text, answer=label, function=task))
    return split
