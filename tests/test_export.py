"""`edgecnn export`: ONNX files that agree with Keras, INT8/FP16 variants, report, Triton, failures."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import edgecnn.convert as convert_module
import edgecnn.export as export_module
from edgecnn.cli import app
from edgecnn.data import load_arrays, split_folder
from edgecnn.export import FP32_MAX_DIFF, ExportConfig, export
from edgecnn.metadata import VARIANT_FILES, ModelMetadata, read_onnx_metadata
from edgecnn.sensitivity import RANKED_OPS
from trained_models import copy_model_dir

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@dataclass
class Exported:
    dir: Path
    report: export_module.ExportReport
    triton: Path
    loaded_labels: dict  # what="validation"/"calibration" -> the labels of the images export loaded
    log: list


@pytest.fixture(scope="session")
def digits(digits_model):
    return digits_model


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory) -> Exported:
    """The digits CNN exported with int8 and fp16 variants and a Triton repository."""
    model_dir = copy_model_dir(digits.dir, tmp_path_factory.mktemp("exported") / "digits")
    triton = model_dir.parent / "triton"
    loaded: dict[str, np.ndarray] = {}
    real_load = export_module._load

    def recording_load(samples, meta, what):
        images, labels = real_load(samples, meta, what)
        loaded[what] = labels
        return images, labels

    log: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_module, "_load", recording_load)
        report = export(
            ExportConfig(
                str(model_dir),
                quantize=("int8", "fp16"),
                parity_samples=200,
                calibration_samples=100,
                latency_batch=8,
                triton=str(triton),
            ),
            log=log.append,
        )
    return Exported(model_dir, report, triton, loaded, log)


@pytest.fixture(scope="session")
def validation(digits):
    """All 359 digits validation images (uint8) and what the Keras model says about them."""
    record = json.loads((digits.dir / "metadata.json").read_text())
    split = split_folder(record["training"]["config"]["data_dir"], 0.2, 1337)
    images, labels, _ = load_arrays(split.validation, (8, 8), 1)
    model = keras.models.load_model(digits.dir / "model.keras", compile=False)
    return images, labels, model.predict(images.astype(np.float32), verbose=0)


def _run(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _io(path: Path) -> tuple:
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output

    def dims(value):
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim
        ]

    return (
        inp.name,
        onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type),
        dims(inp),
        out.name,
        onnx.TensorProto.DataType.Name(out.type.tensor_type.elem_type),
        dims(out),
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _variant(report, name):
    return next(v for v in report.variants if v.variant == name)


# --- FP32 -------------------------------------------------------------------------------------


def test_fp32_onnx_agrees_with_keras_on_every_validation_image(exported, validation):
    images, labels, keras_probs = validation

    probs = _run(exported.dir / "model.onnx", images)  # raw uint8 pixels, preprocessing in the graph

    assert probs.shape == (359, 10)
    assert (probs.argmax(1) == keras_probs.argmax(1)).mean() == 1.0
    assert np.abs(probs - keras_probs).max() <= FP32_MAX_DIFF
    fp32 = _variant(exported.report, "fp32")
    assert fp32.keras_agreement == 1.0 and fp32.max_prob_diff <= FP32_MAX_DIFF
    assert fp32.accuracy == exported.report.keras_accuracy >= 0.95


def test_fp32_graph_takes_uint8_images_with_a_dynamic_batch_and_returns_probabilities(exported):
    name, dtype, dims, out_name, out_dtype, out_dims = _io(exported.dir / "model.onnx")

    assert (name, dtype, dims[1:]) == ("image", "UINT8", [8, 8, 1])
    assert isinstance(dims[0], (str, type(None)))  # symbolic: any batch size
    assert (out_name, out_dtype, out_dims[1:]) == ("probabilities", "FLOAT", [10])
    assert _run(exported.dir / "model.onnx", np.zeros((5, 8, 8, 1), np.uint8)).shape == (5, 10)


def test_fp32_graph_has_no_training_only_ops(exported):
    ops = _ops(exported.dir / "model.onnx")

    assert ops["Conv"] == 2 and ops["Softmax"] == 1
    assert not {op for op in ops if op.startswith("Random") or op in ("BatchNormalization", "Dropout")}


def test_a_model_trained_with_augmentation_exports_without_augmentation_ops(tmp_path, augmented_model):
    model_dir = copy_model_dir(augmented_model.dir, tmp_path / "augmented")

    report = export(ExportConfig(str(model_dir), parity_samples=0), log=lambda m: None)

    ops = _ops(model_dir / "model.onnx")
    assert not [op for op in ops if op.startswith("Random") or op in ("Resize", "GridSample", "AffineGrid")]
    assert _variant(report, "fp32").keras_agreement == 1.0


@pytest.mark.parametrize(
    "settings, spec",
    [
        ({"input_dtype": "float32"}, ("FLOAT", [8, 8, 1])),
        ({"layout": "nchw"}, ("UINT8", [1, 8, 8])),
        ({"input_dtype": "float32", "layout": "nchw"}, ("FLOAT", [1, 8, 8])),
    ],
    ids=["float32", "nchw", "float32-nchw"],
)
def test_input_dtype_and_layout_options_change_the_input_and_still_agree_with_keras(
    digits, validation, tmp_path, settings, spec
):
    model_dir = copy_model_dir(digits.dir, tmp_path / "digits")
    images, _, keras_probs = validation

    report = export(ExportConfig(str(model_dir), parity_samples=64, latency_batch=4, **settings), log=lambda m: None)

    name, dtype, dims, *_ = _io(model_dir / "model.onnx")
    assert (name, dtype, dims[1:]) == ("image",) + spec
    batch = images.transpose(0, 3, 1, 2) if settings.get("layout") == "nchw" else images
    probs = _run(model_dir / "model.onnx", np.ascontiguousarray(batch, dtype=dtype.lower().replace("float", "float32")))
    assert (probs.argmax(1) == keras_probs.argmax(1)).all()
    assert np.abs(probs - keras_probs).max() <= FP32_MAX_DIFF
    meta = read_onnx_metadata(model_dir / "model.onnx")
    assert (meta.input_dtype, meta.layout) == (settings.get("input_dtype", "uint8"), settings.get("layout", "nhwc"))
    assert _variant(report, "fp32").keras_agreement == 1.0


# --- ResNet50 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_exported(tmp_path_factory, resnet50_model):
    model_dir = copy_model_dir(resnet50_model.dir, tmp_path_factory.mktemp("r50") / "resnet50")
    log: list[str] = []
    return model_dir, export(ExportConfig(str(model_dir), parity_samples=0, latency_batch=2), log=log.append), log


def test_resnet50_passes_the_fp32_parity_gate(resnet50_exported):
    model_dir, report, _ = resnet50_exported
    fp32 = _variant(report, "fp32")

    assert report.images == 4
    assert fp32.keras_agreement == 1.0 and fp32.max_prob_diff <= FP32_MAX_DIFF
    assert (model_dir / "model.onnx").stat().st_size > 90e6  # 23.5 M float32 weights


def test_resnet50_graph_has_batchnorm_and_padding_folded_and_its_preprocessing_inside(resnet50_exported):
    model_dir, _, log = resnet50_exported
    ops = _ops(model_dir / "model.onnx")

    assert ops["BatchNormalization"] == 0
    # ResNet50's 53 convolutions; the caffe preprocessing 1x1 conv became the first conv's
    # channel order plus one Add, and ZeroPadding2D the max pool's own padding.
    assert ops["Conv"] == 53 and ops["Pad"] == 0
    first = next(
        n for n in onnx.load(str(model_dir / "model.onnx")).graph.node if n.op_type not in ("Cast", "Transpose")
    )
    assert first.op_type == "Add"
    assert "graph rewrites (exact): zero pads folded: 1, channel permutations folded: 1" in log
    name, dtype, dims, *_ = _io(model_dir / "model.onnx")
    assert (name, dtype, dims[1:]) == ("image", "UINT8", [32, 32, 3])
    meta = read_onnx_metadata(model_dir / "model.onnx")
    assert (meta.architecture, meta.preprocessing.mode, meta.preprocessing.color_order) == ("resnet50", "caffe", "BGR")


# --- INT8 and FP16 ----------------------------------------------------------------------------


def test_int8_stays_within_one_accuracy_point_and_is_smaller(exported):
    fp32, int8 = _variant(exported.report, "fp32"), _variant(exported.report, "int8")

    assert (fp32.accuracy - int8.accuracy) * 100 <= 1.0
    assert int8.size_bytes < fp32.size_bytes / 2
    assert (exported.dir / "model.int8.onnx").stat().st_size == int8.size_bytes
    ops = _ops(exported.dir / "model.int8.onnx")
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0


def test_int8_agrees_with_keras_on_the_validation_images(exported, validation):
    images, labels, keras_probs = validation

    probs = _run(exported.dir / "model.int8.onnx", images)

    assert (probs.argmax(1) == keras_probs.argmax(1)).mean() >= 0.97
    assert (probs.argmax(1) == labels).mean() >= 0.94


def test_int8_keeps_the_input_preprocessing_in_float_and_quantizes_once_before_the_first_conv(exported):
    graph = onnx.load(str(exported.dir / "model.int8.onnx")).graph
    producer = {out: node for node in graph.node for out in node.output}
    first_conv = next(n for n in graph.node if n.op_type == "Conv")

    path, tensor = [], first_conv.input[0]  # walk back from the first conv to the image
    while tensor != "image":
        node = producer[tensor]
        path.append(node.op_type)
        tensor = next(name for name in node.input if name in producer or name == "image")
    assert path[:2] == ["DequantizeLinear", "QuantizeLinear"]
    assert "QuantizeLinear" not in path[2:] and "DequantizeLinear" not in path[2:]
    assert "Mul" in path[2:]  # the 1/255 rescale runs on floats


def test_fp16_variant_keeps_uint8_input_and_float16_weights(exported, validation):
    images, _, keras_probs = validation
    path = exported.dir / "model.fp16.onnx"

    weights = [t.data_type for t in onnx.load(str(path)).graph.initializer]
    probs = _run(path, images)

    assert weights.count(onnx.TensorProto.FLOAT16) >= 4
    assert _io(path)[:2] == ("image", "UINT8") and probs.dtype == np.float32
    assert np.abs(probs - keras_probs).max() < 1e-2
    assert _variant(exported.report, "fp16").keras_agreement >= 0.99


def test_validation_and_calibration_images_cover_every_class_equally(exported):
    assert Counter(exported.loaded_labels["validation"].tolist()) == {c: 20 for c in range(10)}
    assert Counter(exported.loaded_labels["calibration"].tolist()) == {c: 10 for c in range(10)}
    assert "int8: calibrating on 100 class-balanced training images (minmax)" in exported.log


# --- metadata, report, Triton -----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_onnx_metadata_is_what_training_recorded_plus_variant_and_source_hash(exported, digits, variant):
    trained = ModelMetadata.from_dict(json.loads((digits.dir / "metadata.json").read_text())["model"])

    meta = read_onnx_metadata(exported.dir / VARIANT_FILES[variant])

    assert meta == trained.replace(variant=variant, source_hash=_sha256(digits.dir / "model.keras"))
    assert meta.class_names == tuple(str(d) for d in range(10)) and meta.image_size == (8, 8)


def test_report_files_describe_every_variant_and_recommend_exactly_one(exported):
    report = json.loads((exported.dir / "export_report.json").read_text())
    markdown = (exported.dir / "export_report.md").read_text()

    assert [v["variant"] for v in report["variants"]] == ["fp32", "int8", "fp16"]
    for v in report["variants"]:
        assert v["path"] == str(exported.dir / VARIANT_FILES[v["variant"]])
        assert v["size_bytes"] == Path(v["path"]).stat().st_size
        assert 0.9 <= v["accuracy"] <= 1.0 and 0.97 <= v["keras_agreement"] <= 1.0
        assert 0.0 <= v["max_prob_diff"] < 0.5
        assert v["latency_ms_b1"] > 0 and v["latency_ms_bn"] > 0
    assert sum(v["recommended"] for v in report["variants"]) == 1
    assert report["images"] == 200 and report["latency_batch"] == 8
    assert (
        report["int8_attempts"][-1]["accepted"]
        and report["nodes_in_float"] == report["int8_attempts"][-1]["nodes_in_float"]
    )
    rows = [line for line in markdown.splitlines() if line.startswith("| fp") or line.startswith("| int8")]
    assert [row.split("|")[1].strip() for row in rows] == ["fp32", "int8", "fp16"]
    assert sum(row.rstrip(" |").endswith("yes") for row in rows) == 1
    assert f"Keras accuracy {exported.report.keras_accuracy:.2%} on 200 validation images" in markdown


def test_report_lists_the_ten_most_sensitive_int8_layers_and_recall_per_class(exported):
    report = json.loads((exported.dir / "export_report.json").read_text())
    markdown = (exported.dir / "export_report.md").read_text()
    graph = onnx.load(str(exported.dir / "model.onnx")).graph

    sensitive = report["int8_sensitivity"]
    assert 1 <= len(sensitive) <= 10 and [s["sqnr_db"] for s in sensitive] == sorted(s["sqnr_db"] for s in sensitive)
    for s in sensitive:
        assert f"| {s['node']} | {s['op_type']} | {s['sqnr_db']:.1f} |" in markdown
    assert {s["op_type"] for s in sensitive} <= set(RANKED_OPS)
    assert {s["node"] for s in sensitive} <= {n.name for n in graph.node} | {n.name for n in _int8_graph(exported).node}
    assert report["class_names"] == [str(d) for d in range(10)]
    for v in report["variants"]:
        labels = exported.loaded_labels["validation"]
        assert len(v["class_recall"]) == 10 and all(0.0 <= r <= 1.0 for r in v["class_recall"])
        # recall weighted by class size is the accuracy
        assert np.dot(v["class_recall"], np.bincount(labels, minlength=10)) / len(labels) == pytest.approx(
            v["accuracy"]
        )
    header = next(line for line in markdown.splitlines() if line.startswith("| class |"))
    assert header == "| class | fp32 | int8 | fp16 |"
    fp32 = _variant(exported.report, "fp32")
    assert f"| 3 | {fp32.class_recall[3]:.2%} |" in markdown


def test_triton_config_parses_as_a_model_config(exported):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    folder = exported.triton / "digits"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    assert (config.name, config.platform, config.max_batch_size) == ("digits", "onnxruntime_onnx", 32)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, model_config_pb2.DataType.Name(inp.data_type), list(inp.dims)) == (
        "image",
        "TYPE_UINT8",
        [8, 8, 1],
    )
    assert (out.name, model_config_pb2.DataType.Name(out.data_type), list(out.dims)) == (
        "probabilities",
        "TYPE_FP32",
        [10],
    )
    assert config.HasField("dynamic_batching")
    assert (folder / "labels.txt").read_text().splitlines() == [str(d) for d in range(10)]
    recommended = next(v for v in exported.report.variants if v.recommended)
    assert (folder / "1" / "model.onnx").read_bytes() == Path(recommended.path).read_bytes()


def test_export_leaves_only_its_files_in_the_model_folder(exported):
    assert {p.name for p in exported.dir.iterdir()} == {
        "model.keras",
        "metadata.json",
        "classes.txt",
        "model.onnx",
        "model.int8.onnx",
        "model.fp16.onnx",
        "export_report.json",
        "export_report.md",
        "verification.npz",
    }


def test_data_with_some_of_the_classes_is_labelled_with_the_models_classes(digits, tmp_path, digits_data):
    subset = tmp_path / "threes_and_sevens"
    for digit in ("3", "7"):
        shutil.copytree(digits_data / digit, subset / digit)
    model_dir = copy_model_dir(digits.dir, tmp_path / "digits")

    report = export(
        ExportConfig(str(model_dir), data_dir=str(subset), parity_samples=0, latency_batch=4), log=lambda m: None
    )

    assert report.keras_accuracy >= 0.9  # labels 3 and 7, not 0 and 1


def test_export_cli_json_prints_the_report_and_logs_to_stderr(model_copy):
    result = CliRunner().invoke(
        app, ["export", str(model_copy), "--parity-samples", "32", "--latency-batch", "4", "--json"]
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [v["variant"] for v in report["variants"]] == ["fp32"] and report["variants"][0]["recommended"]
    assert report["variants"][0]["keras_agreement"] == 1.0 and report["images"] == 32
    assert "converting to ONNX (opset 17, uint8 NHWC input)" in result.stderr
    assert (model_copy / "model.onnx").is_file()


def test_auto_builds_int8_measures_every_variant_and_recommends_the_fastest_within_budget(model_copy):
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(model_copy),
            "--quantize",
            "auto",
            "--parity-samples",
            "64",
            "--calibration-samples",
            "64",
            "--latency-batch",
            "4",
            "--json",
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    variants = {v["variant"]: v for v in report["variants"]}
    import onnxruntime

    gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert set(variants) == {"fp32", "int8"} | ({"fp16"} if gpu else set())  # auto adds fp16 only where CUDA runs
    assert all(v["latency_ms_b1"] > 0 and v["latency_ms_bn"] > 0 for v in variants.values())
    assert sum(v["recommended"] for v in variants.values()) == 1  # which one: test_the_recommended_variant_...
    from edgecnn.verify import verify

    (best,) = [v for v in variants.values() if v["recommended"]]
    assert verify(best["path"]).passed  # what export recommends, verify passes here: the same images
    assert report["verification"]["images"] == report["images"] == 64


@pytest.mark.parametrize(
    "measured, recommended",
    [
        # (variant, accuracy, p50 ms at batch 1): the fastest within 1 point of fp32's accuracy wins
        ([("fp32", 0.950, 2.0), ("int8", 0.945, 0.8)], "int8"),
        ([("fp32", 0.950, 2.0), ("int8", 0.930, 0.8)], "fp32"),  # int8 is 2 points worse: outside the budget
        ([("fp32", 0.950, 2.0), ("int8", 0.950, 0.8), ("fp16", 0.950, 0.5)], "fp16"),
        ([("fp32", 0.950, 0.7), ("int8", 0.950, 0.8)], "fp32"),  # int8 within budget but slower here
        ([("fp32", 0.950, None), ("int8", 0.950, None)], None),  # nothing measured: nothing recommended
    ],
)
def test_the_recommended_variant_is_the_fastest_within_the_accuracy_budget(measured, recommended):
    from edgecnn.export import VariantReport, _recommend

    reports = [VariantReport(name, f"{name}.onnx", 1, acc, 1.0, 0.0, latency_ms_b1=ms) for name, acc, ms in measured]
    _recommend(reports, fp32_accuracy=0.950, budget_pp=1.0)
    assert [r.variant for r in reports if r.recommended] == ([recommended] if recommended else [])


def test_a_variant_that_verify_would_fail_on_the_kept_images_is_not_recommended():
    from edgecnn.export import VariantReport, _recommend

    reports = [
        VariantReport(n, f"{n}.onnx", 1, 0.95, 1.0, 0.0, latency_ms_b1=ms) for n, ms in (("fp32", 2.0), ("int8", 0.8))
    ]
    _recommend(reports, fp32_accuracy=0.950, budget_pp=1.0, passes_verify=lambda v: v.variant != "int8")
    assert [r.variant for r in reports if r.recommended] == ["fp32"]


def test_exporting_again_into_the_same_triton_repository_updates_it(model_copy, tmp_path):
    runner = CliRunner()
    for layout in ("nhwc", "nchw"):
        res = runner.invoke(
            app,
            [
                "export",
                str(model_copy),
                "--parity-samples",
                "32",
                "--latency-batch",
                "4",
                "--layout",
                layout,
                "--triton",
                str(tmp_path / "repo"),
            ],
        )
        assert res.exit_code == 0, res.output
    served = (tmp_path / "repo" / "digits" / "1" / "model.onnx").read_bytes()
    assert served == (model_copy / "model.onnx").read_bytes()  # the second export's file (NCHW)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["digits"]


def test_a_new_export_removes_variants_left_from_an_earlier_one_and_says_so(model_copy):
    runner = CliRunner()
    first = runner.invoke(
        app, ["export", str(model_copy), "--parity-samples", "32", "--latency-batch", "4", "--quantize", "fp16"]
    )
    assert first.exit_code == 0, first.output
    assert (model_copy / "model.fp16.onnx").is_file()

    second = runner.invoke(
        app, ["export", str(model_copy), "--parity-samples", "32", "--latency-batch", "4", "--layout", "nchw"]
    )

    assert second.exit_code == 0, second.output
    assert not (model_copy / "model.fp16.onnx").exists()
    assert "model.fp16.onnx from an earlier export" in second.stderr
    report = json.loads((model_copy / "export_report.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["fp32"]


# --- INT8 fallbacks ---------------------------------------------------------------------------


@pytest.fixture
def calibration(validation) -> np.ndarray:
    return validation[0][:32]


def _int8_graph(exported):
    return onnx.load(str(exported.dir / "model.int8.onnx")).graph


def _weights_quantized(model, node_name: str) -> bool:
    """Whether node `node_name` of a QDQ model reads a dequantized initializer (its weights are INT8)."""
    inits = {t.name for t in model.graph.initializer}
    dq_of_weights = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    node = next(n for n in model.graph.node if n.name == node_name)
    return any(name in dq_of_weights for name in node.input)


def test_sensitivity_ranks_every_quantized_layer_most_harmful_first(exported, calibration, tmp_path):
    from edgecnn.quantize import quantize_int8
    from edgecnn.sensitivity import rank_layers

    int8 = quantize_int8(
        exported.dir / "model.onnx", tmp_path / "m.int8.onnx", calibration, keep_float=tmp_path / "f.onnx"
    )
    ranking = rank_layers(tmp_path / "f.onnx", int8, calibration)

    ops = {s.op_type for s in ranking}
    assert "Conv" in ops and ops & {"MatMul", "Gemm"}  # the digits CNN's convolutions and dense layers are measured
    assert len({s.node for s in ranking}) == len(ranking)
    assert [s.sqnr_db for s in ranking] == sorted(s.sqnr_db for s in ranking)
    assert all(0.0 <= s.agreement <= 1.0 for s in ranking)
    assert ranking[0].sqnr_db < ranking[-1].sqnr_db  # some layers do hurt more than others


def test_sqnr_is_the_ratio_of_signal_to_difference_in_decibels():
    from edgecnn.sensitivity import sqnr_db

    reference = np.array([[3.0, 4.0]])
    assert sqnr_db(reference, reference * 0.9) == pytest.approx(20.0)  # noise is 1/10 of the signal's amplitude
    assert sqnr_db(reference, reference) == float("inf")


def test_int8_keeps_the_most_sensitive_layers_in_float_one_at_a_time_until_the_budget_holds(
    exported, calibration, tmp_path
):
    from edgecnn.quantize import Int8Budget, quantize_within_budget

    fp32 = exported.dir / "model.onnx"
    calls: list[Path] = []

    def evaluate(path: Path):
        calls.append(path)  # accuracy recovers 3 points per try: a budget of 1 point needs 3 layers in float
        return 0.99 - 0.03 * max(0, 4 - len(calls)), [1.0] * 10

    result = quantize_within_budget(
        fp32, tmp_path / "model.int8.onnx", calibration, evaluate, Int8Budget(0.99, 1.0), log=lambda m: None
    )

    ranked = [s.node for s in result.sensitivity]
    assert result.path == tmp_path / "model.int8.onnx" and result.path.is_file()
    assert len(calls) == 4
    assert [(a.recipe, a.accepted) for a in result.attempts] == [
        ("all layers quantized", False),
        ("1 most sensitive layer in float", False),
        ("2 most sensitive layers in float", False),
        ("3 most sensitive layers in float", True),
    ]
    assert [a.drop_pp for a in result.attempts] == pytest.approx([9.0, 6.0, 3.0, 0.0])
    assert [a.nodes_in_float for a in result.attempts] == [[], ranked[:1], ranked[:2], ranked[:3]]
    model = onnx.load(str(result.path))
    ops = {n.name: n.op_type for n in model.graph.node}
    weighted = [node for node in ranked[:3] if ops[node] in ("Conv", "Gemm", "MatMul")]
    assert weighted and not any(_weights_quantized(model, node) for node in weighted)
    assert all(_weights_quantized(model, node) for node in ranked[3:] if ops[node] in ("Conv", "Gemm", "MatMul"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]  # no candidate or float copies left


def test_int8_within_budget_quantizes_every_layer_and_still_ranks_them(exported, calibration, tmp_path):
    from edgecnn.quantize import Int8Budget, quantize_within_budget

    result = quantize_within_budget(
        exported.dir / "model.onnx",
        tmp_path / "model.int8.onnx",
        calibration,
        lambda path: (0.99, [1.0] * 10),
        Int8Budget(0.99, 1.0),
        log=lambda m: None,
    )

    assert [(a.recipe, a.accepted, a.nodes_in_float) for a in result.attempts] == [("all layers quantized", True, [])]
    assert result.sensitivity and result.accepted is result.attempts[0]


def test_int8_gives_up_after_a_bounded_number_of_float_layers(exported, calibration, tmp_path):
    from edgecnn.quantize import Int8Budget, quantize_within_budget

    result = quantize_within_budget(
        exported.dir / "model.onnx",
        tmp_path / "model.int8.onnx",
        calibration,
        lambda path: (0.5, [0.5] * 10),
        Int8Budget(0.99, 1.0),
        max_float_layers=2,
        log=lambda m: None,
    )

    assert result.path is None and result.accepted is None
    assert [len(a.nodes_in_float) for a in result.attempts] == [0, 1, 2]
    assert all(a.drop_pp == pytest.approx(49.0) for a in result.attempts)
    assert list(tmp_path.iterdir()) == []


def test_the_worst_class_budget_rejects_int8_that_keeps_overall_accuracy(exported, calibration, tmp_path):
    from edgecnn.quantize import Int8Budget, quantize_within_budget

    fp32_recall = (1.0, 1.0, 1.0)
    scores = iter([(0.99, [1.0, 0.95, 1.0]), (0.99, [1.0, 0.98, 1.0]), (0.99, [1.0, 0.995, 1.0])])

    result = quantize_within_budget(
        exported.dir / "model.onnx",
        tmp_path / "model.int8.onnx",
        calibration,
        lambda path: next(scores),
        Int8Budget(0.99, 1.0, fp32_recall, max_class_drop_pp=1.0),
        log=lambda m: None,
    )

    assert [(a.accepted, a.worst_class) for a in result.attempts] == [(False, 1), (False, 1), (True, 1)]
    assert [a.worst_class_drop_pp for a in result.attempts] == pytest.approx([5.0, 2.0, 0.5])
    assert [a.drop_pp for a in result.attempts] == pytest.approx([0.0, 0.0, 0.0])
    assert len(result.attempts[-1].nodes_in_float) == 2


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_works_when_the_images_do_not_fill_the_last_batch(
    exported, calibration, tmp_path, method
):
    from edgecnn.quantize import Int8Config, quantize_int8

    out = quantize_int8(
        exported.dir / "model.onnx",
        tmp_path / "model.int8.onnx",
        calibration[:20],  # 16 + 4
        Int8Config(calibration_method=method),
    )
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)


# --- bad input through the CLI ----------------------------------------------------------------


def _user_error(result, *fragments: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    for fragment in fragments:
        assert fragment in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def model_copy(digits, tmp_path) -> Path:
    return copy_model_dir(digits.dir, tmp_path / "digits")


def _export_cli(model_dir: Path, *options: str):
    before = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else None
    result = CliRunner().invoke(app, ["export", str(model_dir), "--parity-samples", "32", *options])
    after = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else None
    assert after == before  # no partial exports, no temporary folders
    return result


def test_a_folder_that_is_not_a_trained_model_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()

    _user_error(
        _export_cli(tmp_path / "photos"), "is not a trained edgecnn model (no metadata.json)", "edgecnn train --out"
    )


def test_a_model_folder_without_its_keras_model_is_refused(model_copy):
    (model_copy / "model.keras").unlink()

    _user_error(_export_cli(model_copy), f"{model_copy} has no model.keras; train again with: edgecnn train --out")


def _set_schema(model_dir: Path, top: int, model: int) -> None:
    record = json.loads((model_dir / "metadata.json").read_text())
    record["schema_version"], record["model"]["schema_version"] = top, model
    (model_dir / "metadata.json").write_text(json.dumps(record))


def test_a_model_from_a_newer_edgecnn_is_refused(model_copy):
    _set_schema(model_copy, 99, 99)

    _user_error(_export_cli(model_copy), "written by a newer edgecnn (metadata schema 99", "pip install -U edgecnn")


def test_a_metadata_file_whose_own_schema_is_newer_is_refused(model_copy):
    _set_schema(model_copy, 99, 1)

    _user_error(_export_cli(model_copy), "newer edgecnn")


def test_a_missing_data_folder_is_named(model_copy):
    _user_error(
        _export_cli(model_copy, "--data", "/missing"),
        "calibration/validation folder /missing does not exist; pass --data DIR",
    )


def test_too_few_calibration_images_stop_int8(model_copy, tmp_path, digits_data):
    source = digits_data
    for subset, offset in (("train", 0), ("val", 1)):
        for digit in range(10):  # one image per class in each subset
            png = sorted((source / str(digit)).glob("*.png"))[offset]
            (tmp_path / "few" / subset / str(digit)).mkdir(parents=True)
            shutil.copy(png, tmp_path / "few" / subset / str(digit) / png.name)

    _user_error(
        _export_cli(model_copy, "--data", str(tmp_path / "few"), "--quantize", "int8"),
        f"only 10 calibration images in {tmp_path / 'few'}; INT8 needs at least 16",
    )
    assert not (model_copy / "model.onnx").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--quantize", "int4"], "--quantize int4: expected one of fp32, int8, fp16, auto"),
        (["--input-dtype", "float16"], "--input-dtype float16: expected uint8 or float32"),
        (["--layout", "nhcw"], "--layout nhcw: expected nhwc or nchw"),
        (["--max-class-drop", "-1"], "--max-class-drop -1.0: expected 0 or more percentage points"),
        (["--max-accuracy-drop", "-0.5"], "--max-accuracy-drop -0.5: expected 0 or more percentage points"),
    ],
)
def test_unknown_export_options_are_errors(model_copy, options, message):
    _user_error(_export_cli(model_copy, *options), message)


def test_int8_that_misses_the_class_budget_fails_in_one_line_naming_the_class_and_the_budget(
    exported, calibration, tmp_path
):
    from edgecnn.variants import Build, build_int8

    fp32 = _variant(exported.report, "fp32")

    def score(path, note=""):  # every INT8 candidate loses a third of class 0s recall and nothing overall
        recall = [fp32.class_recall[0] * 2 / 3, *fp32.class_recall[1:]]
        return export_module.VariantReport("int8", str(path), 0, fp32.accuracy, 1.0, 0.0, class_recall=recall)

    report = export_module.ExportReport(
        str(exported.dir), fp32.accuracy, 200, 8, class_names=[str(d) for d in range(10)]
    )
    config = ExportConfig(str(exported.dir), max_class_drop=5.0)
    build = Build(
        config,
        tmp_path,
        exported.dir / "model.onnx",
        fp32.accuracy,
        calibration,
        score,
        None,
        report,
        lambda m: None,
        fp32_recall=tuple(fp32.class_recall),
    )

    with pytest.raises(export_module.EdgecnnError) as caught:
        build_int8(build)

    message = str(caught.value)
    assert "\n" not in message
    tried = min(8, len(report.int8_sensitivity))
    assert message.startswith(
        f"int8 still loses {100 / 3 * fp32.class_recall[0]:.2f} recall points on class 0 (--max-class-drop 5) with its {tried} most sensitive layers in float (at most 8 are tried); "
    )
    assert len(report.int8_attempts) == 1 + tried and 1 <= len(report.int8_sensitivity) <= 10
    assert all(a["worst_class"] == 0 and a["worst_class_drop_pp"] >= 33 for a in report.int8_attempts)


def _fold_then_corrupt(real_fold):
    """A converter bug: every image gets +20 on class 0's logit before the softmax."""

    def fold(src: Path, dst: Path) -> None:
        real_fold(src, dst)
        model = onnx.load(str(dst))
        nodes = list(model.graph.node)
        index, softmax = next((i, n) for i, n in enumerate(nodes) if n.op_type == "Softmax")
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.eye(1, 10, dtype=np.float32)[0] * 20, "bug"))
        nodes.insert(index, onnx.helper.make_node("Add", [softmax.input[0], "bug"], ["logits_with_bug"]))
        softmax.input[0] = "logits_with_bug"
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(dst))

    return fold


def test_a_failed_parity_gate_writes_no_model(model_copy, monkeypatch):
    monkeypatch.setattr(convert_module, "_fold", _fold_then_corrupt(convert_module._fold))

    result = _export_cli(model_copy, "--quantize", "int8")

    _user_error(result, "parity check failed: the ONNX model agrees with Keras on", "(need 100%)", "no file written")
    assert not (model_copy / "model.onnx").exists()


def test_a_failed_conversion_names_the_cause(model_copy, monkeypatch):
    def unsupported(*args, **kwargs):
        raise ValueError("Unsupported ops: Counter({'ImageProjectiveTransformV3': 1})")

    monkeypatch.setattr("tf2onnx.convert.from_function", unsupported)

    _user_error(
        _export_cli(model_copy),
        "tf2onnx could not convert the model: Unsupported ops: Counter({'ImageProjectiveTransformV3': 1})",
    )


def test_conversion_runs_tf2onnx_without_its_safety_copies_and_retries_with_them_if_that_fails(monkeypatch):
    import types

    seen = []

    def from_function(fn, input_signature, opset):
        seen.append(os.environ.get("TF2ONNX_CATCH_ERRORS"))
        if len(seen) == 1:
            raise RuntimeError("an optimizer pass failed")
        return "proto", None

    fake = types.SimpleNamespace(convert=types.SimpleNamespace(from_function=from_function))
    monkeypatch.setenv("TF2ONNX_CATCH_ERRORS", "set by the user")

    assert convert_module._from_function(fake, None, None, 17) == "proto"
    assert seen == ["FALSE", "set by the user"]  # the fast pass, then tf2onnx's own default
    assert os.environ["TF2ONNX_CATCH_ERRORS"] == "set by the user"
