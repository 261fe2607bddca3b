"""Built-in datasets, written once as class-folder image trees (no network)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.errors import EdgecnnError, SettingError
from edgecnn.files import atomic_path, cache_home
from edgecnn.registry import Registry


def default_cache_dir() -> Path:
    return cache_home() / "datasets"


def write_digits(out_dir: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write scikit-learn's 1,797 real 8x8 handwritten digit scans as ``OUT/<digit>/<n>.png``.

    The scans hold 0..16 intensities; they are scaled to 0..255 grayscale PNGs. Returns the
    folder. An existing complete tree is reused unless `overwrite`; any other non-empty
    `out_dir` is refused, never replaced.
    """
    out = Path(out_dir) if out_dir is not None else default_cache_dir() / "digits"
    marker = out / ".complete"
    if marker.exists() and not overwrite:
        return out
    if out.exists() and not marker.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgecnnError(f"{out} exists and is not a digits tree written by edgecnn; choose a new or empty folder")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EdgecnnError('the built-in digits need scikit-learn: pip install "edgecnn[train]"') from None
    from PIL import Image

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    with atomic_path(out) as tmp:
        for i, (img, label) in enumerate(zip(images, digits.target)):
            folder = tmp / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(folder / f"{i:04d}.png")
        (tmp / ".complete").write_text(f"{len(images)} images\n")
    return out


# Real photographs shipped inside installed packages: (package, file inside it). Each is one class of `photos`.
PHOTO_SOURCES = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "cat": ("skimage", "data/chelsea.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "coffee": ("skimage", "data/coffee.png"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "rocket": ("skimage", "data/rocket.jpg"),
}
PACKAGE_PIP_NAMES = {"sklearn": "scikit-learn", "skimage": "scikit-image"}


def photo_path(name: str) -> Path:
    """The photograph behind class `name` of `photos`, or a one-line error naming what to install."""
    import importlib.util

    if name not in PHOTO_SOURCES:
        raise SettingError("classes", name, f"not a photo class; choose from {', '.join(PHOTO_SOURCES)}")
    package, file = PHOTO_SOURCES[name]
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / file if spec and spec.origin else None
    if path is None or not path.is_file():
        raise EdgecnnError(
            f"photo class {name!r} comes from {PACKAGE_PIP_NAMES[package]}, which is not installed here: "
            f"pip install {PACKAGE_PIP_NAMES[package]} (both come with edgecnn[dev]), or choose other classes"
        )
    return path


def available_photos() -> tuple[str, ...]:
    """The `photos` classes whose photograph is installed here."""
    found = []
    for name in PHOTO_SOURCES:
        try:
            photo_path(name)
            found.append(name)
        except EdgecnnError:
            pass
    return tuple(found)


def write_photos(
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    per_class: int = 100,
    size: int = 256,
    seed: int = 0,
    classes: tuple[str, ...] | None = None,
) -> Path:
    """Write a real-photo class folder: each class is one photograph shipped in an installed package
    (scikit-learn's china and flower; scikit-image's astronaut, cat, coffee and rocket), its images
    random square crops (30-80% of the short side, random position, half of them mirrored) resized
    to `size` x `size` and saved as JPEG (``OUT/<class>/<class>_<n>.jpg``). Nothing is downloaded.

    `classes` None: every photograph installed here. A tree written earlier with the same settings
    is reused unless `overwrite`; any other non-empty `out_dir` is refused, never replaced.
    """
    from PIL import Image

    from edgecnn.errors import check_at_least

    check_at_least("per_class", per_class, 1)
    check_at_least("size", size, 8)
    names = tuple(classes) if classes else available_photos()
    sources = {name: photo_path(name) for name in names}
    if len(sources) < 2:
        raise EdgecnnError('photos need at least two classes; install scikit-learn: pip install "edgecnn[train]"')
    out = Path(out_dir) if out_dir is not None else default_cache_dir() / "photos"
    marker = out / ".complete"
    settings = f"photos {','.join(sorted(sources))} per_class={per_class} size={size} seed={seed}\n"
    if marker.is_file() and marker.read_text() == settings and not overwrite:
        return out
    if out.exists() and not marker.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgecnnError(f"{out} exists and is not a photos tree written by edgecnn; choose a new or empty folder")
    if marker.is_file() and not overwrite:
        raise EdgecnnError(f"{out} holds photos written with other settings; pass --overwrite or choose a new folder")
    rng = np.random.default_rng(seed)
    with atomic_path(out) as tmp:
        for name, path in sorted(sources.items()):
            with Image.open(path) as img:
                photo = img.convert("RGB")
            w, h = photo.size
            folder = tmp / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                side = int(min(w, h) * rng.uniform(0.3, 0.8))
                x = int(rng.integers(0, w - side + 1))
                y = int(rng.integers(0, h - side + 1))
                crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crop.save(folder / f"{name}_{i:04d}.jpg", quality=90)
        (tmp / ".complete").write_text(settings)
    return out


DATASETS: Registry[Callable[..., Path]] = Registry("dataset")  # name -> writer(out_dir, overwrite=..., ...)
DATASETS.add("digits", write_digits)
DATASETS.add("photos", write_photos)
