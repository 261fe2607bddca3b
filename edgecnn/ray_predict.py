"""`edgecnn predict --ray`: the same predictions as plain `predict`, from a pool of Ray actors.

The driver lists the files (folders recursively, globs, text files of paths; or URIs such as
s3://bucket/photos/ through pyarrow's filesystems, read by the actors the same way), checks the
model once, and cuts the paths into blocks of whole batches. A pool of Ray actors (`Predictor`,
by default one per node holding all of its CPUs: `plan_layout`) each opens one onnxruntime
`Runner` (one session per actor, not per batch) and runs each block it is given exactly as plain
`predict` runs its files: the same batches, decoded by the same loader in a thread pool one
batch ahead of inference (`predict.decode_batches`), answered by the same code
(`predict.classify_batch`), streamed back as they finish (a Ray generator). Only paths go to the
actors and only (path, top-k, error) come back. The driver gives a block to whichever actor is
free and streams the answers: progress, accuracy and confusion matrix for a labelled folder, the
failed images, and with `output` one row per image written as JSON Lines or Parquet (atomically;
rows then are not kept in memory, so the driver's memory does not grow with the number of images).

Plain Ray actors rather than Ray Data: on one node Ray Data's start (its helper actors and each
worker importing ray.data) cost more than the whole inference of 600 images (docs/SCALING.md).

Ray is imported inside the functions here only: plain `predict` never imports it.

Over 400 lines: the Ray driver, its actor and its result: one path, kept beside each other so
that its answers stay equal to `predict`'s.
"""

from __future__ import annotations

import glob
import importlib
import logging
import math
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections import deque
from typing import Callable, Iterable, Iterator, Sequence

from edgecnn.errors import DataError, EdgecnnError, ImageError, SettingError, check_above, check_at_least, require
from edgecnn.predict import (
    Confusion,
    ImagePrediction,
    PredictConfig,
    classify_batch,
    decode_batches,
    score_rows,
    true_labels,
)
from edgecnn.row_files import atomic_or_none, output_writer
from edgecnn.runtime import Runner, require_model_file

LOCAL = "local"
BLOCKS_PER_ACTOR = 4  # with several actors: about this many blocks each, so that early finishers take more
MAX_BLOCK_BATCHES = 64  # what a lost actor's replacement runs again
BLOCKS_IN_FLIGHT = 2  # a lone actor's running block and the next, queued behind it: no wait on the driver between
ACTOR_RESTARTS = 3
RAY_FIRST_CALL_IMPORTS = (
    "ray.util.serialization_addons",
    "ray._common.pydantic_compat",
    "pydantic.v1.fields",  # imported by the first call itself, not by the modules above
    "ray._private.arrow_serialization",
    "pyarrow.json",  # likewise (it imports pyarrow)
    "starlette.datastructures",
)
ANSWER_SECONDS = 0.25  # an actor sends its answers about this often (progress, rows to the file)
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
    actors: int | None = None  # actors holding a session each; None: see `plan_layout`
    cpus_per_actor: float | None = None  # Ray CPUs per actor, also its onnxruntime threads unless --threads
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
        if self.cpus_per_actor is not None:
            check_above("cpus_per_actor", self.cpus_per_actor, 0, "a number of CPUs")
        if self.gpus_per_actor is not None:
            check_at_least("gpus_per_actor", self.gpus_per_actor, 0)
        if self.output is not None:
            output_writer(self.output)  # an unknown extension fails now, not after the run


@dataclass(frozen=True)
class Layout:
    """How the run is spread: `actors` actors, each reserving these CPUs and GPUs."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_actor))


def plan_layout(config: RayPredictConfig, node_cpus: Sequence[float], gpus: float) -> Layout:
    """The actors for a cluster whose live nodes have `node_cpus` CPUs and `gpus` GPUs in all.

    Default on CPUs: one actor per node holding all of its CPUs, i.e. plain `predict` on every
    node (one session, onnxruntime threads on all cores, decoding overlapped with inference); on
    one 2-core machine that costs less CPU and start-up than one actor per core (docs/SCALING.md).
    Nodes of different sizes: each actor gets the smallest node's CPUs, larger nodes run several.
    With --device cuda: one actor per GPU. `actors` alone shares the cluster's CPUs equally;
    `cpus_per_actor` alone gives as many actors as fit.
    """
    cuda = config.predict.runner.device.startswith("cuda")
    per_gpu = config.gpus_per_actor if config.gpus_per_actor is not None else (1.0 if cuda else 0.0)
    cpus = [float(c) for c in node_cpus if c > 0] or [1.0]
    if config.actors is not None:
        actors = config.actors
        per_cpu = config.cpus_per_actor or min(max(cpus), max(1.0, float(sum(cpus) // actors)))
    elif per_gpu > 0:
        actors = max(1, int(gpus // per_gpu))
        per_cpu = config.cpus_per_actor or 1.0
    else:
        per_cpu = config.cpus_per_actor or min(cpus)
        actors = max(1, sum(int(c // per_cpu) for c in cpus))
    if per_cpu > max(cpus):
        raise SettingError(
            "cpus_per_actor", f"{per_cpu:g}", f"no node of this Ray has that many (the largest has {max(cpus):g})"
        )
    if per_gpu > 0 and gpus < per_gpu:
        raise EdgecnnError(
            f"the Ray cluster has {gpus:g} GPU(s), each actor needs {per_gpu:g}: "
            "add GPU nodes, or run with --device cpu"
        )
    return Layout(actors=actors, cpus_per_actor=per_cpu, gpus_per_actor=per_gpu)


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

    The files are listed, the output checked writable and the model file found before Ray starts
    (those mistakes fail at once); the actors then start first, and the driver opens its own session
    of the model (the check: a bad model fails here, in one line) while they open theirs.

    Raises `MissingDependency` without the `ray` extra, `EdgecnnError` for mistakes that stop
    everything; an undecodable image only fills its row's `error`.
    """
    require("ray", "ray")
    import ray

    pc = config.predict
    allow_spinning = False if pc.runner.allow_spinning is None else pc.runner.allow_spinning
    listed = None if ray.is_initialized() else _inputs(config)  # before starting Ray, as Ray's start is slow
    connection = _Connection(config, log)
    with connection as (node_cpus, cluster_gpus):
        layout = plan_layout(config, node_cpus, cluster_gpus)
        actors, threads, gpus = layout.actors, pc.runner.intra_op_threads or layout.threads, layout.gpus_per_actor
        runner_config = replace(pc.runner, intra_op_threads=threads, allow_spinning=allow_spinning)
        pool = _ActorPool(config, runner_config, layout)  # first: the actors' start is the longest wait
        try:
            files, skipped = listed or _inputs(config)
            # The driver's check, while the actors start: it reads the model and never runs it.
            checked = Runner(pc.model, replace(runner_config, intra_op_threads=1), foreign=pc.foreign)
            names = checked.metadata.class_names
            truth = true_labels(pc.inputs, names)
            blocks = _blocks(files, pc.batch_size, actors)
            log(
                f"ray: {len(files)} images, {actors} actor(s) x {layout.cpus_per_actor:g} CPU "
                f"({threads} onnxruntime thread(s) each{f', {gpus:g} GPU' if gpus else ''}), "
                f"batch {pc.batch_size}, {len(blocks)} block(s) of up to {len(blocks[0])} images"
            )
            started = time.perf_counter()
            collected = _collect(pool.run(blocks), truth, config.output, len(files), progress)
            seconds = time.perf_counter() - started
        finally:
            pool.stop()
    order = {str(p): i for i, p in enumerate(files)}
    rows = sorted(collected.rows, key=lambda r: order.get(r.path, 0))  # answers come as blocks finish
    failures = sorted(collected.failures, key=lambda r: order.get(r.path, 0))
    accuracy, labelled, confusion = score_rows(collected.scored, names)
    ran_on = sorted(pool.providers) or [checked.provider]
    return RayPredictResult(
        model=str(pc.model),
        provider=", ".join(ran_on),
        runner_summary=f"{checked.path.name}: ran on {', '.join(ran_on)} in {actors} Ray actor(s) "
        f"({threads} thread(s) each, --device {checked.device}, Ray at {config.address})",
        rows=tuple(rows),
        images=collected.done,
        failures=tuple(failures),
        skipped=tuple(str(s) for s in skipped),
        seconds=seconds,
        batch_size=pc.batch_size,
        top_k=min(pc.top_k, len(names)),
        accuracy=accuracy,
        labelled=labelled,
        confusion=confusion,
        runner={**checked.describe(), "intra_op_threads": threads},  # the actors' sessions, not the driver's check
        ray={
            "address": config.address,
            "actors": actors,
            "cpus_per_actor": layout.cpus_per_actor,
            "gpus_per_actor": gpus,
            "providers": ran_on,
            "images_per_block": len(blocks[0]),
            "actors_ready_seconds": [round(s, 3) for s in pool.ready_after],
            "connect_seconds": round(connection.start_seconds, 3),  # starting a local Ray, or joining one
            "disconnect_seconds": round(connection.stop_seconds, 3),  # stopping it, or leaving
        },
        output=str(config.output) if config.output is not None else None,
    )


def _inputs(config: RayPredictConfig) -> tuple[list, list]:
    """(image files, skipped files), once the model file and the output are known to be usable:
    what the driver can check without opening the model."""
    from edgecnn.files import check_writable

    pc = config.predict
    require_model_file(pc.model)
    files, skipped = list_sources(pc.inputs)
    if not files:
        raise DataError(
            f"no images in {', '.join(str(p) for p in pc.inputs)}: expected files ending in .png, .jpg, .jpeg, ..."
        )
    if config.output is not None:
        check_writable(config.output)
    return files, skipped


@dataclass
class _Collected:
    rows: list = field(default_factory=list)  # empty when the rows go to a file
    failures: list = field(default_factory=list)
    scored: list = field(default_factory=list)  # labelled rows, reduced to what the confusion matrix needs
    done: int = 0


def _collect(answers, truth, output: Path | None, total: int, progress) -> _Collected:
    """The answers (lists of rows, as they come) as rows: kept, or streamed into `output`
    (atomically) in the order they come; progress with each list."""
    collected = _Collected()
    if progress is not None:
        progress(0, total)
    with atomic_or_none(output) as target:
        writer = output_writer(output)(target) if target is not None else None
        try:
            for block in answers:
                rows = [
                    ImagePrediction(path, top=top, error=error, true_label=truth(Path(path)))
                    for path, top, error in block
                ]
                for r in rows:
                    if r.error is not None:
                        collected.failures.append(r)
                    elif r.true_label is not None:
                        collected.scored.append(ImagePrediction(r.path, top=r.top[:1], true_label=r.true_label))
                if writer is not None:
                    writer.write(rows)
                else:
                    collected.rows.extend(rows)
                collected.done += len(rows)
                if progress is not None:
                    progress(collected.done, total)
        finally:
            if writer is not None:
                writer.close()
    return collected


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
def start_local_ray(cpus: int | None = None) -> None:
    """Start a Ray on this machine as `--ray local` does (`tools/bench_ray_predict.py` too).

    Its workers run at this process's priority: Ray starts them at niceness 15 by default, which
    on a machine doing anything else lets every other program go first (plain `predict` runs at
    the priority it was started with; measured in docs/SCALING.md)."""
    import ray

    # Ray's first remote call imports its serializers (pydantic, pyarrow, starlette: 0.05-0.1 s of
    # the driver's CPU): import them while ray.init waits for its processes to come up.
    importing = threading.Thread(target=_import_ray_serializers, name="edgecnn-ray-imports", daemon=True)
    importing.start()
    try:
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
            _system_config={"worker_niceness": os.nice(0)},
        )
    finally:
        importing.join()  # never left importing while the process exits


def _import_ray_serializers() -> None:
    """Import what Ray's first remote call would (a warm-up: a module missing here is Ray's business)."""
    for name in RAY_FIRST_CALL_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (a warm-up: Ray imports what it needs itself)
            pass


class _Connection:
    """Connect to (or start) Ray; yields (each live node's CPUs, the cluster's GPUs); disconnects (or stops) after."""

    def __init__(self, config: RayPredictConfig, log):
        self.config, self.log, self.started = config, log, False
        self.start_seconds = self.stop_seconds = 0.0  # connecting (or starting) and disconnecting (or stopping)

    def __enter__(self) -> tuple[list[float], float]:
        import ray

        began = time.perf_counter()
        if ray.is_initialized():
            self.log("ray: using this process's existing Ray connection")
        elif self.config.address == LOCAL:
            start_local_ray(self.config.local_cpus)
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
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        resources = [n["Resources"].get("CPU", 0.0) for n in nodes], float(ray.cluster_resources().get("GPU", 0.0))
        self.start_seconds = time.perf_counter() - began
        return resources

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            began = time.perf_counter()
            ray.shutdown()  # a local Ray stops; a cluster only loses this driver
            self.stop_seconds = time.perf_counter() - began


def _blocks(files: Sequence, batch_size: int, actors: int) -> list[list[str]]:
    """The paths cut into blocks of whole batches, in listing order: each actor runs a block the
    way plain `predict` runs its files (the same batches, decoding overlapped with inference) and
    streams its answers as they finish, so the block size sets neither progress nor memory.

    One actor gets one block (every block boundary restarts the decoding pipeline: about a
    batch's decoding with the model idle); several get about BLOCKS_PER_ACTOR blocks each, so
    that actors that finish early take more.
    At most MAX_BLOCK_BATCHES a block: what an actor restarted after a lost node runs again.
    """
    batches = math.ceil(len(files) / batch_size)
    shares = actors * BLOCKS_PER_ACTOR if actors > 1 else 1
    per_block = max(1, min(MAX_BLOCK_BATCHES, math.ceil(batches / shares)))
    size = per_block * batch_size
    return [[str(p) for p in files[i : i + size]] for i in range(0, len(files), size)]


class _ActorPool:
    """`actors` Ray actors holding one model session each, started at once; `run` gives them
    blocks and yields the answers as they come. Of several actors, one that never starts (no free
    CPU on the cluster) gets no work and the others do it; a lone actor's blocks queue behind its
    start."""

    def __init__(self, config: RayPredictConfig, runner_config, layout: Layout):
        import ray

        pc = config.predict
        actor_class = ray.remote(Predictor).options(
            num_cpus=layout.cpus_per_actor,
            num_gpus=layout.gpus_per_actor,
            max_restarts=ACTOR_RESTARTS,  # a node lost mid-run: the actor starts again elsewhere
            max_task_retries=ACTOR_RESTARTS,  # and its block runs again
        )
        decode_threads = pc.decode_threads or layout.threads
        self.actors = [
            actor_class.remote(str(pc.model), runner_config, pc.foreign, pc.top_k, pc.batch_size, decode_threads)
            for _ in range(layout.actors)
        ]
        self.starting = {actor.ready.remote(): actor for actor in self.actors}
        self.providers: set[str] = set()
        self.created = time.perf_counter()
        self.ready_after: list[float] = []  # from the pool's creation until the driver saw each actor's session

    def run(self, blocks: Sequence[list[str]]) -> Iterator[list[tuple[str, tuple, str | None]]]:
        """Yield answers as they come. Each actor runs one block at a time as one decoding
        pipeline and streams its answers (a Ray generator, about every ANSWER_SECONDS); a lone
        actor has its next block queued behind it (BLOCKS_IN_FLIGHT), several take one at a time
        so that a free one takes the next. With several actors, each gets blocks only once its
        session is open (one never placed gets no work); a lone actor gets its first
        BLOCKS_IN_FLIGHT at once, queued behind its start (no round trip after its session opens)."""
        import ray

        queue = deque(blocks)
        running: dict = {}  # the block's stream of answers -> the actor running it

        lone = len(self.actors) == 1
        queued = BLOCKS_IN_FLIGHT if lone else 1  # several: a free actor takes the next

        def give(actor) -> None:
            held = sum(1 for holder in running.values() if holder is actor)
            for _ in range(min(len(queue), queued - held)):
                running[actor.run.options(num_returns="streaming").remote(queue.popleft())] = actor

        if lone:
            give(self.actors[0])
        # A lone actor's ready answer is always awaited (it comes before its blocks end); of several,
        # one still starting when the work is done is not.
        while running or (self.starting and (queue or lone)):
            (item,), _ = ray.wait([*self.starting, *running], num_returns=1)
            if isinstance(item, ray.ObjectRef):  # an actor has opened its session
                actor = self.starting.pop(item)
                self.providers.add(_answer(item))
                self.ready_after.append(time.perf_counter() - self.created)
            else:
                try:
                    answers = next(item)
                except StopIteration:  # the block is done: its actor takes the next
                    actor = running.pop(item)
                else:
                    yield _answer(answers)
                    continue
            give(actor)

    def stop(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def _answer(ref):
    """`ray.get(ref)`; an actor's failure as edgecnn's one-line error (the actor's own, when it raised one)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        cause = _cause(exc)
        if isinstance(cause, EdgecnnError):
            raise cause from None
        text = str(cause if cause is not None else exc).strip()
        last = ([line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__])[-1]
        ours = re.match(r"edgecnn\.errors\.\w+: (.+)", last)  # edgecnn's own error, raised in the actor's __init__
        raise EdgecnnError(ours.group(1) if ours else f"ray: an actor failed ({last})") from None


def _cause(exc):
    """The exception an actor raised, when Ray kept it (a method's error, or its constructor's)."""
    for _ in range(3):
        cause = getattr(exc, "cause", None)
        if cause is None or cause is exc:
            return None if exc is None or not isinstance(exc, BaseException) else exc
        if not hasattr(cause, "cause"):
            return cause if isinstance(cause, BaseException) else None
        exc = cause
    return None


class Predictor:
    """A Ray actor: one onnxruntime session, made once, used for every block it gets."""

    def __init__(self, model: str, runner_config, foreign, top_k: int, batch_size: int, decode_threads: int):
        self.runner = Runner(model, runner_config, foreign=foreign)
        self.k = min(top_k, len(self.runner.metadata.class_names))
        self.batch_size, self.decode_threads = batch_size, decode_threads

    def ready(self) -> str:
        """The provider the session really runs on (the driver waits on this before giving blocks
        to any of several actors; a lone actor has its first blocks queued behind this call)."""
        return self.runner.provider

    def run(self, paths: list[str]) -> Iterator[list[tuple[str, tuple, str | None]]]:
        """(path, top-k (label, probability) pairs, error) per image, in order, as they finish
        (`answer_batches`), about every ANSWER_SECONDS: called as a Ray generator, the block is
        one decoding pipeline, and each answer it sends costs the driver and Ray a little CPU
        that the model's cores then lack."""
        answers: list[tuple[str, tuple, str | None]] = []
        sent = time.perf_counter()
        for batch in answer_batches(self.runner, paths, self.batch_size, self.decode_threads, self.k):
            answers += batch
            if time.perf_counter() - sent >= ANSWER_SECONDS:
                yield answers
                answers, sent = [], time.perf_counter()
        if answers:
            yield answers


def answer_batches(
    runner, paths: Sequence[str], batch_size: int, decode_threads: int, k: int
) -> Iterator[list[tuple[str, tuple, str | None]]]:
    """(path, top-k (label, probability) pairs, error) per image, a list per batch, in order:
    `predict`'s batches (`decode_batches`, one batch decoded ahead while the model runs) and
    answers (`classify_batch`)."""
    sources = [p if "://" in p else Path(p) for p in paths]
    batches = decode_batches(lambda source: _load(runner, source), sources, batch_size, decode_threads)
    try:
        for batch in batches:
            yield [(r.path, r.top, r.error) for r in classify_batch(runner, batch, k)]
    finally:
        batches.close()  # stops decoding the batch after


def _load(runner, path):
    """One image for `runner`: a file through the loader, a URI read through pyarrow's filesystems."""
    if not isinstance(path, str):
        return runner.load(path)
    try:
        data = read_uri(path)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read it ({exc})") from None
    try:
        return runner.load(data)
    except ImageError as exc:  # the loader names "<bytes>": name the file instead
        raise type(exc)(str(exc).replace("<bytes>", path, 1)) from None
