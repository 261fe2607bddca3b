"""Model files are input too: an ONNX file may read external data only from inside its own folder,
checked by edgecnn for every command that loads a model (`..`, absolute paths, symlinks out,
tensors inside subgraphs); a refused model is one line on stderr and exit 1."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_linear_onnx, tiny_metadata, write_image
from edgecnn.cli import app
from edgecnn.errors import ModelError
from edgecnn.onnxfile import check_external_data
from edgecnn.runtime import Runner

onnx = pytest.importorskip("onnx")


def with_external_weights(path: Path) -> Path:
    """The tiny linear model with every initializer kept in `weights.bin` beside it."""
    model = onnx.load(str(make_linear_onnx(path)))
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def point_weights_at(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_external_data_inside_the_folder_loads_and_runs(tmp_path):
    model = with_external_weights(tmp_path / "m" / "model.onnx")
    assert check_external_data(model) == [(tmp_path / "m" / "weights.bin").resolve()]
    out = Runner(model).run(np.zeros((2, 8, 8, 1), np.uint8))
    assert out.shape == (2, 3) and np.allclose(out.sum(axis=1), 1)


def _outside(tmp_path: Path, how: str) -> tuple[Path, str]:
    model = with_external_weights(tmp_path / "m" / "model.onnx")
    elsewhere = tmp_path / "secret"
    elsewhere.mkdir()
    os.replace(tmp_path / "m" / "weights.bin", elsewhere / "weights.bin")
    if how == "parent":
        point_weights_at(model, "../secret/weights.bin")
        return model, "outside the model's folder"
    if how == "absolute":
        point_weights_at(model, str(elsewhere / "weights.bin"))
        return model, "an absolute path"
    if how == "symlink":
        (tmp_path / "m" / "weights.bin").symlink_to(elsewhere / "weights.bin")
        return model, "outside the model's folder"
    point_weights_at(model, "missing.bin")
    return model, "which does not exist"


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "missing"])
def test_external_data_outside_the_folder_is_refused_before_any_session(tmp_path, how):
    model, why = _outside(tmp_path, how)
    with pytest.raises(ModelError, match=why):
        check_external_data(model)
    with pytest.raises(ModelError, match=why):
        Runner(model)


@pytest.mark.parametrize("command", ["predict", "profile", "serve"])
def test_every_command_that_loads_the_model_refuses_it_in_one_line(tmp_path, command):
    model, _ = _outside(tmp_path, "symlink")
    image = write_image(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    args = {
        "predict": ["predict", str(model), str(image)],
        "profile": ["profile", str(model), "--iterations", "2"],
        "serve": ["serve", str(model), "--port", "0"],
    }[command]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside the model's folder" in lines[0], out.stderr


def test_a_tensor_inside_a_subgraph_is_checked_too(tmp_path):
    from onnx import TensorProto, helper

    def branch(location: str):
        weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", "0"), ("length", "4")):
            weights.external_data.add(key=key, value=value)
        return helper.make_graph(
            [helper.make_node("Identity", ["w"], ["y"])],
            "b",
            [],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            [weights],
        )

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("ok.bin"), else_branch=branch("../../etc/passwd"))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    (path.parent / "ok.bin").write_bytes(np.ones(1, np.float32).tobytes())
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(
        ModelError, match=r"tensor 'w' keeps its data in '\.\./\.\./etc/passwd'.*outside the model's folder"
    ):
        check_external_data(path)


@pytest.mark.parametrize("content", [b"", b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f"])
def test_a_file_that_is_not_onnx_is_a_one_line_model_error(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    if content:
        with pytest.raises(ModelError, match="not a readable ONNX model"):
            check_external_data(path)
    with pytest.raises(ModelError):
        Runner(path)


def test_a_truncated_model_says_truncated_not_a_buffer_error(tmp_path):
    whole = make_linear_onnx(tmp_path / "whole.onnx").read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(whole[:-100])  # cut inside the graph, where the parser holds slices of it
    with pytest.raises(ModelError, match=r"not a readable ONNX model \(.*truncated"):
        check_external_data(path)


def _nan_for_dark_images(path: Path) -> Path:
    """A 3-class model whose answer is NaN when the image's first pixel is below 128 (Sqrt of a negative)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.metadata import attach_to_onnx

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Slice", ["flat", "zero", "one", "axis1"], ["first"]),
        helper.make_node("Sub", ["first", "mid"], ["centred"]),
        helper.make_node("Sqrt", ["centred"], ["root"]),
        helper.make_node("Mul", ["root", "spread"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.array(v, dtype), n)
        for n, v, dtype in (
            ("zero", [0], np.int64),
            ("one", [1], np.int64),
            ("axis1", [1], np.int64),
            ("mid", 128.0, np.float32),
            ("spread", [[0.1, 0.2, 0.3]], np.float32),
        )
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    attach_to_onnx(
        model,
        tiny_metadata("nan"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_a_model_that_answers_nan_for_some_input_gets_500_for_that_request_and_keeps_serving(tmp_path):
    import asyncio
    import io

    import httpx
    from PIL import Image

    from edgecnn.serve.config import ServeConfig
    from edgecnn.serve.server import create_app

    app = create_app(Runner(_nan_for_dark_images(tmp_path / "nan" / "model.onnx")), ServeConfig(max_queue_delay_ms=0))

    def png(value: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(out, "PNG")
        return out.getvalue()

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            async with app.router.lifespan_context(app):
                return [
                    await http.post("/v2/models/nan/classify", content=png(v), headers={"content-type": "image/png"})
                    for v in (200, 10, 250)
                ]

    bright, dark, again = asyncio.run(scenario())
    assert dark.status_code == 500
    assert dark.json()["error"].startswith("the model answered NaN or infinity for 1 of 1 input(s)")
    assert bright.status_code == 200 and again.status_code == 200
    assert [p["label"] for p in again.json()["predictions"]] == ["c", "b", "a"]


def test_predict_on_a_folder_with_a_fifo_a_broken_link_and_a_symlink_loop_ends_and_reports_each(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "good.png", np.full((8, 8), 200, np.uint8))
    os.mkfifo(folder / "fifo.png")  # opening it would wait for a writer forever
    (folder / "broken.png").symlink_to(folder / "nowhere.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "loop").symlink_to(folder)  # not followed
    model = make_linear_onnx(tmp_path / "m" / "model.onnx")
    code = "import sys; from edgecnn.cli import app; sys.argv = ['edgecnn'] + sys.argv[1:]; app()"
    done = subprocess.run(
        [sys.executable, "-c", code, "predict", str(model), str(folder), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr  # a partial result: some images could not be read
    import json

    lines = [json.loads(line) for line in done.stdout.splitlines()]
    rows = {Path(r["path"]).name: r for r in lines if r["type"] == "prediction"}
    assert set(rows) == {"good.png", "fifo.png", "broken.png"}
    assert rows["fifo.png"]["error"] == "not a regular file (a FIFO); skipped"
    assert rows["broken.png"]["error"] == "no such image file (a broken symlink)"
    assert rows["good.png"]["label"] in ("a", "b", "c") and rows["good.png"]["error"] is None
    assert lines[-1]["type"] == "summary" and lines[-1]["failed"] == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode: run as a user to check this case")
def test_an_unreadable_image_is_reported_not_raised(tmp_path):
    from edgecnn.errors import ImageError
    from edgecnn.images import load_image

    path = write_image(tmp_path / "secret.png", np.zeros((8, 8), np.uint8))
    path.chmod(0)
    with pytest.raises(ImageError, match="cannot be read"):
        load_image(path, (8, 8), 1)


def test_training_folder_scans_pass_over_a_fifo_instead_of_waiting_for_a_writer(tmp_path):
    import threading

    from edgecnn.images import image_header

    os.mkfifo(tmp_path / "fifo.png")
    result = []
    scan = threading.Thread(target=lambda: result.append(image_header(tmp_path / "fifo.png")), daemon=True)
    scan.start()
    scan.join(5)
    if scan.is_alive():  # unblock the reader so the test process can end
        with open(tmp_path / "fifo.png", "wb"):
            pass
        pytest.fail("image_header waited on a FIFO")
    assert result == [None]


def test_serve_refuses_a_model_whose_output_is_not_a_probability_vector_in_one_line(tmp_path):
    path = make_linear_onnx(tmp_path / "logits" / "model.onnx")
    model = onnx.load(str(path))
    model.graph.node.pop()  # no Softmax: the output is logits
    model.graph.node[-1].output[0] = "probabilities"
    onnx.save(model, str(path))
    out = CliRunner().invoke(app, ["serve", str(path), "--port", "0"])
    assert out.exit_code == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a probability vector over its 3 classes" in lines[0], out.stderr
    assert "end the model with a softmax" in lines[0]


def test_a_model_with_a_50_megabyte_metadata_string_loads_and_answers(tmp_path):
    path = make_linear_onnx(tmp_path / "big" / "model.onnx")
    model = onnx.load(str(path))
    model.metadata_props.add(key="edgecnn.note", value="x" * 50_000_000)
    onnx.save(model, str(path))
    out = Runner(path).run(np.zeros((1, 8, 8, 1), np.uint8))
    assert out.shape == (1, 3) and abs(float(out.sum()) - 1) < 1e-5
