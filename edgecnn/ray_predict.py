"""`edgecnn predict --ray`: the same predictions as plain `predict`, as a Ray Data pipeline.

The driver lists the files (folders recursively, globs, text files of paths; or URIs such as
s3://bucket/photos/ through pyarrow's filesystems, read by the actors the same way), checks the model
once, and feeds the paths to `map_batches`; there a pool of actors each holds one
onnxruntime `Runner` (one session per actor, not per batch), decodes its batch with the
same loader as plain `predict` (`Runner.load` -> `edgecnn.images.load_image`) and answers
with the same code (`predict.classify_batch`). The driver streams the answers back: progress,
accuracy and confusion matrix for a labelled folder, the failed images, and with `output`
one row per image written as JSON Lines or Parquet (atomically; rows then are not kept in
memory, so the driver's memory does not grow with the number of images).

Ray is imported inside the functions here only: plain `predict` never imports it.

Over 400 lines: the Ray Data pipeline, its actor and its result: one path, kept beside each
other so that its answers stay equal to `predict`'s.
"""

from __future__ import annotations

import glob
import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from edgecnn.errors import DataError, EdgecnnError, ImageError, SettingError, check_above, check_at_least, require
from edgecnn.predict import (
    Confusion,
    ImagePrediction,
    PredictConfig,
    _score,
    _true_labels,
    classify_batch,
    decode_batches,
)
from edgecnn.row_files import atomic_or_none, output_writer

LOCAL = "local"
GLOB_CHARACTERS = "*?["
LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class RayPredictConfig:
    """`predict` (model, sources, batch size, top-k, runner settings) run on Ray.

    address: "local" starts a Ray on this machine for the run and stops it after (a process
    already connected to Ray uses that connection instead); "auto" joins the cluster this
    machine belongs to; "ray://HOST:PORT" connects to a remote cluster through Ray Client.
    """

    predict: PredictConfig
    address: str = LOCAL
    output: Path | None = None  # .jsonl / .json / .ndjson or .parquet; None: rows kept and returned
    local_cpus: int | None = None  # CPUs of a local Ray; None: all of this machine's
    actors: int | None = None  # actors holding a session each; None: the cluster's CPUs / cpus_per_actor
    cpus_per_actor: float = 1.0  # Ray CPUs reserved per actor; also its onnxruntime threads unless --threads
    gpus_per_actor: float | None = None  # None: 1 for --device cuda*, else 0

    def __post_init__(self):
        if not (
            self.address == LOCAL
            or self.address == "auto"
            or self.address.startswith("ray://")
            or _looks_like_host_port(self.address)
        ):
            raise SettingError("address", self.address, "expected local, auto, ray://HOST:PORT or HOST:PORT")
        if self.local_cpus is not None:
            check_at_least("local_cpus", self.local_cpus, 1)
        if self.actors is not None:
            check_at_least("actors", self.actors, 1)
        check_above("cpus_per_actor", self.cpus_per_actor, 0, "a number of CPUs")
        if self.output is not None:
            output_writer(self.output)  # an unknown extension fails now, not after the run


def _looks_like_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit()


@dataclass(frozen=True)
class RayPredictResult:
    """What `predict` returns, for a run that may be too large to keep every row.

    Has the attributes `predict.write_output` and `predict.summary_lines` read, so the same
    table, json and csv outputs work. `rows` is empty when the rows went to `output`;
    `failures` always lists the images that could not be read.
    """

    model: str
    provider: str
    runner_summary: str
    rows: tuple[ImagePrediction, ...]
    images: int
    failures: tuple[ImagePrediction, ...]
    skipped: tuple[str, ...]
    seconds: float
    batch_size: int
    top_k: int
    accuracy: float | None
    labelled: int
    confusion: Confusion | None
    runner: dict = field(default_factory=dict)
    ray: dict = field(default_factory=dict)  # address, actors, CPUs per actor, providers the actors ran on
    output: str | None = None

    @property
    def count(self) -> int:
        return self.images

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return (self.count - self.failed) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {
            "model": self.model,
            "provider": self.provider,
            "runner": self.runner,
            "ray": self.ray,
            "images": self.count,
            "failed": self.failed,
            "failed_images": [r.path for r in self.failures],
            "skipped": list(self.skipped),
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "batch_size": self.batch_size,
            "top_k": self.top_k,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "confusion": self.confusion.to_dict() if self.confusion else None,
            "output": self.output,
        }


def predict_on_ray(
    config: RayPredictConfig,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> RayPredictResult:
    """Classify every image of `config.predict.inputs` on Ray; `progress(done, total)` as in `predict`.

    Raises `MissingDependency` without the `ray` extra, `EdgecnnError` for mistakes that stop
    everything; an undecodable image only fills its row's `error`.
    """
    from edgecnn.files import check_writable
    from edgecnn.runtime import Runner

    require("ray", "ray")
    pc = config.predict
    files, skipped = list_sources(pc.inputs)
    if not files:
        raise DataError(
            f"no images in {', '.join(str(p) for p in pc.inputs)}: expected files ending in .png, .jpg, .jpeg, ..."
        )
    if config.output is not None:
        check_writable(config.output)
    gpus = (
        config.gpus_per_actor
        if config.gpus_per_actor is not None
        else (1.0 if pc.runner.device.startswith("cuda") else 0.0)
    )
    threads = pc.runner.intra_op_threads or max(1, int(config.cpus_per_actor))
    runner_config = replace(
        pc.runner,
        intra_op_threads=threads,
        allow_spinning=False if pc.runner.allow_spinning is None else pc.runner.allow_spinning,
    )
    checked = Runner(pc.model, runner_config, foreign=pc.foreign)  # a bad model fails here, before Ray starts
    names = checked.metadata.class_names
    k = min(pc.top_k, len(names))
    truth = _true_labels(pc.inputs, names)

    import ray

    with _Connection(config, log) as cluster_cpus:
        actors = config.actors or max(1, int(cluster_cpus // config.cpus_per_actor))
        dataset = _pipeline(ray, files, config, runner_config, k, actors, gpus)
        log(
            f"ray: {len(files)} images, {actors} actor(s) x {config.cpus_per_actor:g} CPU "
            f"({threads} onnxruntime thread(s) each{f', {gpus:g} GPU' if gpus else ''}), batch {pc.batch_size}"
        )
        rows: list[ImagePrediction] = []
        failures: list[ImagePrediction] = []
        scored: list[ImagePrediction] = []  # labelled rows, reduced to what the confusion matrix needs
        providers: set[str] = set()
        done = 0
        if progress is not None:
            progress(0, len(files))
        started = time.perf_counter()
        with atomic_or_none(config.output) as target:
            writer = output_writer(config.output)(target) if target is not None else None
            try:
                for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    batch_rows, batch_providers = _from_table(table, truth)
                    providers.update(batch_providers)
                    for r in batch_rows:
                        if r.error is not None:
                            failures.append(r)
                        elif r.true_label is not None:
                            scored.append(ImagePrediction(r.path, top=r.top[:1], true_label=r.true_label))
                    if writer is not None:
                        writer.write(batch_rows)
                    else:
                        rows.extend(batch_rows)
                    done += len(batch_rows)
                    if progress is not None:
                        progress(done, len(files))
            finally:
                if writer is not None:
                    writer.close()
        seconds = time.perf_counter() - started
    order = {str(p): i for i, p in enumerate(files)}
    rows.sort(key=lambda r: order.get(r.path, 0))  # Ray answers as batches finish; report in listing order
    failures.sort(key=lambda r: order.get(r.path, 0))
    accuracy, labelled, confusion = _score(scored, names)
    ran_on = sorted(providers) or [checked.provider]
    return RayPredictResult(
        model=str(pc.model),
        provider=", ".join(ran_on),
        runner_summary=f"{checked.path.name}: ran on {', '.join(ran_on)} in {actors} Ray actor(s) "
        f"({threads} thread(s) each, --device {checked.device}, Ray at {config.address})",
        rows=tuple(rows),
        images=done,
        failures=tuple(failures),
        skipped=tuple(str(s) for s in skipped),
        seconds=seconds,
        batch_size=pc.batch_size,
        top_k=k,
        accuracy=accuracy,
        labelled=labelled,
        confusion=confusion,
        runner=checked.describe(),
        ray={
            "address": config.address,
            "actors": actors,
            "cpus_per_actor": config.cpus_per_actor,
            "gpus_per_actor": gpus,
            "providers": ran_on,
        },
        output=str(config.output) if config.output is not None else None,
    )


def list_sources(sources: Sequence[str | Path]) -> tuple[list, list]:
    """(image files, skipped non-image files): local paths as `Path`s (`expand_sources`, then
    `images.find_images`, as plain predict lists them), or URIs such as s3://bucket/photos/ or
    gs://... as strings, listed through pyarrow's filesystems (the actors read them the same way)."""
    from edgecnn.images import find_images

    uris = [str(s) for s in sources if "://" in str(s)]
    if not uris:
        return find_images(expand_sources(sources))
    if len(uris) != len(sources):
        raise DataError("--ray: give either local paths or URIs (s3://..., gs://..., file://...), not both in one run")
    files: list[str] = []
    skipped: list[str] = []
    for uri in uris:
        found, ignored = _list_uri(uri)
        files += found
        skipped += ignored
    return files, skipped


def _list_uri(uri: str) -> tuple[list[str], list[str]]:
    import pyarrow.fs as pafs

    from edgecnn.images import is_image_file

    scheme = uri.split("://", 1)[0]
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{uri}: no such file or folder")
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except DataError:
        raise
    except Exception as exc:  # pyarrow's errors: unknown scheme, credentials, network
        raise DataError(
            f"{uri}: cannot list it ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        ) from None
    names = sorted(
        f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and not Path(i.path).name.startswith(".")
    )
    return [n for n in names if is_image_file(n)], [n for n in names if not is_image_file(n)]


def read_uri(uri: str) -> bytes:
    """The bytes of one file named by a URI (any filesystem pyarrow knows)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def expand_sources(sources: Iterable[str | Path]) -> list[Path]:
    """Folders and files as given; globs (`photos/**/*.jpg`) expanded, sorted; a .txt/.lst file
    of paths (one a line, `#` comments, relative to the list's folder) replaced by its paths."""
    expanded: list[Path] = []
    for source in sources:
        text = str(source)
        if any(c in text for c in GLOB_CHARACTERS) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"{text}: the pattern matches no file")
            expanded.extend(Path(m) for m in matches)
        elif text.lower().endswith(LIST_SUFFIXES) and Path(text).is_file():
            base = Path(text).parent
            for line in Path(text).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    expanded.append(Path(line) if Path(line).is_absolute() else base / line)
        else:
            expanded.append(Path(text))
    return expanded


# -- Ray: connection, pipeline, actors ------------------------------------------------------
class _Connection:
    """Connect to (or start) Ray; yields the cluster's CPU count; disconnects (or stops) after."""

    def __init__(self, config: RayPredictConfig, log):
        self.config, self.log, self.started = config, log, False

    def __enter__(self) -> float:
        import ray

        _quiet_ray_data()
        if ray.is_initialized():
            self.log("ray: using this process's existing Ray connection")
        elif self.config.address == LOCAL:
            ray.init(
                num_cpus=self.config.local_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
            self.started = True
        else:
            try:
                with warnings.catch_warnings():  # Ray Client warns, then raises: the error below says it once
                    warnings.simplefilter("ignore")
                    ray.init(address=self.config.address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError, depending on the address
                raise EdgecnnError(
                    f"--ray {self.config.address}: cannot connect to a Ray cluster "
                    f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                    "start one with `ray start --head` or pass --ray local"
                ) from None
            self.started = True
        return float(ray.cluster_resources().get("CPU", 1.0))

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            ray.shutdown()  # a local Ray stops; a cluster only loses this driver


def _quiet_ray_data() -> None:
    """edgecnn draws its own progress bar; Ray Data's bars and per-operator logs would interleave."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _pipeline(ray, files: Sequence, config: RayPredictConfig, runner_config, k: int, actors: int, gpus: float):
    import ray.data

    pc = config.predict
    blocks = max(1, min(math.ceil(len(files) / pc.batch_size), max(actors * 4, 1), 10_000))
    blocks = max(blocks, min(len(files), actors))  # at least one block per actor when there are enough files
    items = ray.data.from_items([{"path": str(p)} for p in files], override_num_blocks=blocks)
    return items.map_batches(
        BatchPredictor,
        fn_constructor_kwargs={
            "model": str(pc.model),
            "runner_config": runner_config,
            "foreign": pc.foreign,
            "top_k": k,
            "decode_threads": max(1, int(config.cpus_per_actor)),
        },
        batch_size=pc.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=config.cpus_per_actor,
        num_gpus=gpus,
    )


class BatchPredictor:
    """A Ray Data actor: one onnxruntime session, made once, used for every batch it gets."""

    def __init__(self, model: str, runner_config, foreign, top_k: int, decode_threads: int):
        from edgecnn.runtime import Runner

        self.runner = Runner(model, runner_config, foreign=foreign)
        self.k, self.decode_threads = top_k, decode_threads

    def __call__(self, batch: dict):
        paths = [str(p) if "://" in str(p) else Path(str(p)) for p in batch["path"]]
        decoded = next(decode_batches(self._load, paths, max(1, len(paths)), self.decode_threads))
        return _to_table(classify_batch(self.runner, decoded, self.k), self.runner.provider)

    def _load(self, path):
        if not isinstance(path, str):
            return self.runner.load(path)
        try:
            data = read_uri(path)
        except OSError as exc:
            raise ImageError(f"{path}: cannot read it ({exc})") from None
        try:
            return self.runner.load(data)
        except ImageError as exc:  # the loader names "<bytes>": name the file instead
            raise type(exc)(str(exc).replace("<bytes>", path, 1)) from None


def _to_table(rows: Sequence[ImagePrediction], provider: str):
    import pyarrow as pa

    return pa.table(
        {
            "path": pa.array([r.path for r in rows], pa.string()),
            "label": pa.array([r.label for r in rows], pa.string()),
            "score": pa.array([r.score for r in rows], pa.float64()),
            "top_labels": pa.array([[name for name, _ in r.top] for r in rows], pa.list_(pa.string())),
            "top_probabilities": pa.array([[p for _, p in r.top] for r in rows], pa.list_(pa.float64())),
            "error": pa.array([r.error for r in rows], pa.string()),
            "provider": pa.array([provider] * len(rows), pa.string()),
        }
    )


def _from_table(table, truth) -> tuple[list[ImagePrediction], set[str]]:
    columns = table.to_pydict()
    rows = [
        ImagePrediction(path, top=tuple(zip(labels or (), probs or ())), error=error, true_label=truth(Path(path)))
        for path, labels, probs, error in zip(
            columns["path"], columns["top_labels"], columns["top_probabilities"], columns["error"]
        )
    ]
    return rows, set(columns["provider"])
