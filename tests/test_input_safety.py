"""Issue 16's cases outside the server: the one image loader, atomic folder swaps, predict's output."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecnn.errors import ImageError, ImageTooLarge
from edgecnn.images import BACKGROUND, load_image


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


# -- the image loader ---------------------------------------------------------------------
def test_ico_and_icns_are_not_opened_so_their_embedded_png_is_never_decoded():
    ico = encoded(Image.new("RGB", (64, 64), (200, 10, 10)), "ICO", sizes=[(64, 64)])
    with pytest.raises(ImageError, match="not a decodable image"):
        load_image(ico, (8, 8))


def test_bytes_that_are_no_image_are_named_without_an_object_address():
    with pytest.raises(ImageError, match=r"^<bytes>: not a decodable image \(cannot identify image file\)$"):
        load_image(b"not an image at all", (8, 8))


def test_a_50_megapixel_style_jpeg_is_checked_after_draft_and_accepted():
    jpeg = encoded(Image.new("RGB", (2000, 1500), (30, 120, 200)), "JPEG", quality=80)
    array = load_image(jpeg, (8, 8), max_pixels=1_000_000)  # 3 MP on disk, decoded at 1/8 scale: 47 kP
    assert array.shape == (8, 8, 3) and tuple(array[4, 4]) == pytest.approx((30, 120, 200), abs=6)
    with pytest.raises(ImageTooLarge, match="more than the 1,000,000-pixel limit"):
        load_image(encoded(Image.new("RGB", (1500, 1000)), "PNG"), (8, 8), max_pixels=1_000_000)


def test_a_float_image_in_0_to_1_is_scaled_not_black(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(path)
    assert int(load_image(path, (8, 8), channels=1)[0, 0, 0]) == pytest.approx(128, abs=1)


def test_transparent_pixels_are_composited_over_the_stated_background():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black ...
    rgba[:4, :, :] = (255, 0, 0, 128)  # ... under a half-transparent red top half
    array = load_image(encoded(Image.fromarray(rgba, "RGBA"), "PNG"), (8, 8))
    assert BACKGROUND == (255, 255, 255)
    assert tuple(array[7, 0]) == BACKGROUND
    assert tuple(array[0, 0]) == pytest.approx((255, 127, 127), abs=1)


def test_an_image_over_pillows_bomb_limit_is_a_skipped_image_in_training(tmp_path):
    from test_serve import png_claiming

    from edgecnn.data import Sample, load_arrays

    bomb = tmp_path / "a" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(png_claiming(20_000, 20_000))  # 400 MP: Pillow's DecompressionBombError
    good = tmp_path / "a" / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    images, labels, problems = load_arrays([Sample(good, 0), Sample(bomb, 0)], (8, 8), 3)
    assert images.shape == (1, 8, 8, 3) and len(problems) == 1 and "bomb.png" in problems[0]


# -- atomic folder swaps ------------------------------------------------------------------
def test_a_folder_swap_is_one_exchange_and_syncs_the_parent_folder(tmp_path, monkeypatch):
    from edgecnn import files

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))

    def replace(a, b):  # a crash between two renames would leave no folder at all
        replaced.append((a, b))
        if Path(b) == target:
            raise OSError("simulated crash")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with files.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and not replaced
    assert str(tmp_path) in synced  # the parent folder: the rename itself is on disk
    assert any(s.endswith("new.txt") for s in synced)  # the files were flushed before the swap
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the old folder and the temporary are gone


# -- predict's output ---------------------------------------------------------------------
def _result(path: str, label: str = "a"):
    from edgecnn.predict import ImagePrediction, PredictResult

    row = ImagePrediction(path=path, top=((label, 0.9),))
    return PredictResult(
        model="m", provider="cpu", runner_summary="cpu", rows=(row,), skipped=(), seconds=1.0, batch_size=1, top_k=1
    )


def test_table_output_prints_file_names_with_brackets_as_they_are():
    from edgecnn.predict import write_output

    out = io.StringIO()
    write_output(_result("[/x].png"), "table", out)
    assert "[/x].png" in out.getvalue()


def test_csv_output_neutralises_formula_injection():
    from edgecnn.predict import write_output

    out = io.StringIO()
    write_output(_result('=HYPERLINK("http://x")', label="+cmd"), "csv", out)
    row = list(csv.reader(io.StringIO(out.getvalue())))[1]
    assert row[0] == '\'=HYPERLINK("http://x")' and row[2] == "'+cmd" and row[3] == "0.9"


def test_training_folder_scans_skip_an_image_over_pillows_bomb_limit(tmp_path):
    from test_serve import png_claiming

    from edgecnn.data import Sample, detect_channels, median_side

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20_000, 20_000))  # Image.open raises DecompressionBombError, not OSError
    good = tmp_path / "good.png"
    Image.new("RGB", (10, 12)).save(good)
    samples = [Sample(bomb, 0), Sample(good, 0)]
    assert detect_channels(samples) == 3 and median_side(samples) == 10


# -- onnxruntime's floor ------------------------------------------------------------------
def test_onnxruntime_refuses_external_data_outside_the_model_folder(tmp_path):
    import tomllib

    import onnxruntime as ort
    from onnx import TensorProto, helper

    (tmp_path / "outside.bin").write_bytes(np.ones(4, np.float32).tobytes())
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "16")):
        weights.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(Exception, match="escapes model directory"):
        ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["cpu"] == ["onnxruntime>=1.24.1"] and extras["gpu"] == ["onnxruntime-gpu>=1.24.1"]


# -- EXIF orientation (issue 13) ----------------------------------------------------------
UPRIGHT = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3) * 3  # 6 high, 4 wide, every pixel different
SENSOR = {  # what a camera stores for each Orientation value, so that a viewer shows UPRIGHT
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, -1),
}


def with_orientation(array: np.ndarray, orientation: int, fmt: str = "PNG", **options) -> bytes:
    img = Image.fromarray(np.ascontiguousarray(array))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(img, fmt, exif=exif, **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_loads_as_the_upright_image(orientation):
    data = with_orientation(SENSOR[orientation](UPRIGHT), orientation)
    np.testing.assert_array_equal(load_image(data, (6, 4)), UPRIGHT)


def test_exif_orientation_is_applied_after_jpeg_draft_and_can_be_turned_off(monkeypatch):
    upright = np.zeros((400, 200, 3), np.uint8)
    upright[:100] = (250, 20, 20)  # a red top
    data = with_orientation(SENSOR[6](upright), 6, "JPEG", quality=95)  # stored 200 high, 400 wide
    turned = load_image(data, (8, 4))
    assert turned.shape == (8, 4, 3) and turned[0, 2, 0] > 200 and turned[7, 2, 0] < 40
    as_stored = load_image(data, (4, 8), exif_orientation=False)
    assert as_stored.shape == (4, 8, 3) and as_stored[2, 0, 0] > 200  # red on the left: not turned
    monkeypatch.setenv("EDGECNN_EXIF_ORIENTATION", "0")
    np.testing.assert_array_equal(load_image(data, (4, 8)), as_stored)
