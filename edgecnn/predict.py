"""`edgecnn predict`: classify image files and folders with an ONNX model, batch by batch.

Decoding runs in a thread pool and overlaps inference: while batch i runs, batch i+1 is
being decoded (Pillow releases the GIL). An image that cannot be decoded is reported in its
row and counted; the others go on. A labelled folder (class subfolders named like the
model's classes) also gets accuracy and a confusion matrix.

Device path: never imports TensorFlow.

Over 400 lines: batch prediction and its three output formats (table, JSON lines, CSV),
which render the same result records.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TextIO

import numpy as np

from edgecnn.errors import DataError, EdgecnnError, check_at_least
from edgecnn.registry import Registry
from edgecnn.runtime import ForeignModelSettings, Runner, RunnerConfig, top_k


@dataclass(frozen=True)
class PredictConfig:
    """What to classify and how. `inputs` are image files and folders (searched recursively)."""

    model: Path
    inputs: tuple[Path, ...]
    batch_size: int = 32  # images per inference call
    top_k: int = 3  # classes reported per image
    runner: RunnerConfig = RunnerConfig()
    foreign: ForeignModelSettings | None = None  # used only when the model has no edgecnn metadata
    decode_threads: int | None = None  # None: logical cores, at most 8

    def __post_init__(self):
        check_at_least("batch_size", self.batch_size, 1)
        check_at_least("top_k", self.top_k, 1)
        if self.decode_threads is not None:
            check_at_least("decode_threads", self.decode_threads, 1)
        if not self.inputs:
            raise EdgecnnError("no images given: pass image files or folders after the model")


@dataclass(frozen=True)
class ImagePrediction:
    """One image's answer: the top-k (label, probability) pairs, or the error that stopped it."""

    path: str
    top: tuple[tuple[str, float], ...] = ()
    error: str | None = None
    true_label: str | None = None  # from a labelled folder

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def score(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": name, "probability": p} for name, p in self.top],
            "true_label": self.true_label,
            "error": self.error,
        }


@dataclass(frozen=True)
class Confusion:
    """matrix[i][j]: images of true class `labels[i]` predicted as `labels[j]`."""

    labels: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "matrix": [list(row) for row in self.matrix]}


@dataclass(frozen=True)
class PredictResult:
    model: str
    provider: str
    runner_summary: str  # one line for people: which provider ran and why
    rows: tuple[ImagePrediction, ...]
    skipped: tuple[str, ...]  # files in the folders that are not images
    seconds: float
    batch_size: int
    top_k: int
    accuracy: float | None = None  # over labelled images that decoded
    labelled: int = 0
    confusion: Confusion | None = None
    runner: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.rows if r.error is not None)

    @property
    def images_per_second(self) -> float:
        ok = self.count - self.failed
        return ok / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        """Everything but the rows: the last line of `--format json`."""
        return {
            "model": self.model,
            "provider": self.provider,
            "runner": self.runner,
            "images": self.count,
            "failed": self.failed,
            "skipped": list(self.skipped),
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "batch_size": self.batch_size,
            "top_k": self.top_k,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "confusion": self.confusion.to_dict() if self.confusion else None,
        }


def predict(config: PredictConfig, progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Classify every image in `config.inputs`; `progress(done, total)` is called first and after each batch.

    Raises `EdgecnnError` for mistakes that stop everything (no model, no images, bad options);
    an undecodable image only fills its row's `error`.
    """
    from edgecnn.images import find_images

    runner_config = config.runner
    if runner_config.allow_spinning is None:  # decoding runs beside the model: don't let idle threads spin
        runner_config = replace(runner_config, allow_spinning=False)
    runner = Runner(config.model, runner_config, foreign=config.foreign)
    files, skipped = find_images(config.inputs)
    if not files:
        raise DataError(
            f"no images in {', '.join(str(p) for p in config.inputs)}: expected files ending in .png, .jpg, .jpeg, .bmp, ..."
        )
    names = runner.metadata.class_names
    k = min(config.top_k, len(names))
    truth = true_labels(config.inputs, names)
    rows: list[ImagePrediction] = []
    if progress is not None:
        progress(0, len(files))
    started = time.perf_counter()
    for batch in decode_batches(runner.load, files, config.batch_size, config.decode_threads):
        rows.extend(classify_batch(runner, batch, k, truth))
        if progress is not None:
            progress(len(rows), len(files))
    seconds = time.perf_counter() - started
    accuracy, labelled, confusion = score_rows(rows, names)
    return PredictResult(
        model=str(config.model),
        provider=runner.provider,
        runner_summary=runner.one_line(),
        rows=tuple(rows),
        skipped=tuple(str(s) for s in skipped),
        seconds=seconds,
        batch_size=config.batch_size,
        top_k=k,
        accuracy=accuracy,
        labelled=labelled,
        confusion=confusion,
        runner=runner.describe(),
    )


NAN_ERROR = "the model produced NaN or infinite scores for this image"


def classify_batch(
    runner: Runner, batch: "DecodedBatch", k: int, truth: Callable[[Path], str | None] = lambda path: None
) -> list[ImagePrediction]:
    """One decoded batch -> one row per file, in order (shared with `predict --ray`'s actors)."""
    names = runner.metadata.class_names
    probabilities = runner.predict(batch.images) if batch.images else np.zeros((0, len(names)), np.float32)
    idx, val = top_k(probabilities, k)
    answers = iter(zip(idx.tolist(), val.tolist()))
    rows = []
    for path, error in zip(batch.paths, batch.errors):
        if error is not None:
            rows.append(ImagePrediction(str(path), error=error, true_label=truth(path)))
            continue
        i, v = next(answers)
        if not np.isfinite(v).all():  # a broken model: this image's answer is no answer
            rows.append(ImagePrediction(str(path), error=NAN_ERROR, true_label=truth(path)))
            continue
        rows.append(
            ImagePrediction(str(path), top=tuple((names[c], float(p)) for c, p in zip(i, v)), true_label=truth(path))
        )
    return rows


# -- overlapped decoding (shared with `edgecnn profile --images`) ---------------------------
@dataclass
class DecodedBatch:
    """One batch of files: `images` holds the decoded ones in order; `errors[i]` is None or file i's error."""

    paths: list[Path]
    images: list[np.ndarray]
    errors: list[str | None]
    decode_seconds: float  # summed over worker threads


def _lower_priority() -> None:
    """Decode threads yield to the model's threads: decoding fills the cores' idle moments
    instead of delaying the model run that the next batch waits for (Linux: per-thread nice)."""
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


def default_decode_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_batches(
    load: Callable[[Path], np.ndarray], paths: Iterable[Path], batch_size: int, workers: int | None = None
) -> Iterator[DecodedBatch]:
    """Decode `paths` with `load` in a thread pool, `batch_size` at a time, one batch ahead.

    While the caller works on batch i, batch i+1 is already being decoded. `paths` may be
    an endless iterator (profile cycles through a folder); stop by closing the generator.
    """
    chunks = _chunks(iter(paths), batch_size)
    pool = ThreadPoolExecutor(
        max_workers=workers or default_decode_threads(),
        thread_name_prefix="edgecnn-decode",
        initializer=_lower_priority,
    )
    try:
        chunk = next(chunks, None)
        pending = [pool.submit(_decode_one, load, p) for p in chunk] if chunk else []
        while chunk:
            current_paths, current = chunk, pending
            chunk = next(chunks, None)
            pending = [pool.submit(_decode_one, load, p) for p in chunk] if chunk else []
            results = [f.result() for f in current]
            yield DecodedBatch(
                paths=list(current_paths),
                images=[image for image, _, _ in results if image is not None],
                errors=[error for _, error, _ in results],
                decode_seconds=sum(t for _, _, t in results),
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(it: Iterator[Path], size: int) -> Iterator[list[Path]]:
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def _decode_one(load, path: Path) -> tuple[np.ndarray | None, str | None, float]:
    started = time.perf_counter()
    try:
        image = load(path)
    except EdgecnnError as exc:
        return None, _without_prefix(str(exc), path), time.perf_counter() - started
    except Exception as exc:  # a decoder bug on one odd file must not stop ten thousand others
        return None, f"not a decodable image ({type(exc).__name__}: {exc})", time.perf_counter() - started
    return image, None, time.perf_counter() - started


def _without_prefix(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


# -- labelled folders -----------------------------------------------------------------------
def true_labels(inputs: Sequence[Path], class_names: Sequence[str]) -> Callable[[Path], str | None]:
    """A function path -> true class, for folders whose subfolders are all named like classes."""
    known = set(class_names)
    roots = []
    for p in inputs:
        p = Path(p)
        if not p.is_dir():
            continue
        subdirs = [d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if subdirs and all(name in known for name in subdirs):
            roots.append(p)

    def truth(path: Path) -> str | None:
        for root in roots:
            try:
                parts = Path(path).relative_to(root).parts
            except ValueError:
                continue
            if len(parts) > 1:
                return parts[0]
        return None

    return truth


def score_rows(rows: Sequence[ImagePrediction], names: Sequence[str]) -> tuple[float | None, int, Confusion | None]:
    """(accuracy, how many rows were scored, confusion matrix) over the rows with a true label and
    no error; (None, 0, None) when there are none. Shared by `predict` and `edgecnn.ray_predict`."""
    scored = [r for r in rows if r.true_label is not None and r.error is None]
    if not scored:
        return None, 0, None
    from edgecnn.confusion import confusion_matrix

    index = {name: i for i, name in enumerate(names)}
    matrix = confusion_matrix([index[r.true_label] for r in scored], [index[r.label] for r in scored], len(names))
    accuracy = float(np.trace(matrix)) / len(scored)
    return accuracy, len(scored), Confusion(tuple(names), tuple(tuple(int(v) for v in row) for row in matrix))


# -- output formats: one function each, chosen by name ------------------------------------
OUTPUT_FORMATS: Registry[Callable[[PredictResult, TextIO], None]] = Registry("format")
output_format = OUTPUT_FORMATS.register  # @output_format("name") on a writer fn(result, out)


def write_output(result: PredictResult, fmt: str, out: TextIO) -> None:
    """Write `result` to `out` as `fmt` (table, json or csv; an unknown one is a SettingError)."""
    OUTPUT_FORMATS[fmt](result, out)


@output_format("table")
def _write_table(result: PredictResult, out: TextIO) -> None:
    from edgecnn.tables import Table

    labelled = result.labelled > 0
    table = Table(title=f"{result.model}: {result.count} images")
    table.add_column("image")
    if labelled:
        table.add_column("true")
    table.add_column("label")
    table.add_column("score", right=True)
    table.add_column(f"top {result.top_k}")
    table.add_column("error")
    for r in result.rows:
        cells = [r.path] + ([r.true_label or ""] if labelled else [])
        cells += [
            r.label or "",
            f"{r.score:.4f}" if r.score is not None else "",
            ", ".join(f"{name} {p:.3f}" for name, p in r.top),
            r.error or "",
        ]
        table.add_row(*cells)  # made printable: a file name cannot send escape sequences to the terminal
    lines = [table.render(), *summary_lines(result)]
    if result.confusion is not None:
        lines.append(confusion_table(result.confusion).render())
    out.write("\n".join(lines) + "\n")


@output_format("json")
def _write_json_lines(result: PredictResult, out: TextIO) -> None:
    for r in result.rows:
        out.write(json.dumps({"type": "prediction", **r.to_dict()}) + "\n")
    out.write(json.dumps({"type": "summary", **result.summary()}) + "\n")


@output_format("csv")
def _write_csv(result: PredictResult, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    header = ["path", "true_label", "label", "score"]
    for i in range(1, result.top_k + 1):
        header += [f"top{i}_label", f"top{i}_probability"]
    writer.writerow(header + ["error"])
    for r in result.rows:
        cells = [r.path, r.true_label or "", r.label or "", "" if r.score is None else repr(r.score)]
        for i in range(result.top_k):
            name, p = r.top[i] if i < len(r.top) else ("", None)
            cells += [name, "" if p is None else repr(p)]
        writer.writerow([_csv_cell(c) for c in cells + [r.error or ""]])


def _csv_cell(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula (OWASP: prefix =, +, -, @, tab, CR with ')."""
    if value and value[0] in "=+-@\t\r" and not _is_number(value):
        return "'" + value
    return value


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def summary_lines(result: PredictResult) -> list[str]:
    """The few lines people read under the rows: counts, speed, accuracy."""
    lines = [
        f"{result.count - result.failed} of {result.count} images classified in {result.seconds:.2f} s "
        f"({result.images_per_second:.1f} images/s, batch {result.batch_size})"
    ]
    if result.failed:
        lines.append(f"{result.failed} image(s) could not be read (see the error column)")
    if result.skipped:
        lines.append(f"{len(result.skipped)} non-image file(s) skipped")
    if result.accuracy is not None:
        lines.append(f"accuracy {result.accuracy:.4f} on {result.labelled} labelled images")
    return lines


def confusion_table(confusion: Confusion):
    """The confusion matrix as an `edgecnn.tables.Table`."""
    from edgecnn.tables import Table

    table = Table(title="confusion matrix (rows: true class, columns: predicted)")
    table.add_column("true \\ predicted")
    for name in confusion.labels:
        table.add_column(name, right=True)
    for name, row in zip(confusion.labels, confusion.matrix):
        table.add_row(name, *row)
    return table
