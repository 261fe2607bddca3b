"""What a model answers is input too (issue 13, part A, on top of main's serve checks): predict on
a model that answers NaN for some images, a model whose output is not [N, classes], and a bomb
Pillow refuses while opening, whose message must name edgecnn's own pixel limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_metadata
from typer.testing import CliRunner

from edgecnn.cli import app


def scoring_model(folder, tail, output_shape, constants=()) -> Path:
    """uint8 [N, 8, 8, 1] -> mean pixel per class (MatMul) -> `tail` nodes -> "probabilities"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.metadata import attach_to_onnx

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["xf"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["s"]),
        *tail,
    ]
    graph = helper.make_graph(
        nodes,
        "scores",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, output_shape)],
        initializer=[
            numpy_helper.from_array(np.full((64, 3), 1 / 64, np.float32), "W"),
            *(numpy_helper.from_array(np.asarray(v), k) for k, v in constants),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    attach_to_onnx(
        model,
        tiny_metadata("test"),
    )
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def nan_for_dark_images(folder) -> Path:
    """sqrt(mean pixel - 100): NaN for an image darker than 100, numbers for a bright one."""
    from onnx import helper

    return scoring_model(
        folder,
        [helper.make_node("Sub", ["s", "c"], ["d"]), helper.make_node("Sqrt", ["d"], ["probabilities"])],
        ["N", 3],
        [("c", np.float32(100))],
    )


def png(value: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), value).save(buffer, "PNG")
    return buffer.getvalue()


def test_predict_marks_an_image_whose_scores_are_nan_as_an_error_and_classifies_the_rest(tmp_path):
    model = nan_for_dark_images(tmp_path / "nan")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "dark.png").write_bytes(png(0))
    (tmp_path / "images" / "bright.png").write_bytes(png(255))
    result = CliRunner().invoke(app, ["predict", str(model), str(tmp_path / "images"), "--format", "csv"])
    rows = {line.split(",")[0].rsplit("/", 1)[-1]: line for line in result.output.splitlines()[1:] if line.strip()}
    assert "the model produced NaN or infinite scores for this image" in rows["dark.png"]
    assert "nan" not in rows["bright.png"].lower() and ",a," in rows["bright.png"]


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_an_output_that_is_not_one_score_per_class_is_refused_at_load(tmp_path, command):
    from onnx import helper

    model = scoring_model(
        tmp_path / "rank3",
        [helper.make_node("Unsqueeze", ["s", "axes"], ["probabilities"])],
        ["N", 1, 3],
        [("axes", np.array([1], np.int64))],
    )
    args = ["predict", str(model), str(tmp_path)] if command == "predict" else ["serve", str(model), "--port", "0"]
    result = subprocess.run([sys.executable, "-m", "edgecnn.cli", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout.strip() == "" and result.stderr.strip().count("\n") == 0, (
        result.stderr
    )
    assert (
        "output 'probabilities' has shape ['N', 1, 3]; edgecnn reads one score per class: [N, classes]" in result.stderr
    )


def test_a_bomb_pillow_refuses_while_opening_names_edgecnns_pixel_limit():
    from test_serve import png_claiming

    from edgecnn.errors import ImageTooLarge
    from edgecnn.images import load_image

    with pytest.raises(ImageTooLarge, match="more than the 16,000,000-pixel limit .*900000000 pixels"):
        load_image(png_claiming(30_000, 30_000), (8, 8), max_pixels=16_000_000)
