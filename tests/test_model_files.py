"""Model files are input too: an ONNX file may read external data only from inside its own folder,
checked by edgecnn for every command that loads a model (`..`, absolute paths, symlinks out,
tensors inside subgraphs); a refused model is one line on stderr and exit 1."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_linear_onnx, write_image
from edgecnn.cli import app
from edgecnn.errors import ModelError
from edgecnn.onnxfile import check_external_data
from edgecnn.runtime import Runner

onnx = pytest.importorskip("onnx")


def with_external_weights(path: Path) -> Path:
    """The tiny linear model with every initializer kept in `weights.bin` beside it."""
    model = onnx.load(str(make_linear_onnx(path)))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
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
    args = {"predict": ["predict", str(model), str(image)], "profile": ["profile", str(model), "--iterations", "2"],
            "serve": ["serve", str(model), "--port", "0"]}[command]
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
        return helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "b", [],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weights])

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("ok.bin"), else_branch=branch("../../etc/passwd"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    (path.parent / "ok.bin").write_bytes(np.ones(1, np.float32).tobytes())
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ModelError, match=r"tensor 'w' keeps its data in '\.\./\.\./etc/passwd'.*outside the model's folder"):
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
