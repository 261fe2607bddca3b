"""`edgecnn deploy triton`: a Triton Inference Server model repository for an exported model.

Triton's onnxruntime backend runs the same ONNX file edgecnn exports (raw pixels in,
probabilities out, preprocessing inside the graph), with dynamic batching and the class
names as its label file. `edgecnn export --triton DIR` writes the same repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgecnn.errors import EdgecnnError, check_at_least
from edgecnn.files import atomic_path, replace_files_together, scratch_in
from edgecnn.metadata import ModelMetadata


def deploy_triton(
    model_dir: str | Path,
    out: str | Path,
    name: str | None = None,
    variant: str | None = None,
    max_batch_size: int = 32,
) -> Path:
    """Write OUT/NAME/ for MODEL_DIR's exported variant (default: the one the export recommended)."""
    from edgecnn.deploy import choose_model

    chosen = choose_model(model_dir, variant)
    return write_triton_repository(Path(out), name or chosen.name, chosen.path, chosen.metadata, max_batch_size)


def check_triton_settings(name: str, max_batch_size: int, fix: str) -> None:
    """A one-line error unless `name` is one folder name (never '..', a path or hidden: the repository
    writes ROOT/NAME) and `max_batch_size` is 0 (no batching) or more; `fix` says what to do."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in "/\\")
        or not name.isprintable()
    ):
        raise EdgecnnError(f"model name {name!r}: a Triton model name is one folder name, not a path or hidden; {fix}")
    check_at_least("max_batch_size", max_batch_size, 0, " (0: no batching)")


def write_triton_repository(
    root: Path, name: str, onnx_path: Path, meta: ModelMetadata, max_batch_size: int = 32
) -> Path:
    """Write a Triton model repository: ROOT/NAME/config.pbtxt, labels.txt and 1/model.onnx, all in one
    step (a failure leaves ROOT/NAME as it was)."""
    check_triton_settings(name, max_batch_size, "pass --name")
    dtype = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}[meta.input_dtype]
    dims = list(meta.input_shape(None)[1:])
    config = f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{meta.input_name}"
    data_type: {dtype}
    dims: [ {", ".join(map(str, dims))} ]
  }}
]
output [
  {{
    name: "{meta.output_name}"
    data_type: TYPE_FP32
    dims: [ {meta.num_classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
'''
    folder = root / name
    labels = "\n".join(meta.class_names) + "\n"
    if root.exists() and not root.is_dir():
        raise EdgecnnError(f"cannot write a Triton repository into {root}: it is a file; give a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():  # a new model folder appears whole, or not at all
            with atomic_path(folder) as tmp:
                _write_model_folder(tmp, config, labels, onnx_path)
            return folder
        # An existing one keeps whatever else it holds (other versions), and changes in one step.
        with scratch_in(root, f".{name}.", "a Triton repository is written in its folder") as scratch:
            _write_model_folder(scratch, config, labels, onnx_path)
            replace_files_together(folder, {entry: scratch / entry for entry in ("config.pbtxt", "labels.txt", "1")})
    except OSError as exc:
        raise EdgecnnError(f"cannot write the Triton repository {folder}: {exc.strerror or exc}") from None
    return folder


def _write_model_folder(folder: Path, config: str, labels: str, onnx_path: Path) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    (folder / "labels.txt").write_text(labels)
    shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
