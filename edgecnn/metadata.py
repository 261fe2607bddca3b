"""The contract between stages: what a model takes, how it was preprocessed, what it predicts.

`ModelMetadata` travels from training (``models/NAME/metadata.json``) into every exported
ONNX file (``metadata_props``), so ``predict``, ``profile`` and ``serve`` need nothing but
the ``.onnx`` file. A foreign ONNX model without it still runs: the user states what the
metadata would have said (`ModelMetadata.for_foreign_model`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecnn import __version__
from edgecnn.errors import ModelError, first_line

SCHEMA_VERSION = 1
ONNX_KEY = "edgecnn.metadata"
METADATA_FILE = "metadata.json"
# The files `edgecnn export` writes into a model folder, one per variant.
LAYOUTS = ("nhwc", "nchw")  # of the model's input: the one list every check uses
INPUT_DTYPES = ("uint8", "float32")
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}

IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels (0-255, RGB or gray) become the network's input.

    mode: "rescale" (x * scale + offset), "caffe" (ResNet50: RGB->BGR, minus `mean`),
    or "none". When `in_graph` is true (every edgecnn export), this already happens inside
    the model and callers feed raw pixels; it is recorded so people and tools can see it.
    """

    mode: str = "rescale"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    mean: tuple[float, ...] | None = None
    color_order: str = "RGB"
    in_graph: bool = True

    def apply(self, x):
        """Apply to a float array of raw pixels (..., C); used where the graph does not."""
        import numpy as np

        x = np.asarray(x, dtype=np.float32)
        if self.mode == "rescale":
            return x * np.float32(self.scale) + np.float32(self.offset)
        if self.mode == "caffe":
            if x.shape[-1] == 3:
                x = x[..., ::-1]
            return x - np.asarray(self.mean or IMAGENET_CAFFE_MEAN_BGR, dtype=np.float32)
        return x


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a device needs to feed a model and read its answer."""

    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width)
    channels: int = 3
    layout: str = "nhwc"  # of the model input: "nhwc" or "nchw"
    input_dtype: str = "uint8"  # "uint8" or "float32": raw pixels either way
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    architecture: str = "cnn"
    input_name: str = "image"
    output_name: str = "probabilities"
    variant: str = "fp32"  # fp32, int8, fp16
    source_hash: str = ""  # sha256 of the Keras model file the ONNX came from
    edgecnn_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_shape(self, batch: int | None = None) -> tuple:
        """The model input's shape, `batch` in front (None for a dynamic batch)."""
        h, w = self.image_size
        if self.layout == "nchw":
            return (batch, self.channels, h, w)
        return (batch, h, w, self.channels)

    def replace(self, **changes) -> "ModelMetadata":
        return dataclasses.replace(self, **changes)

    # -- serialization ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> "ModelMetadata":
        if not isinstance(data, dict):
            raise ModelError(f"{source}: edgecnn metadata is not a JSON object")
        check_schema(data.get("schema_version", SCHEMA_VERSION), source)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            pre = kwargs.get("preprocessing") or {}
            pre_names = {f.name for f in dataclasses.fields(Preprocessing)}
            pre = {k: v for k, v in pre.items() if k in pre_names}
            if pre.get("mean") is not None:
                pre["mean"] = tuple(float(m) for m in pre["mean"])
            kwargs["preprocessing"] = Preprocessing(**pre)
            kwargs["class_names"] = tuple(str(c) for c in kwargs["class_names"])
            kwargs["image_size"] = tuple(int(s) for s in kwargs["image_size"])
            meta = cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: edgecnn metadata is incomplete or malformed ({exc})") from None
        meta.validate(source)
        return meta

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ModelMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: edgecnn metadata is not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    def validate(self, source: str = "metadata") -> None:
        problems = []
        if len(self.class_names) < 1:
            problems.append("no class names")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            problems.append(f"bad image_size {self.image_size}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, not {self.channels}")
        if self.layout not in LAYOUTS:
            problems.append(f"layout must be nhwc or nchw, not {self.layout!r}")
        if self.input_dtype not in INPUT_DTYPES:
            problems.append(f"input_dtype must be uint8 or float32, not {self.input_dtype!r}")
        if problems:
            raise ModelError(f"{source}: invalid edgecnn metadata: {'; '.join(problems)}")

    @classmethod
    def for_foreign_model(
        cls,
        image_size: tuple[int, int],
        channels: int = 3,
        class_names: tuple[str, ...] | None = None,
        num_classes: int | None = None,
        layout: str = "nhwc",
        input_dtype: str = "float32",
        preprocessing: Preprocessing | None = None,
        input_name: str = "",
        output_name: str = "",
    ) -> "ModelMetadata":
        """Metadata stated by the user for an ONNX model that carries none."""
        if class_names is None:
            class_names = default_class_names(num_classes)
        meta = cls(
            class_names=tuple(class_names),
            image_size=tuple(image_size),
            channels=channels,
            layout=layout,
            input_dtype=input_dtype,
            preprocessing=preprocessing or Preprocessing(mode="none", in_graph=False),
            architecture="foreign",
            input_name=input_name,
            output_name=output_name,
        )
        meta.validate("the stated model settings")
        return meta


def check_schema(version, source: str) -> None:
    """Refuse metadata written by a newer edgecnn (a schema this version cannot read)."""
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ModelError(
            f"{source} was written by a newer edgecnn (metadata schema {version}, this edgecnn "
            f"{__version__} reads up to {SCHEMA_VERSION}): upgrade edgecnn with pip install -U edgecnn"
        )


# -- ONNX files --------------------------------------------------------------------------
def attach_to_onnx(model_proto, meta: ModelMetadata) -> None:
    """Write `meta` into an `onnx.ModelProto`'s metadata_props (replacing an older entry)."""
    props = {p.key: p.value for p in model_proto.metadata_props}
    props[ONNX_KEY] = meta.to_json()
    props["edgecnn.classes"] = ",".join(meta.class_names)
    props["edgecnn.version"] = meta.edgecnn_version
    del model_proto.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def from_custom_map(custom: dict[str, str], source: str) -> ModelMetadata | None:
    """Read metadata from an ONNX custom metadata map (as onnxruntime exposes it), or None."""
    text = custom.get(ONNX_KEY)
    if text is None:
        return None
    return ModelMetadata.from_json(text, source)


def read_onnx_metadata(path: str | Path) -> ModelMetadata | None:
    """Read edgecnn metadata from an .onnx file with onnxruntime alone; None if it has none."""
    from edgecnn.ort import import_onnxruntime

    from edgecnn.onnxfile import check_external_data

    ort = import_onnxruntime()
    path = Path(path)
    check_external_data(path)  # a model may read files from its own folder only
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    return from_custom_map(sess.get_modelmeta().custom_metadata_map, str(path))


def default_class_names(count: int | None) -> tuple[str, ...]:
    """Names for classes nobody named: their indices, "0", "1", ..."""
    return tuple(str(i) for i in range(count or 1))


# -- model folders -----------------------------------------------------------------------
def read_model_dir(model_dir: str | Path) -> tuple[ModelMetadata, dict[str, Any]]:
    """Read ``models/NAME/metadata.json``: the contract and the full training record."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: no such model folder; train one with: edgecnn train --out {model_dir}")
    path = model_dir / METADATA_FILE
    if not path.is_file():
        raise ModelError(
            f"{model_dir} is not a trained edgecnn model (no {METADATA_FILE}); train one with: edgecnn train --out {model_dir}"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict):
        raise ModelError(f"{path}: not an edgecnn metadata file (expected a JSON object)")
    check_schema(record.get("schema_version", SCHEMA_VERSION), str(path))
    meta = ModelMetadata.from_dict(record.get("model", {}), str(path))
    return meta, record


def recommended_file(model_dir: str | Path) -> Path:
    """The file an export's folder runs by default: the variant `edgecnn export` recommended when it
    is there, else model.onnx (which may be missing: the caller says what to do)."""
    model_dir = Path(model_dir)
    report = model_dir / "export_report.json"
    try:
        if not report.is_file():  # missing, or a FIFO that would block the reader forever
            raise FileNotFoundError(report)
        variants = json.loads(report.read_text()).get("variants", [])
        best = next((v for v in variants if v.get("recommended")), None)
        if best and (model_dir / VARIANT_FILES.get(best.get("variant"), "")).is_file():
            return model_dir / VARIANT_FILES[best["variant"]]
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return model_dir / VARIANT_FILES["fp32"]
