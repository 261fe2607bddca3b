"""Datasets: a folder of class subfolders -> reproducible train/validation splits -> tf.data.

Same contract as Keras' directory loaders: one subfolder per class, class index = sorted
folder name, sparse integer labels. A folder that already has ``train/`` and ``val/`` (or
``validation/``) subfolders is used as split. Images are decoded by `edgecnn.images.load_image`
(the loader the device uses too), so training sees exactly the pixels ``predict`` sees.

Scanning and splitting need no TensorFlow; `make_dataset` imports it lazily.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecnn.errors import DataError, ImageError, SettingError
from edgecnn.images import find_images, image_header, load_image
from edgecnn.tfimport import import_tensorflow

AUGMENTATIONS = ("hflip", "vflip", "rotate", "zoom")
CACHE_LIMIT_BYTES = 2 * 1024**3  # decoded images up to this size are kept in memory


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class FolderSplit:
    """The result of scanning a dataset folder: classes and two disjoint subsets of files."""

    root: Path
    class_names: tuple[str, ...]
    train: list[Sample]
    validation: list[Sample]
    skipped: list[Path] = field(default_factory=list)  # files that are not images
    presplit: bool = False

    def fingerprint(self) -> str:
        """sha256 over every file's relative path, size and class: changes when the data does."""
        digest = hashlib.sha256()
        for subset, samples in (("train", self.train), ("validation", self.validation)):
            for s in samples:
                rel = os.path.relpath(s.path, self.root)
                digest.update(f"{subset}\0{rel}\0{s.path.stat().st_size}\0{s.label}\n".encode())
        return digest.hexdigest()

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "classes": list(self.class_names),
            "train_images": len(self.train),
            "validation_images": len(self.validation),
            "skipped_non_images": len(self.skipped),
            "presplit": self.presplit,
            "fingerprint": self.fingerprint(),
        }


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _files_of(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below `folder`, recursively, sorted."""
    return find_images([folder])


def scan_classes(
    root: str | os.PathLike, class_names: Sequence[str] | None = None
) -> tuple[tuple[str, ...], list[Sample], list[Path]]:
    """List (class names, samples, skipped non-image files) of a folder of class subfolders."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder; expected {root}/<class>/<image>")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected {root}/<class>/<image>")
    dirs = _class_dirs(root)
    if not dirs:
        raise DataError(f"no class subfolders in {root}/: expected {root}/<class>/<image>")
    names = tuple(d.name for d in dirs)
    if class_names is not None:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(f"{root}: class folders {unknown} are not among the model's classes {list(class_names)}")
        names = tuple(class_names)
    elif len(dirs) < 2:
        raise DataError(f"{root}/ has only one class subfolder ({dirs[0].name}); a classifier needs at least two")
    samples: list[Sample] = []
    skipped: list[Path] = []
    index = {n: i for i, n in enumerate(names)}
    for d in dirs:
        images, other = _files_of(d)
        skipped += other
        if not images and class_names is None:
            raise DataError(
                f"class folder {d} has no images ({', '.join(sorted({p.suffix or p.name for p in other})) or 'empty'}); add images or remove the folder"
            )
        samples += [Sample(p, index[d.name]) for p in images]
    return names, samples, skipped


def split_folder(
    root: str | os.PathLike, validation_split: float = 0.2, seed: int = 1337, class_names: Sequence[str] | None = None
) -> FolderSplit:
    """Scan `root` and split it, stratified by class and reproducible for a given `seed`.

    If `root` has ``train/`` and ``val/`` or ``validation/`` subfolders, those are the split.
    `class_names` (a trained model's classes) fixes the label of each folder name, so a
    folder holding only some of the classes still gets the model's labels. Non-image files
    are skipped and counted in a warning.
    """
    root = Path(root)
    if root.is_dir():
        sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
        val_dir = sub.get("val") or sub.get("validation")
        if "train" in sub and val_dir is not None:
            names, train, skipped = scan_classes(sub["train"], class_names)
            _, val, skipped_val = scan_classes(val_dir, class_names=names)
            if not val:
                raise DataError(f"{val_dir}/ has no images; put validation images in {val_dir}/<class>/")
            _warn_skipped(skipped + skipped_val, root)
            return FolderSplit(root, names, train, val, skipped + skipped_val, presplit=True)
    if not 0.0 < validation_split < 1.0:
        raise SettingError(
            "validation_split", validation_split, "expected a fraction between 0 and 1 (for example 0.2)"
        )
    names, samples, skipped = scan_classes(root, class_names)
    rng = np.random.default_rng(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in range(len(names)):
        members = [s for s in samples if s.label == label]
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * validation_split))
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    if not val or not train:
        empty = "validation" if not val else "training"
        raise SettingError(
            "validation_split",
            validation_split,
            f"leaves the {empty} subset empty ({len(samples)} images); add images or choose a split between 0.1 and 0.5",
        )
    _warn_skipped(skipped, root)
    return FolderSplit(root, names, train, val, skipped)


def _warn_skipped(skipped: Sequence[Path], root: Path) -> None:
    if skipped:
        warnings.warn(f"skipped {len(skipped)} non-image files under {root}/ (for example {skipped[0]})", stacklevel=3)


def detect_channels(samples: Sequence[Sample], limit: int = 32) -> int:
    """1 if the images (up to `limit`, drawn from every class) are all grayscale, else 3."""
    for s in class_balanced(samples, limit):
        header = image_header(s.path)
        if header is not None and header[0] not in ("L", "1", "I", "I;16", "F", "LA"):
            return 3
    return 1


def median_side(samples: Sequence[Sample], limit: int = 64) -> int:
    """The median of min(width, height) over up to `limit` images of every class (header reads only)."""
    headers = [image_header(s.path) for s in class_balanced(samples, limit)]
    sides = [min(size) for _, size in filter(None, headers)]
    return int(np.median(sides)) if sides else 32


def load_arrays(
    samples: Sequence[Sample],
    image_size: tuple[int, int],
    channels: int,
    strict: bool = False,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode samples in a thread pool -> (images uint8 (N,H,W,C), labels int32 (N,), problems).

    An image that cannot be decoded is skipped and named in `problems`, or raises
    `ImageError` when `strict`.
    """

    def one(sample: Sample):
        try:
            return load_image(sample.path, image_size, channels), None
        except ImageError as exc:
            if strict:
                raise ImageError(f"{exc} (remove it, or drop --strict to skip it with a warning)") from None
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        results = list(pool.map(one, samples))
    kept = [(arr, s.label) for (arr, _), s in zip(results, samples) if arr is not None]
    problems = [err for _, err in results if err is not None]
    h, w = image_size
    images = np.stack([a for a, _ in kept]) if kept else np.zeros((0, h, w, channels), np.uint8)
    labels = np.asarray([label for _, label in kept], dtype=np.int32)
    return images, labels, problems


def class_balanced(samples: Sequence[Sample], count: int, seed: int = 0) -> list[Sample]:
    """Up to `count` samples with the classes as equally represented as the data allows."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    for members in by_class.values():
        rng.shuffle(members)
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < count and any(depth < len(m) for m in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < count:
                chosen.append(by_class[label][depth])
        depth += 1
    return chosen


def augment_fn(augment: Sequence[str], seed: int):
    """A tf function (image float32 (H,W,C)) -> augmented image, for the training subset only."""
    tf = import_tensorflow()

    unknown = [a for a in augment if a not in AUGMENTATIONS]
    if unknown:
        raise SettingError("augment", ",".join(unknown), f"unknown; choose from {','.join(AUGMENTATIONS)}")
    layers = []
    if "rotate" in augment or "zoom" in augment:
        import keras

        if "rotate" in augment:
            layers.append(keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed))
        if "zoom" in augment:
            layers.append(keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed))

    def fn(image, label):
        if "hflip" in augment:
            image = tf.image.random_flip_left_right(image)
        if "vflip" in augment:
            image = tf.image.random_flip_up_down(image)
        for layer in layers:
            image = layer(image)
        return image, label

    return fn


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool,
    augment: Sequence[str] = (),
    seed: int = 1337,
    drop_remainder: bool = False,
):
    """In-memory arrays -> a batched, prefetched tf.data.Dataset of (float32 raw pixels, labels).

    Shuffling and augmentation happen only when `training`; validation data is never augmented.
    `drop_remainder`: whole batches only (reshuffled each epoch, so each epoch leaves out others).
    """
    tf = import_tensorflow()

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment:
        ds = ds.map(augment_fn(tuple(augment), seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_streaming_dataset(
    samples: Sequence[Sample],
    image_size: tuple[int, int],
    channels: int,
    batch_size: int,
    training: bool,
    augment: Sequence[str] = (),
    seed: int = 1337,
    drop_remainder: bool = False,
):
    """For data larger than memory: decode in parallel inside tf.data (same loader), prefetch.

    Undecodable images are dropped (`ignore_errors`); `load_arrays` is the path that names them.
    """
    tf = import_tensorflow()

    paths = [str(s.path) for s in samples]
    labels = np.asarray([s.label for s in samples], np.int32)
    h, w = image_size

    def decode(path):
        return load_image(path.decode() if isinstance(path, bytes) else str(path), image_size, channels)

    def tf_decode(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8)
        image.set_shape((h, w, channels))
        return tf.cast(image, tf.float32), label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    if training and augment:
        ds = ds.map(augment_fn(tuple(augment), seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def fits_in_memory(n_images: int, image_size: tuple[int, int], channels: int) -> bool:
    return n_images * image_size[0] * image_size[1] * channels <= CACHE_LIMIT_BYTES
