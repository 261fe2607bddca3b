"""`edgecnn verify`: does this file, on this device and provider, still answer like Keras did?

`edgecnn export` leaves a small verification set in the model folder (`verification.npz`):
class-balanced validation images already at the model's input size (uint8), their labels, the
Keras probabilities for them and the export's accuracy budget. Copying the folder to a device
brings everything needed to check it there, with NumPy and onnxruntime alone.

A variant passes when its accuracy on the set is at most `max_accuracy_drop` points below
Keras' (the export's budget semantics); top-1 agreement with Keras and the largest probability
difference are reported beside it.
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecnn.errors import ModelError, check_at_least
from edgecnn.files import atomic_path

VERIFY_FILE = "verification.npz"
VERIFY_FORMAT = 1
MAX_VERIFY_BYTES = 32 * 1024 * 1024  # of images; fewer images are kept for large inputs
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # one input image (4096x4096 RGB is 48 MiB): the export keeps one at least


@dataclass(frozen=True)
class VerificationSet:
    images: np.ndarray  # (N, H, W, C) uint8, at the model's input size
    labels: np.ndarray  # (N,) int
    probabilities: np.ndarray  # (N, classes) float32, Keras' answers
    class_names: tuple[str, ...]
    max_accuracy_drop: float  # percentage points, the export's budget
    path: Path

    @property
    def keras_accuracy(self) -> float:
        return float((self.probabilities.argmax(1) == self.labels).mean())

    def __len__(self) -> int:
        return len(self.labels)


def no_better_than_chance(vset: VerificationSet, significance: float = 0.01) -> str:
    """A warning when Keras' own answers on the set could be guesses: as many right could come, with
    probability `significance` or more, from always answering the set's most common class. "" otherwise
    (and for one class). A PASS then only says the file matches a model that did not learn."""
    n = len(vset)
    if len(vset.class_names) < 2 or n == 0:
        return ""
    right = int(round(vset.keras_accuracy * n))
    base = np.bincount(vset.labels).max() / n
    if _binomial_tail(n, right, base) < significance:
        return ""
    return (
        f"warning: Keras itself answers {vset.keras_accuracy:.1%} of these {n} images right, no better than always "
        f"answering the most common class ({base:.1%}): the model did not learn, and a PASS only says this file "
        "matches it"
    )


def _binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact enough for n in the thousands)."""
    if k <= 0 or p >= 1:
        return 1.0
    if p <= 0:
        return 0.0
    from math import exp, lgamma, log, log1p

    terms = [
        lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) + i * log(p) + (n - i) * log1p(-p) for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, exp(top) * sum(exp(t - top) for t in terms))


def balanced_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` indices into `labels`, the classes taking turns (first occurrences first)."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count and any(depth < len(m) for m in by_class):
        chosen.extend(int(m[depth]) for m in by_class if depth < len(m))
        depth += 1
    return np.asarray(sorted(chosen[:count]), dtype=np.int64)


def check_verifiable_image(shape) -> int:
    """The bytes of one uint8 input image of `shape` (H, W, C); a ModelError when it is more than
    MAX_IMAGE_BYTES, which no verification set may hold."""
    per_image = int(np.prod(shape))
    if per_image > MAX_IMAGE_BYTES:
        raise ModelError(
            f"one input image of this model ({tuple(shape)}) is {per_image / 2**20:,.0f} MiB, more than "
            f"edgecnn verifies ({MAX_IMAGE_BYTES // 2**20} MiB); export with --verify-samples 0 (no verification set)"
        )
    return per_image


def write_verification_set(
    model_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names,
    max_accuracy_drop: float,
    count: int,
) -> tuple[Path, int, int]:
    """Keep `count` class-balanced images (fewer when they would pass MAX_VERIFY_BYTES) with their
    labels and Keras probabilities; written atomically. Returns (path, images kept, bytes on disk)."""
    per_image = check_verifiable_image(images.shape[1:])
    count = max(1, min(count, MAX_VERIFY_BYTES // max(per_image, 1)))
    idx = balanced_indices(labels, count)
    path = Path(model_dir) / VERIFY_FILE
    info = {"format": VERIFY_FORMAT, "class_names": list(class_names), "max_accuracy_drop": float(max_accuracy_drop)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                images=images[idx].astype(np.uint8),
                labels=labels[idx].astype(np.int32),
                probabilities=probabilities[idx].astype(np.float32),
                info=np.array(json.dumps(info)),
            )
    return path, len(idx), path.stat().st_size


def read_verification_set(model_dir: str | Path) -> VerificationSet:
    """The verification set of a model folder, or a one-line error saying how to make one."""
    model_dir = Path(model_dir)
    path = model_dir / VERIFY_FILE
    if not path.is_file():
        raise ModelError(
            f"{model_dir} has no verification set ({VERIFY_FILE}; an export with --verify-samples 0 makes none); "
            f"make one on the workstation with: edgecnn export {model_dir} [--quantize ...], then copy the folder again"
        )
    try:
        _check_declared_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            info = json.loads(str(data["info"]))
            images, labels, probs = data["images"], data["labels"], data["probabilities"]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{path}: not a readable verification set ({exc}); re-export the model to write it again"
        ) from None
    if not isinstance(info, dict) or info.get("format") != VERIFY_FORMAT:
        raise ModelError(
            f"{path}: verification set format {info.get('format') if isinstance(info, dict) else '?'} "
            f"is not the one this edgecnn reads ({VERIFY_FORMAT}); re-export the model"
        )
    budget = info.get("max_accuracy_drop")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < float("inf"):
        raise ModelError(
            f"{path}: max_accuracy_drop {budget!r} is not a budget (0 or more points); re-export the model"
        )
    n = len(labels)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != n or probs.shape[0] != n or n == 0:
        raise ModelError(f"{path}: verification set arrays do not fit together; re-export the model")
    return VerificationSet(
        images,
        labels.astype(np.int64),
        probs.astype(np.float32),
        tuple(info["class_names"]),
        float(info["max_accuracy_drop"]),
        path,
    )


def _check_declared_sizes(path: Path) -> None:
    """Refuse, from the arrays' headers and before anything is decompressed, a set whose arrays are
    far larger than any export writes (a few MiB compressed can declare gigabytes: a served model's
    update must not take the server's memory). An export keeps at most MAX_VERIFY_BYTES of images
    (one image when a single one is larger, and no model takes an image over MAX_IMAGE_BYTES)."""
    from numpy.lib import format as npy

    declared = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                continue
            with archive.open(member) as fh:
                version = npy.read_magic(fh)
                read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read_header(fh)
            count = 1
            for side in shape:
                count *= side
            declared[member.filename[: -len(".npy")]] = (shape, count * dtype.itemsize)
    shape, size = declared.get("images", ((), 0))
    one_image = declared["images"][1] // max(shape[0], 1) if len(shape) > 1 else 0
    limit = max(MAX_VERIFY_BYTES, min(one_image, MAX_IMAGE_BYTES))
    largest = max((size for _, size in declared.values()), default=0)
    if size > limit or largest > 4 * limit:
        raise ValueError(
            f"its arrays declare {largest / 2**20:,.0f} MiB, more than an export writes "
            f"({limit // 2**20} MiB of images at most)"
        )


@dataclass
class VerifyResult:
    model: str
    provider: str
    runner_summary: str
    images: int
    accuracy: float
    keras_accuracy: float
    drop_pp: float  # keras_accuracy - accuracy, in percentage points
    budget_pp: float
    keras_agreement: float  # top-1
    max_prob_diff: float
    passed: bool
    seconds: float
    runner: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} {Path(self.model).name} on {self.provider}: accuracy {self.accuracy:.2%} vs Keras "
            f"{self.keras_accuracy:.2%} (drop {self.drop_pp:.2f} pp, budget {self.budget_pp:g}), "
            f"top-1 agreement {self.keras_agreement:.2%}, max |dp| {self.max_prob_diff:.1e}, {self.images} images"
        )


def score(runner, vset: VerificationSet, budget_pp: float | None = None, batch: int = 32) -> VerifyResult:
    """Run the verification set through an open `Runner` and judge it."""
    if budget_pp is not None:  # the caller's (a flag); the set's own is checked when it is read
        check_at_least("max_accuracy_drop", budget_pp, 0, " percentage points")
    if tuple(runner.metadata.class_names) != vset.class_names:
        raise ModelError(
            f"{runner.path}: its classes differ from the verification set's ({vset.path}); "
            "is this file from another model?"
        )
    expected = runner.metadata.input_shape(None)[1:]
    h, w = runner.metadata.image_size
    if vset.images.shape[1:] != (h, w, runner.metadata.channels):
        raise ModelError(
            f"{runner.path}: input {list(expected)} does not fit the verification images "
            f"{list(vset.images.shape[1:])}; is this file from another model?"
        )
    started = time.perf_counter()
    probs = np.concatenate([runner.predict(list(vset.images[i : i + batch])) for i in range(0, len(vset), batch)])
    seconds = time.perf_counter() - started
    if not np.all(np.isfinite(probs)):
        accuracy, agreement, max_diff = 0.0, 0.0, float("inf")
    else:
        accuracy = float((probs.argmax(1) == vset.labels).mean())
        agreement = float((probs.argmax(1) == vset.probabilities.argmax(1)).mean())
        max_diff = float(np.abs(probs - vset.probabilities).max())
    budget = vset.max_accuracy_drop if budget_pp is None else budget_pp
    drop = (vset.keras_accuracy - accuracy) * 100
    return VerifyResult(
        model=str(runner.path),
        provider=runner.provider,
        runner_summary=runner.one_line(),
        images=len(vset),
        accuracy=accuracy,
        keras_accuracy=vset.keras_accuracy,
        drop_pp=round(drop, 4),
        budget_pp=budget,
        keras_agreement=agreement,
        max_prob_diff=max_diff,
        passed=bool(drop <= budget + 1e-9),
        seconds=round(seconds, 3),
        runner=runner.describe(),
    )


def verify(model: str | Path, runner_config=None, budget_pp: float | None = None) -> VerifyResult:
    """Verify one ONNX file of a model folder with `runner_config` (default: CPU)."""
    from edgecnn.runtime import Runner, RunnerConfig

    model = Path(model)
    vset = read_verification_set(model.parent)
    runner = Runner(model, runner_config or RunnerConfig(device="cpu"))
    return score(runner, vset, budget_pp)


def has_verification_set(model_dir: str | Path) -> bool:
    return (Path(model_dir) / VERIFY_FILE).is_file()


def verify_runner(runner, budget_pp: float | None = None) -> VerifyResult | None:
    """`edgecnn verify`'s check on an open `Runner` (the configuration about to be served), with the
    export's budget unless `budget_pp`; None when the model's folder has no verification set."""
    folder = Path(runner.path).parent
    if not has_verification_set(folder):
        return None
    return score(runner, read_verification_set(folder), budget_pp)
