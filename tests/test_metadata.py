"""The contract between the workstation and the device: what edgecnn writes about a model, and how
the device reads it back. Fast: no TensorFlow, no onnxruntime session."""

from __future__ import annotations

import json
import os

import pytest

from edgecnn.errors import ModelError
from edgecnn.metadata import (
    SCHEMA_VERSION,
    VARIANT_FILES,
    ModelMetadata,
    Preprocessing,
    default_class_names,
    from_custom_map,
    read_model_dir,
    recommended_file,
)

META = ModelMetadata(
    class_names=("cat", "dog"),
    image_size=(32, 24),
    channels=3,
    layout="nchw",
    input_dtype="uint8",
    preprocessing=Preprocessing(mode="caffe", mean=(1.0, 2.0, 3.0), color_order="BGR"),
    architecture="resnet50",
)


def test_metadata_round_trips_through_json_and_the_onnx_custom_map():
    assert ModelMetadata.from_json(META.to_json()) == META
    assert from_custom_map({"edgecnn.metadata": META.to_json()}, "m.onnx") == META
    assert from_custom_map({"other": "x"}, "m.onnx") is None  # a model without edgecnn metadata


def test_the_input_shape_follows_the_layout():
    assert META.input_shape(4) == (4, 3, 32, 24)
    assert META.replace(layout="nhwc").input_shape(None) == (None, 32, 24, 3)
    assert META.num_classes == 2


def test_fields_a_newer_edgecnn_adds_are_ignored_but_a_newer_schema_is_refused():
    data = json.loads(META.to_json())
    data["a_field_from_the_future"] = 1
    assert ModelMetadata.from_dict(data) == META
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ModelError, match="written by a newer edgecnn .* upgrade edgecnn"):
        ModelMetadata.from_dict(data, "m.onnx")


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"channels": 2}, "channels must be 1 or 3, not 2"),
        ({"layout": "nwhc"}, "layout must be nhwc or nchw, not 'nwhc'"),
        ({"input_dtype": "int8"}, "input_dtype must be uint8 or float32, not 'int8'"),
        ({"image_size": [0, 8]}, r"bad image_size \(0, 8\)"),
        ({"class_names": []}, "no class names"),
    ],
)
def test_invalid_metadata_is_one_error_naming_the_problem(change, problem):
    data = {**json.loads(META.to_json()), **change}
    with pytest.raises(ModelError, match=rf"^m\.onnx: invalid edgecnn metadata: {problem}"):
        ModelMetadata.from_dict(data, "m.onnx")


def test_incomplete_or_non_object_metadata_is_one_error():
    with pytest.raises(ModelError, match="incomplete or malformed"):
        ModelMetadata.from_dict({"channels": 3}, "m.onnx")
    with pytest.raises(ModelError, match="not a JSON object"):
        ModelMetadata.from_dict([1, 2], "m.onnx")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelMetadata.from_json("{", "m.onnx")


def test_variant_file_names_and_default_class_names():
    assert VARIANT_FILES == {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    assert default_class_names(3) == ("0", "1", "2") and default_class_names(None) == ("0",)


def test_a_folder_runs_the_recommended_variant_when_it_is_there_else_model_onnx(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    assert recommended_file(tmp_path) == tmp_path / "model.onnx"  # no export report
    report = {"variants": [{"variant": "fp32"}, {"variant": "int8", "recommended": True}]}
    (tmp_path / "export_report.json").write_text(json.dumps(report))
    assert recommended_file(tmp_path) == tmp_path / "model.onnx"  # the recommended file is missing
    (tmp_path / "model.int8.onnx").write_bytes(b"")
    assert recommended_file(tmp_path) == tmp_path / "model.int8.onnx"
    (tmp_path / "export_report.json").write_text("[not json")
    assert recommended_file(tmp_path) == tmp_path / "model.onnx"
    (tmp_path / "export_report.json").unlink()
    os.mkfifo(tmp_path / "export_report.json")  # no writer: reading it would wait forever
    assert recommended_file(tmp_path) == tmp_path / "model.onnx"


def test_a_model_folder_without_metadata_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelError, match="missing: no such model folder; train one with: edgecnn train --out"):
        read_model_dir(tmp_path / "missing")
    with pytest.raises(ModelError, match="is not a trained edgecnn model"):
        read_model_dir(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"model": json.loads(META.to_json())}))
    assert read_model_dir(tmp_path)[0] == META
