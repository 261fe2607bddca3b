"""`edgecnn profile`: latency, throughput and memory of ONNX models, side by side.

For each model: session creation and the first run are timed apart (warm-up), then each
batch size runs a fixed number of iterations or for a time budget on several rotating
random inputs (model only), and optionally on real image files (end to end: decode +
preprocess + infer + top-k, decoding overlapped as in `predict`). `--op-profile` adds
onnxruntime's per-operator trace, summarized by operator type and as the slowest nodes (with
their output shapes: where in the network the time goes). The first model is the baseline for speedups.

`profile_models` is the library entry point; export's `auto` mode calls it too.
Device path: never imports TensorFlow or matplotlib; `--plot` draws SVG in plain Python (edgecnn.charts).

Over 400 lines: the measurements (latency, throughput, memory, operators) and the table
that prints them share one result record.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence, TextIO

import numpy as np

from edgecnn.errors import DataError, EdgecnnError, SettingError, check_above, check_at_least
from edgecnn.machine import machine_info, peak_rss_mb, reset_peak_rss
from edgecnn.runtime import ForeignModelSettings, Runner, RunnerConfig, top_k

REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ProfileConfig:
    """How to measure. Either `iterations` per batch size, or `seconds` per batch size when set."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    iterations: int = 100  # timed runs per batch size (ignored when `seconds` is set)
    seconds: float | None = None  # time budget per batch size and mode
    warmup: int = 5  # untimed runs per batch size before measuring
    distinct_inputs: int = 4  # random input tensors rotated through (never one tensor reused)
    images: Path | None = None  # a folder of images: also measure end to end
    op_profile: bool = False
    op_profile_runs: int = 20  # runs traced by onnxruntime's profiler, at the largest batch size
    top_ops: int = 10
    runner: RunnerConfig = RunnerConfig()
    foreign: ForeignModelSettings | None = None  # only for models without edgecnn metadata
    decode_threads: int | None = None  # end to end; None: logical cores, at most 8
    seed: int = 0

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            sizes = ",".join(map(str, self.batch_sizes))
            raise SettingError("batch_sizes", sizes, "expected positive integers such as 1,8,32")
        if self.seconds is None:
            check_at_least("iterations", self.iterations, 1)
        else:
            check_above("seconds", self.seconds, 0, "a time budget per batch size")
        check_at_least("warmup", self.warmup, 0)
        check_at_least("distinct_inputs", self.distinct_inputs, 2, " so no tensor is reused back to back")
        check_at_least("op_profile_runs", self.op_profile_runs, 1)
        check_at_least("top_ops", self.top_ops, 1)
        if self.decode_threads is not None:
            check_at_least("decode_threads", self.decode_threads, 1)


@dataclass(frozen=True)
class LatencyStats:
    """One batch size in one mode. Latencies are per batch, in milliseconds."""

    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    images_per_second: float
    peak_rss_mb: float | None  # process peak resident memory while this batch size ran
    decode_ms_per_image: float | None = None  # end to end only: decode time summed over threads / images
    failed_images: int = 0  # end to end only


@dataclass(frozen=True)
class Warmup:
    session_ms: float  # creating the onnxruntime session (graph optimization included)
    first_run_ms: float  # the very first run, at the first batch size
    first_run_batch_size: int
    runs_per_batch_size: int
    mean_ms: dict[int, float]  # mean warm-up run per batch size (excluded from the stats)


@dataclass(frozen=True)
class OpStat:
    """One operator type in onnxruntime's trace; `ms` is per traced run."""

    op_type: str
    nodes: int
    ms: float
    percent: float
    providers: tuple[str, ...]


@dataclass(frozen=True)
class NodeStat:
    """One node of the graph onnxruntime ran (after its fusions); `ms` is per traced run."""

    name: str
    op_type: str
    output_shape: tuple[int, ...]  # its first output's, in the layout it ran in (NHWC for INT8 convolutions)
    ms: float
    percent: float
    provider: str


@dataclass(frozen=True)
class ModelProfile:
    model: str
    label: str
    provider: str
    runner: dict
    warmup: Warmup
    model_only: tuple[LatencyStats, ...]
    end_to_end: tuple[LatencyStats, ...] = ()
    op_profile: tuple[OpStat, ...] | None = None
    op_profile_batch_size: int | None = None
    slowest_nodes: tuple[NodeStat, ...] | None = None  # with op_profile: the top_ops slowest nodes
    speedup: dict[int, float] = field(default_factory=dict)  # baseline p50 / this p50, per batch size

    def stats(self, batch_size: int, mode: str = "model_only") -> LatencyStats:
        for s in getattr(self, mode):
            if s.batch_size == batch_size:
                return s
        raise KeyError(f"batch size {batch_size} was not profiled in {mode}")


@dataclass(frozen=True)
class ProfileReport:
    machine: dict
    config: dict
    models: tuple[ModelProfile, ...]
    schema_version: int = REPORT_SCHEMA_VERSION
    skipped_images: tuple[str, ...] = ()  # "path: why" of each --images file that does not decode (not timed)

    def to_dict(self) -> dict:
        return asdict(self)


def profile_models(
    paths: Sequence[str | os.PathLike],
    config: ProfileConfig = ProfileConfig(),
    runners: Sequence[RunnerConfig] | None = None,
) -> ProfileReport:
    """Profile each model in `paths` with `config`; the first model is the speedup baseline.

    runners: one RunnerConfig per model (a tuned configuration each), instead of `config.runner` for all.

    Raises `EdgecnnError` for a missing model, bad settings or an image folder without images.
    """
    if not paths:
        raise EdgecnnError("no models given: pass one or more .onnx files")
    # Profile measures exactly the files it is given: model.onnx beside model.fp16.onnx stays FP32 on CUDA.
    config = replace(config, runner=replace(config.runner, prefer_fp16=False))
    files: list[Path] = []
    skipped: list[str] = []
    if config.images is not None:
        from edgecnn.images import find_images

        if not Path(config.images).is_dir():
            raise DataError(f"--images {config.images}: no such folder")
        files, _ = find_images([config.images])
        if not files:
            raise DataError(f"--images {config.images}: no image files in it (expected .png, .jpg, ...)")
        files, skipped = _decodable(files, config.decode_threads)
        if not files:
            raise DataError(f"--images {config.images}: none of the {len(skipped)} images decodes ({skipped[0]})")
    labels = _labels([Path(p) for p in paths])
    runners = list(runners) if runners is not None else [config.runner] * len(paths)
    profiles = [
        _profile_one(Path(p), label, replace(config, runner=replace(r, prefer_fp16=False)), files)
        for p, label, r in zip(paths, labels, runners)
    ]
    base = profiles[0]
    with_speedup = []
    for prof in profiles:
        speedup = {}
        for s in prof.model_only:
            try:
                baseline = base.stats(s.batch_size)
            except KeyError:
                continue
            if s.p50_ms > 0:
                speedup[s.batch_size] = baseline.p50_ms / s.p50_ms
        with_speedup.append(replace(prof, speedup=speedup))
    return ProfileReport(
        machine=machine_info(), config=_config_dict(config), models=tuple(with_speedup), skipped_images=tuple(skipped)
    )


def _decodable(files: list[Path], threads: int | None) -> tuple[list[Path], list[str]]:
    """The files that decode, and "path: why" for each that does not: end to end times real images only
    (a file that fails would make an empty step, timed as a fast one). One quick pass on `threads`
    threads (JPEGs decode at a reduced scale, `Image.draft`; Pillow decodes outside the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from edgecnn.errors import first_line
    from edgecnn.images import load_image

    def problem(path: Path) -> str:
        try:
            load_image(path, (32, 32))
        except EdgecnnError as exc:
            return first_line(exc)
        return ""

    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(problem, files))
    return [f for f, p in zip(files, problems) if not p], [p for p in problems if p]


def _profile_one(path: Path, label: str, cfg: ProfileConfig, files: list[Path]) -> ModelProfile:
    runner = Runner(path, cfg.runner, foreign=cfg.foreign)
    rng = np.random.default_rng(cfg.seed)
    first_batch = cfg.batch_sizes[0]
    first_input = runner.prepare(_random_images(rng, runner, first_batch))
    started = time.perf_counter()
    runner.run(first_input)
    first_run_ms = (time.perf_counter() - started) * 1000

    model_only, warm_means = [], {}
    for bs in cfg.batch_sizes:
        inputs = [runner.prepare(_random_images(rng, runner, bs)) for _ in range(cfg.distinct_inputs)]
        reset_peak_rss()
        warm = [_timed(lambda i=i: runner.run(inputs[i % len(inputs)])) for i in range(cfg.warmup)]
        warm_means[bs] = float(np.mean(warm)) * 1000 if warm else 0.0

        def step(i: int, inputs=inputs, bs=bs) -> int:
            runner.run(inputs[i % len(inputs)])
            return bs

        times, count = _measure(step, cfg)
        model_only.append(_stats(bs, times, count, peak_rss_mb()))

    end_to_end = tuple(_end_to_end(runner, bs, cfg, files) for bs in cfg.batch_sizes) if files else ()
    ops, nodes, op_batch = (None, None, None)
    if cfg.op_profile:
        op_batch = max(cfg.batch_sizes)
        ops, nodes = _op_profile(path, op_batch, cfg, rng)
    warmup = Warmup(
        session_ms=runner.session_seconds * 1000,
        first_run_ms=first_run_ms,
        first_run_batch_size=first_batch,
        runs_per_batch_size=cfg.warmup,
        mean_ms=warm_means,
    )
    return ModelProfile(
        model=str(path),
        label=label,
        provider=runner.provider,
        runner=runner.describe(),
        warmup=warmup,
        model_only=tuple(model_only),
        end_to_end=end_to_end,
        op_profile=ops,
        op_profile_batch_size=op_batch,
        slowest_nodes=nodes,
    )


def _end_to_end(runner: Runner, bs: int, cfg: ProfileConfig, files: list[Path]) -> LatencyStats:
    """Decode + preprocess + infer + top-k on real files (cycled), decoding one batch ahead."""
    from edgecnn.predict import decode_batches

    names = runner.metadata.class_names
    batches = decode_batches(runner.load, itertools.cycle(files), bs, cfg.decode_threads)
    totals = {"decode": 0.0, "failed": 0}

    def step(_i: int) -> int:
        batch = next(batches)
        totals["decode"] += batch.decode_seconds
        totals["failed"] += sum(e is not None for e in batch.errors)
        if not batch.images:
            return 0
        idx, val = top_k(runner.predict(batch.images), 1)
        _ = [(names[i], float(v)) for i, v in zip(idx[:, 0], val[:, 0])]
        return len(batch.images)

    try:
        reset_peak_rss()
        for i in range(max(1, cfg.warmup)):
            step(i)
        totals.update(decode=0.0, failed=0)
        times, count = _measure(step, cfg)
    finally:
        batches.close()
    if count == 0:
        raise DataError(f"--images {cfg.images}: none of the images could be decoded")
    return _stats(
        bs,
        times,
        count,
        peak_rss_mb(),
        decode_ms_per_image=totals["decode"] * 1000 / count,
        failed_images=totals["failed"],
    )


def _measure(step: Callable[[int], int], cfg: ProfileConfig) -> tuple[list[float], int]:
    """Run `step(i)` (returns images done) `cfg.iterations` times or for `cfg.seconds`; per-step seconds."""
    times: list[float] = []
    images = 0
    deadline = time.perf_counter() + cfg.seconds if cfg.seconds is not None else None
    for i in itertools.count():
        if deadline is None and i >= cfg.iterations:
            break
        if deadline is not None and i > 0 and time.perf_counter() >= deadline:
            break
        started = time.perf_counter()
        images += step(i)
        times.append(time.perf_counter() - started)
    return times, images


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _stats(bs: int, times: list[float], images: int, peak_mb: float | None, **extra) -> LatencyStats:
    ms = np.asarray(times, dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    total = float(ms.sum()) / 1000
    return LatencyStats(
        batch_size=bs,
        iterations=len(ms),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        images_per_second=images / total if total > 0 else 0.0,
        peak_rss_mb=peak_mb,
        **extra,
    )


def _random_images(rng: np.random.Generator, runner: Runner, n: int) -> np.ndarray:
    h, w = runner.metadata.image_size
    return rng.integers(0, 256, size=(n, h, w, runner.metadata.channels), dtype=np.uint8)


# -- onnxruntime's operator profile --------------------------------------------------------
def _op_profile(
    path: Path, bs: int, cfg: ProfileConfig, rng: np.random.Generator
) -> tuple[tuple[OpStat, ...], tuple[NodeStat, ...]]:
    with tempfile.TemporaryDirectory(prefix="edgecnn-ops-") as tmp:
        traced = replace(cfg.runner, enable_profiling=True, profile_prefix=str(Path(tmp) / "ort"))
        runner = Runner(path, traced, foreign=cfg.foreign)
        inputs = [runner.prepare(_random_images(rng, runner, bs)) for _ in range(cfg.distinct_inputs)]
        skip = max(1, min(cfg.warmup, 3))
        for i in range(skip + cfg.op_profile_runs):
            runner.run(inputs[i % len(inputs)])
        trace = runner.end_profiling()
        with open(trace) as fh:
            events = json.load(fh)
    return summarize_trace(events, top=cfg.top_ops, skip_runs=skip), slowest_nodes(
        events, top=cfg.top_ops, skip_runs=skip
    )


def _kernel_events(events: list[dict], skip_runs: int) -> tuple[list[tuple[str, dict, float]], int]:
    """(node name, args, microseconds) of every kernel in onnxruntime's trace after the first
    `skip_runs` runs, and how many runs that leaves."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[skip_runs] if skip_runs < len(runs) else 0
    measured = max(1, len(runs) - skip_runs) if runs else 1
    kernels = [
        (e["name"][: -len("_kernel_time")], e.get("args", {}), float(e.get("dur", 0)))
        for e in events
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) >= start
    ]
    return kernels, measured


def summarize_trace(events: list[dict], top: int = 10, skip_runs: int = 0) -> tuple[OpStat, ...]:
    """onnxruntime profiler events -> the `top` operator types by time, after the first `skip_runs` runs."""
    kernels, measured = _kernel_events(events, skip_runs)
    totals: dict[str, float] = {}
    nodes: dict[str, set] = {}
    providers: dict[str, set] = {}
    for name, args, us in kernels:
        op = args.get("op_name", "?")
        totals[op] = totals.get(op, 0.0) + us
        nodes.setdefault(op, set()).add(name)
        providers.setdefault(op, set()).add(args.get("provider", "?"))
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return tuple(
        OpStat(
            op_type=op,
            nodes=len(nodes[op]),
            ms=us / 1000 / measured,
            percent=100 * us / grand,
            providers=tuple(sorted(providers[op])),
        )
        for op, us in ranked
    )


def slowest_nodes(events: list[dict], top: int = 10, skip_runs: int = 0) -> tuple[NodeStat, ...]:
    """onnxruntime profiler events -> the `top` nodes by time, after the first `skip_runs` runs."""
    kernels, measured = _kernel_events(events, skip_runs)
    totals: dict[str, float] = {}
    first: dict[str, dict] = {}
    for name, args, us in kernels:
        totals[name] = totals.get(name, 0.0) + us
        first.setdefault(name, args)
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return tuple(
        NodeStat(
            name=name,
            op_type=first[name].get("op_name", "?"),
            output_shape=_first_shape(first[name].get("output_type_shape")),
            ms=us / 1000 / measured,
            percent=100 * us / grand,
            provider=first[name].get("provider", "?"),
        )
        for name, us in ranked
    )


def _first_shape(shapes) -> tuple[int, ...]:
    """The first output's shape from a trace's `output_type_shape` ([{"float": [1, 10]}, ...]); () if none."""
    try:
        return tuple(int(d) for d in next(iter(shapes[0].values())))
    except (TypeError, IndexError, KeyError, StopIteration, ValueError, AttributeError):
        return ()


# -- output ---------------------------------------------------------------------------------
def check_plot_path(path: str | os.PathLike) -> Path:
    """`path` for `write_plot`, or a SettingError ("plot") when it does not end in .svg."""
    path = Path(path)
    if path.suffix.lower() != ".svg":
        raise SettingError("plot", path, "expected a file name ending in .svg (the plot is an SVG image)")
    return path


def write_plot(report: ProfileReport, path: str | os.PathLike) -> Path:
    """An SVG file of p50 latency and throughput against batch size, one line per model, written atomically.

    The same charts as the profile section of `edgecnn report` (`edgecnn.charts.profile_charts`),
    drawn in plain Python: no plotting library. End-to-end lines, when measured, are dashed.
    Raises SettingError ("plot") when `path` does not end in .svg.
    """
    from edgecnn.charts import profile_charts, svg_file
    from edgecnn.files import write_text

    path = check_plot_path(path)
    labels = ", ".join(m.label for m in report.models)
    return write_text(path, svg_file(profile_charts(report.to_dict()["models"]), f"edgecnn profile: {labels}"))


def render(report: ProfileReport, out: TextIO) -> None:
    """Write `report` to `out` as text tables (edgecnn.tables)."""
    from edgecnn.tables import Table

    def say(text) -> None:
        out.write((text.render() if isinstance(text, Table) else text) + "\n")

    m = report.machine
    say(
        f"{m['cpu_model']} | {m['physical_cores']} physical / {m['logical_cores']} logical cores | "
        f"flags: {' '.join(m['cpu_flags']) or '-'} | GPU: {', '.join(m['gpus']) or 'none'} | "
        f"onnxruntime {m['onnxruntime']} | Python {m['python']}"
    )
    for prof in report.models:
        w = prof.warmup
        say(
            f"{prof.label}: {prof.provider}, session {w.session_ms:.1f} ms, first run {w.first_run_ms:.2f} ms "
            f"(batch {w.first_run_batch_size}), {w.runs_per_batch_size} warm-up runs per batch size excluded"
        )
    modes = [("model only", "model_only")] + (
        [("end to end", "end_to_end")] if any(p.end_to_end for p in report.models) else []
    )
    for title, mode in modes:
        title = f"{title}: latency per batch in ms" + (
            f"; speedup = p50 of {report.models[0].label} / p50"
            if len(report.models) > 1 and mode == "model_only"
            else ""
        )
        table = Table(title=title)
        for col in ("model", "batch", "runs", "p50", "p90", "p99", "mean", "min", "max", "images/s", "peak RSS MB"):
            table.add_column(col, right=col != "model")
        if mode == "model_only" and len(report.models) > 1:
            table.add_column("speedup", right=True)
        if mode == "end_to_end":
            table.add_column("decode ms/img", right=True)
        for prof in report.models:
            for s in getattr(prof, mode):
                row = (
                    [prof.label, str(s.batch_size), str(s.iterations)]
                    + [_short(v) for v in (s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms, s.min_ms, s.max_ms)]
                    + [_short(s.images_per_second), "-" if s.peak_rss_mb is None else f"{s.peak_rss_mb:.0f}"]
                )
                if mode == "model_only" and len(report.models) > 1:
                    ratio = prof.speedup.get(s.batch_size)
                    row.append("-" if ratio is None else f"{ratio:.2f}x")
                if mode == "end_to_end":
                    row.append(_short(s.decode_ms_per_image))
                table.add_row(*row)
        say(table)
    for prof in report.models:
        if prof.op_profile is None:
            continue
        table = Table(title=f"{prof.label}: top operators (batch {prof.op_profile_batch_size}, ms per run)")
        for col in ("op type", "nodes", "ms", "% of total", "provider"):
            table.add_column(col, right=col not in ("op type", "provider"))
        for op in prof.op_profile:
            table.add_row(op.op_type, str(op.nodes), f"{op.ms:.3f}", f"{op.percent:.1f}", ", ".join(op.providers))
        say(table)
        table = Table(title=f"{prof.label}: slowest nodes (batch {prof.op_profile_batch_size}, ms per run)")
        for col in ("node", "op type", "output shape", "ms", "% of total", "provider"):
            table.add_column(col, right=col in ("ms", "% of total"))
        for node in prof.slowest_nodes or ():
            shape = "x".join(map(str, node.output_shape)) or "-"
            row = (_tail(node.name), node.op_type, shape, f"{node.ms:.3f}", f"{node.percent:.1f}", node.provider)
            table.add_row(*row)
        say(table)


def _tail(name: str, width: int = 48) -> str:
    """A node name's end (its most specific part: exporters prefix the model's scopes), at most `width` characters."""
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _short(value: float) -> str:
    """A number with about three significant digits, never in exponent notation."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _labels(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def _config_dict(cfg: ProfileConfig) -> dict:
    data = asdict(cfg)
    data["images"] = str(cfg.images) if cfg.images is not None else None
    return data
