"""A third architecture added as one registry entry (models.py): MobileNetV2 with random weights is
trained, exported with its INT8 variant, and served like the others."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from trained_models import _train

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("mobilenet_model")
    data = make_image_folder(root / "shapes", per_class=16, size=32)
    return _train(
        root / "mobilenetv2",
        data_dir=str(data),
        model="mobilenetv2",
        alpha=0.35,
        weights="none",
        epochs=1,
        batch_size=8,
        validation_split=0.25,
    )


def test_the_architecture_registry_describes_each_entry_in_one_place():
    from edgecnn.models import ARCHITECTURES
    from edgecnn.train import choose_image_size

    assert set(ARCHITECTURES) == {"cnn", "resnet50", "mobilenetv2"}
    mobile = ARCHITECTURES["mobilenetv2"]
    assert (mobile.rgb, mobile.sides, mobile.backbone) == (True, (32, 224), "mobilenetv2")
    assert choose_image_size("mobilenetv2", 20) == (32, 32) and choose_image_size("cnn", 20) == (20, 20)


def test_mobilenetv2_trains_exports_int8_and_serves(mobilenet, tmp_path):
    from edgecnn.export import ExportConfig, export
    from edgecnn.metadata import read_onnx_metadata
    from edgecnn.runtime import Runner
    from edgecnn.serve.config import ServeConfig
    from edgecnn.serve.server import create_app

    model_dir = mobilenet.dir
    assert mobilenet.result.metadata.channels == 3 and mobilenet.result.metadata.image_size == (32, 32)
    report = export(
        ExportConfig(
            str(model_dir), quantize=("int8",), max_accuracy_drop=100.0, latency_batch=2, min_calibration_samples=8
        ),
        log=lambda _m: None,
    )
    assert {v.variant for v in report.variants} == {"fp32", "int8"}
    fp32 = next(v for v in report.variants if v.variant == "fp32")
    assert fp32.keras_agreement == 1.0  # the parity gate, as for every architecture
    meta = read_onnx_metadata(model_dir / "model.int8.onnx")
    assert (meta.architecture, meta.preprocessing.scale, meta.preprocessing.offset) == ("mobilenetv2", 1 / 127.5, -1.0)

    app = create_app(Runner(model_dir / "model.int8.onnx"), ServeConfig(max_queue_delay_ms=0))
    png = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(png, "PNG")

    async def classify():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            async with app.router.lifespan_context(app):
                return await http.post(
                    "/v2/models/mobilenetv2/classify?top_k=2",
                    content=png.getvalue(),
                    headers={"content-type": "image/png"},
                )

    reply = asyncio.run(classify())
    assert reply.status_code == 200, reply.text
    labels = [p["label"] for p in reply.json()["predictions"]]
    assert len(labels) == 2 and set(labels) <= {"circle", "square"}


def _batchnorm_momenta(model) -> set[float]:
    from keras import layers

    from edgecnn.models import backbone_of

    return {layer.momentum for layer in backbone_of(model).layers if isinstance(layer, layers.BatchNormalization)}


@pytest.mark.parametrize("architecture", ["mobilenetv2", "resnet50"])
def test_a_backbone_from_random_weights_gets_a_batchnorm_momentum_its_moving_statistics_can_follow(architecture):
    from edgecnn.models import FROM_SCRATCH_BN_MOMENTUM, ArchitectureOptions, ModelSpec, build_model

    def momenta(**options):
        spec = ModelSpec(architecture, (32, 32), 3, 3, ArchitectureOptions(alpha=0.35, **options))
        return _batchnorm_momenta(build_model(spec))

    assert momenta() == {FROM_SCRATCH_BN_MOMENTUM} and FROM_SCRATCH_BN_MOMENTUM < 0.99
    assert momenta(bn_momentum=0.8) == {0.8}


def test_a_pretrained_backbone_keeps_the_keras_batchnorm_momentum(tmp_path):
    import keras

    from edgecnn.models import ArchitectureOptions, ModelSpec, build_model

    weights = tmp_path / "mobilenet_notop.weights.h5"
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None).save_weights(
        weights
    )
    spec = ModelSpec("mobilenetv2", (32, 32), 3, 3, ArchitectureOptions(alpha=0.35, weights=str(weights)))

    assert _batchnorm_momenta(build_model(spec)) == {0.999}  # Keras' own: fine-tuning is unchanged


def test_a_batchnorm_momentum_outside_0_to_1_is_refused_by_its_flag(tmp_path):
    from typer.testing import CliRunner

    from edgecnn.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path), "--model", "mobilenetv2", "--bn-momentum", "1.0"])

    assert result.exit_code == 1 and "--bn-momentum 1.0: expected a momentum from 0 up to" in result.output
