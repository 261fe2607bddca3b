"""Datasets: class folders -> class index, reproducible stratified splits, decoded arrays, tf.data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, write_image
from typer.testing import CliRunner

from edgecnn import data
from edgecnn.data import Sample, class_balanced, load_arrays, make_dataset, split_folder
from edgecnn.builtin_datasets import write_digits
from edgecnn.errors import DataError, EdgecnnError, ImageError, SettingError


def _paths(samples) -> set[Path]:
    return {s.path for s in samples}


def _labels_by_class(samples) -> Counter:
    return Counter(s.label for s in samples)


# --- class index and splits ------------------------------------------------------------------


def test_class_index_is_the_sorted_folder_names(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("zebra", "apple", "mango"), per_class=5, size=8)

    split = split_folder(root, 0.2, seed=1)

    assert split.class_names == ("apple", "mango", "zebra")
    for s in split.train + split.validation:
        assert s.label == split.class_names.index(s.path.parent.name)


def test_validation_split_is_stratified_and_disjoint_from_training(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=10, size=8)

    split = split_folder(root, 0.2, seed=1)

    assert _labels_by_class(split.validation) == {0: 2, 1: 2, 2: 2}
    assert _labels_by_class(split.train) == {0: 8, 1: 8, 2: 8}
    assert _paths(split.train).isdisjoint(_paths(split.validation))
    assert _paths(split.train) | _paths(split.validation) == set(root.glob("*/*.png"))


def test_split_is_reproducible_for_a_seed_and_changes_with_another(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=20, size=8)

    first = split_folder(root, 0.25, seed=7)
    again = split_folder(root, 0.25, seed=7)
    other = split_folder(root, 0.25, seed=8)

    assert [s.path for s in again.validation] == [s.path for s in first.validation]
    assert _paths(other.validation) != _paths(first.validation)
    assert len(other.validation) == len(first.validation) == 10


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_a_folder_with_train_and_val_subfolders_is_used_as_given(tmp_path, val_name):
    root = tmp_path / "d"
    make_image_folder(root / "train", per_class=4, size=8, seed=1)
    make_image_folder(root / val_name, per_class=2, size=8, seed=2)

    split = split_folder(root, validation_split=0.5, seed=3)

    assert split.presplit
    assert split.class_names == ("circle", "square")
    assert _paths(split.train) == set((root / "train").glob("*/*.png"))
    assert _paths(split.validation) == set((root / val_name).glob("*/*.png"))
    assert _labels_by_class(split.validation) == {0: 2, 1: 2}


def test_a_given_class_list_fixes_the_labels_of_a_folder_with_some_of_the_classes(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("dog", "bird"), per_class=5, size=8)

    split = split_folder(root, 0.2, seed=1, class_names=("ant", "bird", "cat", "dog"))

    assert split.class_names == ("ant", "bird", "cat", "dog")
    assert {s.path.parent.name: s.label for s in split.train + split.validation} == {"bird": 1, "dog": 3}


def test_fingerprint_is_stable_and_changes_when_an_image_is_added(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=5, size=8)
    before = split_folder(root, 0.2, seed=1).fingerprint()

    assert split_folder(root, 0.2, seed=1).fingerprint() == before
    write_image(root / "circle" / "extra.png", np.zeros((8, 8, 3), np.uint8))
    assert split_folder(root, 0.2, seed=1).fingerprint() != before


# --- bad folders ------------------------------------------------------------------------------


def test_a_missing_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(DataError, match=r"no such folder; expected .*/nowhere/<class>/<image>"):
        split_folder(tmp_path / "nowhere")


def test_a_folder_without_class_subfolders_is_an_error(tmp_path):
    write_image(tmp_path / "flat" / "a.png", np.zeros((8, 8), np.uint8))

    with pytest.raises(DataError, match="no class subfolders in .*flat/"):
        split_folder(tmp_path / "flat")


def test_a_single_class_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("only",), per_class=5, size=8)

    with pytest.raises(DataError, match=r"only one class subfolder \(only\); a classifier needs at least two"):
        split_folder(root)


def test_a_class_without_images_is_named_in_the_error(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=5, size=8)
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no pictures here")

    with pytest.raises(DataError, match=r"class folder .*empty has no images \(.txt\)"):
        split_folder(root)


def test_one_image_per_class_leaves_the_validation_subset_empty(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=1, size=8)

    with pytest.raises(SettingError, match=r"^validation_split 0.2: leaves the validation subset empty \(2 images\)"):
        split_folder(root, 0.2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_a_validation_split_outside_0_and_1_is_an_error(tmp_path, fraction):
    root = make_image_folder(tmp_path / "d", per_class=5, size=8)

    with pytest.raises(SettingError, match=f"^validation_split {fraction}: expected a fraction between 0 and 1"):
        split_folder(root, fraction)


# --- files that are not usable images ---------------------------------------------------------


def test_non_image_files_are_skipped_and_counted_in_a_warning(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=5, size=8)
    (root / "circle" / "notes.txt").write_text("x")
    (root / "square" / "labels.csv").write_text("x")
    (root / "square" / ".DS_Store").write_text("hidden files are not counted")

    with pytest.warns(UserWarning, match=r"skipped 2 non-image files under"):
        split = split_folder(root, 0.2)

    assert {p.name for p in split.skipped} == {"notes.txt", "labels.csv"}
    assert all(s.path.suffix == ".png" for s in split.train + split.validation)
    assert split.summary()["skipped_non_images"] == 2


def test_non_image_files_of_a_presplit_folder_are_counted_in_a_warning_too(tmp_path):
    root = tmp_path / "d"
    make_image_folder(root / "train", per_class=3, size=8)
    make_image_folder(root / "val", per_class=1, size=8)
    (root / "val" / "circle" / "notes.txt").write_text("x")

    with pytest.warns(UserWarning, match=r"skipped 1 non-image files"):
        split = split_folder(root)

    assert [p.name for p in split.skipped] == ["notes.txt"]


def test_a_corrupt_image_is_skipped_and_named(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3, size=8)
    bad = root / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG but not really")
    split = split_folder(root, 0.34, seed=0)
    samples = split.train + split.validation

    images, labels, problems = load_arrays(samples, (8, 8), 3)

    assert len(images) == len(labels) == len(samples) - 1
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: not a decodable image")


def test_a_corrupt_image_stops_loading_under_strict_with_its_path(tmp_path):
    bad = tmp_path / "a" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"garbage")

    with pytest.raises(ImageError, match=rf"{bad}: not a decodable image .*drop --strict"):
        load_arrays([Sample(bad, 0)], (8, 8), 3, strict=True)


# --- channels ---------------------------------------------------------------------------------


@pytest.fixture
def three_modes(tmp_path) -> list[Sample]:
    """One grayscale (100), one RGB (200, 100, 50) and one RGBA (10, 20, 30, alpha 0) image."""
    gray = write_image(tmp_path / "m" / "gray.png", np.full((4, 4), 100, np.uint8))
    rgb = write_image(tmp_path / "m" / "rgb.png", np.tile(np.array([200, 100, 50], np.uint8), (4, 4, 1)))
    rgba = write_image(tmp_path / "m" / "rgba.png", np.tile(np.array([10, 20, 30, 0], np.uint8), (4, 4, 1)))
    return [Sample(gray, 0), Sample(rgb, 1), Sample(rgba, 2)]


def test_grayscale_rgb_and_rgba_files_load_as_three_channels(three_modes):
    images, labels, problems = load_arrays(three_modes, (4, 4), 3)

    assert images.shape == (3, 4, 4, 3) and images.dtype == np.uint8 and problems == []
    assert images[0, 0, 0].tolist() == [100, 100, 100]
    assert images[1, 0, 0].tolist() == [200, 100, 50]
    assert images[2, 0, 0].tolist() == [255, 255, 255]  # fully transparent: the white background (images.BACKGROUND)
    assert labels.tolist() == [0, 1, 2]


def test_grayscale_rgb_and_rgba_files_load_as_one_channel(three_modes):
    images, _, _ = load_arrays(three_modes, (4, 4), 1)

    assert images.shape == (3, 4, 4, 1)
    # ITU-R 601 luma: 0.299 R + 0.587 G + 0.114 B
    assert images[:, 0, 0, 0].tolist() == [100, 124, 255]  # the transparent one: white


def test_channels_are_one_only_when_every_class_is_grayscale(tmp_path):
    gray = [Sample(write_image(tmp_path / "g" / f"{i}.png", np.full((4, 4), i, np.uint8)), 0) for i in range(40)]
    color = [Sample(write_image(tmp_path / "c" / f"{i}.png", np.full((4, 4, 3), i, np.uint8)), 1) for i in range(3)]

    assert data.detect_channels(gray) == 1
    assert data.detect_channels(gray + color) == 3  # the colour class is not hidden behind 40 gray images


# --- class balance ----------------------------------------------------------------------------


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(Path(f"{label}/{i}.png"), label) for label, n in counts.items() for i in range(n)]


def test_class_balanced_takes_the_classes_in_equal_shares_while_they_last():
    samples = _samples({0: 30, 1: 3, 2: 10})

    assert _labels_by_class(class_balanced(samples, 9)) == {0: 3, 1: 3, 2: 3}
    chosen = class_balanced(samples, 20)
    assert _labels_by_class(chosen) == {0: 9, 1: 3, 2: 8}
    assert len(set(chosen)) == 20


def test_class_balanced_is_reproducible_and_caps_at_the_data():
    samples = _samples({0: 30, 1: 30})

    assert class_balanced(samples, 10, seed=4) == class_balanced(samples, 10, seed=4)
    assert class_balanced(samples, 10, seed=4) != class_balanced(samples, 10, seed=5)
    assert len(class_balanced(samples, 1000)) == 60


# --- tf.data pipelines ------------------------------------------------------------------------


def _asymmetric_images(n=32, size=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_validation_batches_are_the_raw_images_even_with_augmentation_asked_for():
    images = _asymmetric_images()
    labels = np.arange(len(images), dtype=np.int32)

    x, y = _collect(make_dataset(images, labels, batch_size=5, training=False, augment=("hflip", "vflip")))

    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, images.astype(np.float32))
    np.testing.assert_array_equal(y, labels)


def test_training_batches_are_flipped_copies_of_the_raw_images():
    images = _asymmetric_images()
    labels = np.arange(len(images), dtype=np.int32)  # label = image index, to find each image again

    x, y = _collect(make_dataset(images, labels, batch_size=8, training=True, augment=("hflip",), seed=1))

    assert sorted(y.tolist()) == labels.tolist()
    flipped = [not np.array_equal(out, images[i]) for out, i in zip(x, y)]
    for out, i, was_flipped in zip(x, y, flipped):
        np.testing.assert_array_equal(out, images[i][:, ::-1] if was_flipped else images[i])
    assert 0 < sum(flipped) < len(images)


def test_streaming_validation_data_has_the_in_memory_pixels_without_the_undecodable_images(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=4, size=8)
    (root / "square" / "broken.png").write_bytes(b"not a png")
    split = split_folder(root, 0.5, seed=0)
    samples = split.train + split.validation
    images, labels, _ = load_arrays(samples, (8, 8), 3)

    x, y = _collect(data.make_streaming_dataset(samples, (8, 8), 3, batch_size=3, training=False))

    assert len(samples) == 9 and len(x) == 8
    np.testing.assert_array_equal(x, images.astype(np.float32))
    np.testing.assert_array_equal(y, labels)


def test_unknown_augmentation_is_an_error():
    with pytest.raises(SettingError, match="^augment blur: unknown; choose from hflip,vflip,rotate,zoom"):
        make_dataset(_asymmetric_images(4), np.zeros(4, np.int32), 2, training=True, augment=("blur",))


# --- built-in digits --------------------------------------------------------------------------


def test_datasets_command_writes_the_1797_digits_in_10_folders(tmp_path):
    from edgecnn.cli import app

    result = CliRunner().invoke(app, ["datasets", "digits", str(tmp_path / "digits")])

    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (tmp_path / "digits").iterdir() if p.is_dir())
    assert folders == [str(d) for d in range(10)]
    pngs = list((tmp_path / "digits").glob("*/*.png"))
    assert len(pngs) == 1797
    from PIL import Image

    with Image.open(pngs[0]) as img:
        assert (img.mode, img.size) == ("L", (8, 8))
    again = CliRunner().invoke(app, ["datasets", "digits", str(tmp_path / "digits")])
    assert again.exit_code == 0 and again.output.startswith("digits is already complete in "), again.output
    photos_option = CliRunner().invoke(app, ["datasets", "digits", str(tmp_path / "d2"), "--per-class", "5"])
    assert photos_option.exit_code == 1 and "--per-class: a photos option" in photos_option.stderr
    assert not (tmp_path / "d2").exists()


def test_digits_are_not_written_over_a_folder_that_holds_something_else(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")

    with pytest.raises(EdgecnnError, match="exists and is not a digits tree"):
        write_digits(tmp_path / "mine", overwrite=True)

    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
