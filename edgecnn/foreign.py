"""Models without edgecnn metadata: what the user states about them, and the parsers of those options.

Device path: standard library and edgecnn's metadata only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgecnn.errors import EdgecnnError, ModelError, check_one_of
from edgecnn.metadata import INPUT_DTYPES, LAYOUTS, ModelMetadata, default_class_names


@dataclass(frozen=True)
class ForeignModelSettings:
    """What the user states about an ONNX model without edgecnn metadata (ignored when it has some).

    image_size: (height, width); None means not stated, which is an error for a foreign model.
    channels / layout / input_dtype: None means "read it from the model's input" where the
    ONNX input shape and type make it unambiguous. class_names: None means "0", "1", ... for
    as many classes as the model's output has.
    """

    image_size: tuple[int, int] | None = None
    channels: int | None = None
    class_names: tuple[str, ...] | None = None
    layout: str | None = None  # nhwc | nchw
    input_dtype: str | None = None  # uint8 | float32

    def __post_init__(self):
        if self.layout is not None:
            check_one_of("layout", self.layout, LAYOUTS)
        if self.input_dtype is not None:
            check_one_of("input_dtype", self.input_dtype, INPUT_DTYPES)
        if self.channels is not None:
            check_one_of("channels", self.channels, (1, 3))

    def to_metadata(
        self, onnx_input_shape: Sequence, onnx_input_type: str, num_outputs: int | None, source: str
    ) -> ModelMetadata:
        """Metadata for a model whose input is `onnx_input_shape` / `onnx_input_type` (as onnxruntime reports)."""
        if self.image_size is None:
            raise ModelError(f"{source} has no edgecnn metadata; {FOREIGN_HINT}")
        dims = [d if isinstance(d, int) else None for d in onnx_input_shape]
        layout = self.layout
        if layout is None:
            layout = "nchw" if len(dims) == 4 and dims[1] in (1, 3) and dims[3] not in (1, 3) else "nhwc"
        channels = self.channels
        if channels is None and len(dims) == 4:
            channels = dims[1] if layout == "nchw" else dims[3]
        actual_dtype = "uint8" if onnx_input_type == "tensor(uint8)" else "float32"
        if self.input_dtype is not None and self.input_dtype != actual_dtype:
            raise ModelError(
                f"{source}: --input-dtype {self.input_dtype} was stated but the model's input is {onnx_input_type}; "
                f"use --input-dtype {actual_dtype} or leave it out"
            )
        names = self.class_names if self.class_names is not None else default_class_names(num_outputs)
        meta = ModelMetadata.for_foreign_model(
            image_size=self.image_size,
            channels=channels or 3,
            class_names=names,
            layout=layout,
            input_dtype=actual_dtype,
        )
        meta.validate(f"{source} (stated settings)")
        return meta


FOREIGN_HINT = (
    "state how to feed it: --image-size HxW [--channels 1|3] [--classes a,b,...|FILE] "
    "[--layout nhwc|nchw] [--input-dtype uint8|float32]"
)


def parse_image_size(text: str) -> tuple[int, int]:
    """'224x224' or '224' -> (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise EdgecnnError(f"--image-size {text!r}: expected HEIGHTxWIDTH such as 224x224")
    return size  # type: ignore[return-value]


def parse_class_names(text: str) -> tuple[str, ...]:
    """'cat,dog' or the path of a text file with one class name per line -> names."""
    path = Path(text)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgecnnError(f"--classes {text}: cannot read the file ({exc})") from None
        names = tuple(line.strip() for line in lines if line.strip())
    else:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise EdgecnnError(f"--classes {text!r}: expected names separated by commas, or a file with one name per line")
    return names
