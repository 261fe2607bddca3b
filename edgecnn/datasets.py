"""Built-in datasets, written once as class-folder image trees (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.files import atomic_path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecnn" / "datasets"


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


DATASETS = {"digits": write_digits}
