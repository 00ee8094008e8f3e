"""Real splits -> model-ready tensors, decoding images lazily, in chunks.

A client may hold 100k images: they are never decoded all at once. Images are
read ``chunk`` at a time, resized, passed through the frozen vision part, and
only the features are kept. With a cache directory the features are written
to a ``.npy`` file and read back memory-mapped, so neither the images nor the
features of a client need to sit in memory; the key hashes the bytes of every
image file and the vision model's identity (``model.vision_spec.key``), so a
changed image or model misses the cache.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedvl.data.features import EncodedSplit
from fedvl.data.real.base import DatasetError
from fedvl.data.real.splits import RealSplit
from fedvl.io import atomic_write


# Photo formats only (JPEG covers MPO): Pillow would also open e.g. EPS (through Ghostscript) or formats with no
# use for a VQA image; the list is what datasets ship.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
MAX_PIXELS = 89_478_485
"""Larger images are refused (Pillow's own bomb limit, about 0.25 GiB decoded): a header can claim
60000x60000 pixels in a few bytes."""


def check_image(path: Path) -> None:
    """Open the header only: a readable image of an accepted type and size, or one line naming it."""
    if not path.is_file():
        raise DatasetError(f"image {path} not found or not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            with Image.open(path, formats=FORMATS) as img:
                w, h = img.size
    except Image.DecompressionBombError:
        raise DatasetError(f"image {path} claims more than {2 * MAX_PIXELS:,} pixels (limit {MAX_PIXELS:,}); "
                           "refusing a possible decompression bomb") from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise DatasetError(f"image {path} is not a readable image of a supported type "
                           f"({', '.join(FORMATS)}): {one_line(e)}") from None
    if w * h > MAX_PIXELS:
        raise DatasetError(f"image {path} is {w}x{h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,}")


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3). JPEG decoding at a reduced scale first (``draft``) makes
    large photos cheap to shrink; the aspect ratio is not kept (the model sees squares)."""
    try:
        with Image.open(path, formats=FORMATS) as img:
            img.draft("RGB", (2 * size, 2 * size))
            return np.asarray(to_rgb(img).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {path}: {one_line(e)}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. Pillow's own conversion of 16-bit grey (modes I;16* and I, e.g. 16-bit PNG or TIFF)
    clips every value above 255 to white: scale 0..65535 down to 0..255 instead."""
    if img.mode.startswith("I"):
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        img = Image.fromarray(np.rint(grey).astype(np.uint8), "L")
    return img.convert("RGB")


def images_digest(paths: list[Path]) -> str:
    """sha256 over the bytes of every file, in order (the order fixes the feature rows)."""
    total = hashlib.sha256()
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        total.update(h.digest())
    return total.hexdigest()


def _chunks(model, paths: list[Path], size: int, chunk: int):
    for start in range(0, len(paths), chunk):
        batch = np.stack([load_image(p, size) for p in paths[start:start + chunk]])
        yield start, model.image_features(torch.from_numpy(batch)).half().cpu().numpy()


def lazy_image_features(model, paths: list[Path], size: int, cache_dir: str | None, chunk: int = 64) -> torch.Tensor:
    """Frozen features of every image, (N, ...) half; memory-mapped from the cache when one is set."""
    if not paths:
        return torch.zeros(0)
    path = None
    if cache_dir:
        key = hashlib.sha256(f"{model.vision_spec.key}|{size}|{images_digest(paths)}".encode()).hexdigest()[:24]
        path = Path(cache_dir) / "features" / f"{model.vision_spec.key}-{key}.npy"
        if path.is_file():
            try:
                # copy-on-write map: rows are read from disk when a batch needs them
                feats = np.load(path, mmap_mode="c")
                if feats.shape[0] == len(paths):
                    return torch.from_numpy(feats)
            except (OSError, ValueError):  # a truncated or corrupt file is recomputed, not trusted
                pass
    chunks = _chunks(model, paths, size, chunk)
    _, first = next(chunks)
    shape = (len(paths), *first.shape[1:])
    if path is None:
        out = np.empty(shape, dtype=np.float16)
        out[: len(first)] = first
        for start, feats in chunks:
            out[start:start + len(feats)] = feats
        return torch.from_numpy(out)

    def write(tmp: str) -> None:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        mm[: len(first)] = first
        for start, feats in chunks:
            mm[start:start + len(feats)] = feats
        mm.flush()
        del mm

    atomic_write(path, write)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def encode_real_split(split: RealSplit, model, tokenizer, max_len: int, cache_dir: str | None,
                      image_size: int) -> EncodedSplit:
    tok = tokenizer(split.questions, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return EncodedSplit(
        input_ids=tok["input_ids"],
        attention_mask=tok["attention_mask"],
        image_index=torch.from_numpy(split.image_index),
        labels=torch.from_numpy(split.labels),
        features=lazy_image_features(model, split.images, image_size, cache_dir),
        task=split.task,
        score_idx=torch.from_numpy(split.score_idx),
        score_val=torch.from_numpy(split.score_val),
    )
