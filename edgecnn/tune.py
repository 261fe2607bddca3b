"""`edgecnn tune MODEL_DIR`: find the fastest *verified* way to run a model on this machine.

Candidates are every variant file of the folder x every execution provider usable here x the
settings that matter (thread count and spinning, OpenVINO's precision and performance hint, the exact INT8
rewrites of `edgecnn.provider_rewrites` with the providers they are meant for). Each candidate runs in its own process: it is first
verified on the folder's verification set (outside the export's accuracy budget: reported, never
chosen), then timed at batch 1 (p50) and at the serving batch size (images/s). A provider that
crashes or hangs fails that candidate only.

While the budget lasts, every verified candidate is timed a second time (fastest first, never
into the time the last step needs) and stands at its best measurement: on a shared machine a
busy moment only slows a measurement down. Today's default (the export's recommended file on the
CPU provider with default settings) is always a candidate and is measured twice more beside the
winner before anything is chosen, so tuning never picks a configuration that measured slower
than the default. The result goes to `MODEL_DIR/deploy.json` (atomically) with every
candidate's numbers and a fingerprint of the machine; `predict`, `profile`, `serve` and `verify`
use it on this machine.

Over 400 lines: the search, its measuring worker process and the choice all work on the
`Candidate` record; apart they would hand it through three modules.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn import __version__
from edgecnn.errors import (
    EdgecnnError,
    MissingDependency,
    SettingError,
    check_above,
    check_at_least,
    check_one_of,
    first_line,
    one_of,
)
from edgecnn.metadata import VARIANT_FILES
from edgecnn.tuned_config import (
    DEPLOY_FILE,
    DEPLOY_FORMAT,
    default_file,
    fingerprint,
    runner_config_of,
    runner_settings,
)

OBJECTIVES = ("latency", "throughput")
CONFIRM_ROUNDS = 2  # extra measurements of the default and the winner, alternating
WORKER_TIMEOUT_S = 60  # a candidate's process gets this plus 10 x its measuring seconds, then counts as hung


@dataclass(frozen=True)
class TuneConfig:
    model_dir: str
    objective: str = "latency"  # latency: p50 at batch 1; throughput: images/s at batch_size
    batch_size: int = 32  # the serving batch size
    time_budget_s: float = 60.0  # for the whole search; candidates not reached are reported as such
    devices: tuple[str, ...] = ()  # providers to try (cpu, openvino, cuda, ...); (): every usable one
    rewrites: bool = True  # try the exact INT8 rewrites of edgecnn.provider_rewrites

    def __post_init__(self):
        check_one_of("objective", self.objective, OBJECTIVES)
        check_at_least("batch_size", self.batch_size, 1)
        check_above("time_budget_s", self.time_budget_s, 0, "seconds")


@dataclass
class Candidate:
    name: str
    variant: str
    file: str  # path of the file this candidate runs
    runner: dict  # RunnerConfig tuned fields (tuned.runner_settings)
    provider: str = ""  # registry key + device, e.g. openvino:CPU
    rewrite: str = ""  # key of an edgecnn.provider_rewrites entry applied to the file
    default: bool = False  # today's default configuration
    # filled in by measuring
    # ok | outside budget | failed (crashed, hung, refused its settings) | skipped (cannot apply here: a rewrite
    # with nothing to change, one for other CPUs or missing its package, a provider with no device) | not measured
    status: str = "not measured"
    why: str = ""
    verified: bool | None = None
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    p50_ms: float | None = None
    images_per_s: float | None = None
    session_s: float | None = None
    runs: list = field(default_factory=list)  # (p50_ms, images_per_s) of every measurement
    chosen: bool = False

    def value(self, objective: str) -> float:
        """Lower is better."""
        return self.p50_ms if objective == "latency" else -self.images_per_s


@dataclass
class TuneResult:
    model_dir: str
    objective: str
    batch_size: int
    chosen: Candidate
    default: Candidate
    candidates: list[Candidate]
    machine: dict
    seconds: float
    deploy_file: str

    @property
    def speedup(self) -> float:
        if self.objective == "latency":
            return self.default.p50_ms / self.chosen.p50_ms
        return self.chosen.images_per_s / self.default.images_per_s

    def to_dict(self) -> dict:
        return {
            "format": DEPLOY_FORMAT,
            "edgecnn_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_dir": self.model_dir,
            "objective": self.objective,
            "batch_size": self.batch_size,
            "machine": self.machine,
            "chosen": _public(self.chosen),
            "default": _public(self.default),
            "speedup_vs_default": round(self.speedup, 4),
            "seconds": self.seconds,
            "candidates": [_public(c) for c in self.candidates],
        }


def _public(c: Candidate) -> dict:
    d = asdict(c)
    d["file"] = Path(c.file).name
    return d


# -- candidates ------------------------------------------------------------------------------
def candidates(model_dir: Path, config: TuneConfig, ort) -> list[Candidate]:
    """Every configuration worth measuring here; today's default first."""
    from edgecnn.providers import unusable, usable
    from edgecnn.provider_rewrites import REWRITES
    from edgecnn.runtime import RunnerConfig

    files = {v: model_dir / f for v, f in VARIANT_FILES.items() if (model_dir / f).is_file()}
    if not files:
        raise EdgecnnError(
            f"{model_dir}: no exported model to tune; export one with: edgecnn export {model_dir} --quantize int8"
        )
    wanted = set(config.devices)
    unknown = wanted - {p.key for p, _ in usable(ort)}
    if unknown:
        from edgecnn.providers import PROVIDERS

        key = sorted(unknown)[0]
        if key not in PROVIDERS:
            raise SettingError("devices", key, f"expected {one_of(PROVIDERS.names())}")
        raise EdgecnnError(PROVIDERS[key].missing(key, ort))
    default_path = default_file(model_dir)
    default = Candidate(
        f"{_variant_of(default_path)} cpu (today's default)",
        _variant_of(default_path),
        str(default_path),
        runner_settings(RunnerConfig(device="cpu")),
        provider="cpu",
        default=True,
    )
    out = [default]
    for provider, device in usable(ort):
        if wanted and provider.key not in wanted:
            continue
        spec = f"{provider.key}:{device}" if device else provider.key
        for variant, path in files.items():
            if variant == "fp16" and not provider.accelerator:
                continue  # FP16 is for GPUs: CPUs emulate it slowly
            for label, settings in _settings_grid(provider.key):
                cfg = RunnerConfig(device=spec, **settings)
                name = f"{variant} {spec}{' ' + label if label else ''}"
                out.append(Candidate(name, variant, str(path), runner_settings(cfg), provider=spec))
                for rewrite in REWRITES.values() if config.rewrites and variant == "int8" else ():
                    if provider.key in rewrite.providers:
                        out.append(
                            Candidate(
                                f"{name} + {rewrite.label}",
                                variant,
                                str(path),
                                runner_settings(cfg),
                                provider=spec,
                                rewrite=rewrite.key,
                            )
                        )
    for provider, why in unusable(ort):  # installed, but no device here: say so rather than leave it out
        if not wanted or provider.key in wanted:
            out.append(Candidate(provider.key, "", "", {}, provider=provider.key, status="skipped", why=why))
    return [c for c in out if c.default or c.status == "skipped" or not _same(c, default)]


def _settings_grid(key: str) -> list[tuple[str, dict]]:
    if key == "cpu":
        from edgecnn.machine import available_cpus, physical_cores

        grid = [("spinning", {}), ("no spinning", {"allow_spinning": False})]
        cores, logical = physical_cores(), available_cpus()
        if cores > 1:  # a small model can lose more to waking a second thread than it gains from it
            grid.append(("1 thread", {"intra_op_threads": 1}))
        if logical > cores:  # the default is one thread per physical core; hyper-threads may still help
            grid.append((f"{logical} threads", {"intra_op_threads": logical}))
        return grid
    if key == "openvino":
        return [
            (f"{precision} {hint.lower()}", {"ep_options": (("precision", precision), ("hint", hint))})
            for precision in ("f32", "device")
            for hint in ("LATENCY", "THROUGHPUT")
        ]
    return [("", {})]


def _same(a: Candidate, b: Candidate) -> bool:
    return (Path(a.file).name, a.rewrite, json.dumps(a.runner, sort_keys=True)) == (
        Path(b.file).name,
        b.rewrite,
        json.dumps(b.runner, sort_keys=True),
    )


def _variant_of(path: Path) -> str:
    return next((v for v, f in VARIANT_FILES.items() if f == path.name), path.name)


# -- measuring -------------------------------------------------------------------------------
def tune(
    config: TuneConfig,
    progress: Callable[[int, int, str], None] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> TuneResult:
    """Measure every candidate, choose, write deploy.json; returns the result."""
    from edgecnn.files import atomic_path, scratch_in, write_json
    from edgecnn.ort import import_onnxruntime
    from edgecnn.verify import read_verification_set

    started = time.perf_counter()
    model_dir = Path(config.model_dir)
    if not model_dir.is_dir():
        raise EdgecnnError(f"{model_dir}: no such model folder")
    read_verification_set(model_dir)  # fail now, with the message that says how to make one
    ort = import_onnxruntime()
    machine = fingerprint()
    todo = candidates(model_dir, config, ort)
    confirm_runs = 2 * CONFIRM_ROUNDS
    share = config.time_budget_s * 0.8 / (len(todo) + confirm_runs)
    measure_s = min(3.0, max(0.2, (share - 1.5) / 2.5))
    deadline = started + config.time_budget_s
    why = "tune writes deploy.json (and its rewritten files) beside the model: copy the folder somewhere writable"
    with scratch_in(model_dir, ".edgecnn-tune-", why) as scratch:
        rewritten = _prepare_rewrites(todo, scratch, log)
        steps = 2 * len(todo)  # the first pass, then the second as far as the budget goes
        first_pass, measured = time.perf_counter(), 0
        for i, cand in enumerate(todo):
            if progress:
                progress(i, steps, cand.name)
            if cand.status in ("failed", "skipped"):
                continue
            if not cand.default and time.perf_counter() > deadline:
                cand.status, cand.why = "not measured (time budget)", f"--time-budget {config.time_budget_s:g} s spent"
                continue
            _measure(cand, model_dir, config.batch_size, measure_s)
            measured += 1
        # The second pass times only (its candidates are verified), the most promising first, and
        # leaves the side-by-side confirmation its time: a measurement costs what the first pass's did.
        cost = (time.perf_counter() - first_pass) / max(1, measured)
        again = sorted((c for c in todo if c.status == "ok"), key=lambda c: c.value(config.objective))
        for i, cand in enumerate(again, start=steps - len(again)):
            if progress:
                progress(i, steps, f"{cand.name} (again)")
            if time.perf_counter() + (confirm_runs + 1) * cost <= deadline:
                _measure_again(cand, model_dir, config.batch_size, measure_s)
        if progress:
            progress(steps, steps, "confirming")
        chosen = _choose(todo, config, model_dir, measure_s)
        if chosen.rewrite and chosen.file in rewritten:
            scratch_file = chosen.file
            final = model_dir / Path(scratch_file).name  # model.int8.<rewrite>.onnx
            with atomic_path(final) as tmp:
                os.replace(scratch_file, tmp)
            for c in todo:
                if c.file == scratch_file:
                    c.file = str(final)
    result = TuneResult(
        str(model_dir),
        config.objective,
        config.batch_size,
        chosen,
        todo[0],
        todo,
        machine,
        round(time.perf_counter() - started, 2),
        str(model_dir / DEPLOY_FILE),
    )
    write_json(model_dir / DEPLOY_FILE, result.to_dict())
    return result


def _prepare_rewrites(todo: list[Candidate], scratch: Path, log) -> set[str]:
    """Write the rewritten copy of each file the candidates need into `scratch` and point them at
    it. A rewrite that cannot apply here (one for other CPUs, one whose `onnx` package this install
    lacks, one with nothing to change) skips its candidates, with the reason. Returns the paths written."""
    from edgecnn.provider_rewrites import REWRITES

    made: dict[tuple[str, str], tuple[str, str]] = {}  # (file, rewrite) -> ("ok", path) | (status, why)
    for cand in todo:
        if not cand.rewrite:
            continue
        key = (cand.file, cand.rewrite)
        if key not in made:
            made[key] = _rewrite_once(REWRITES[cand.rewrite], Path(cand.file), scratch, log)
        status, detail = made[key]
        if status == "ok":
            cand.file = detail
        else:
            cand.status, cand.why = status, detail
    return {detail for status, detail in made.values() if status == "ok"}


def _rewrite_once(rewrite, src: Path, scratch: Path, log) -> tuple[str, str]:
    """("ok", path of the rewritten copy) or ("skipped", why it cannot apply here)."""
    from edgecnn.provider_rewrites import rewritten_name, write_rewritten

    elsewhere = rewrite.not_here()
    if elsewhere:
        return "skipped", elsewhere
    target = scratch / rewritten_name(src.name, rewrite.key)
    try:
        count = write_rewritten(rewrite, src, target)
    except MissingDependency as exc:
        return "skipped", str(exc)
    if not count:
        return "skipped", rewrite.nothing
    log(f"{rewrite.label}: {count} convolutions of {src.name} rewritten (exact)")
    return "ok", str(target)


def _measure(
    cand: Candidate, model_dir: Path, batch: int, seconds: float, timeout: float | None = None, verify: bool = True
) -> None:
    """Verify (unless `verify` is False) and time one candidate in a fresh process; a crash or hang
    (no answer within `timeout` seconds, default WORKER_TIMEOUT_S plus 10 x the measuring time)
    fails it, nothing more."""
    spec = {
        "file": cand.file,
        "model_dir": str(model_dir),
        "runner": cand.runner,
        "batch": batch,
        "seconds": seconds,
        "verify": verify,
    }
    timeout = WORKER_TIMEOUT_S + 10 * seconds if timeout is None else timeout
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgecnn.tune"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        cand.status, cand.why = "failed", f"no answer within {timeout:.0f} s (hung); killed"
        return
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        reason = f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"exited {proc.returncode}"
        detail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        cand.status, cand.why = "failed", f"{reason}{': ' + detail if detail else ''}"
        return
    out = json.loads(lines[-1])
    if "error" in out:
        cand.status, cand.why = "failed", out["error"]
        return
    cand.runs.append((out["p50_ms"], out["images_per_s"]))
    cand.p50_ms, cand.images_per_s = out["p50_ms"], out["images_per_s"]
    if "passed" not in out:  # timed only: its verification stands
        return
    cand.verified, cand.accuracy, cand.agreement = out["passed"], out["accuracy"], out["agreement"]
    cand.max_abs_diff, cand.session_s = out["max_abs_diff"], out["session_s"]
    if out["passed"]:
        cand.status = "ok"
    else:
        cand.status = "outside budget"
        cand.why = f"accuracy drop {out['drop_pp']:.2f} pp > budget {out['budget_pp']:g} on the verification set"


def _measure_again(cand: Candidate, model_dir: Path, batch: int, seconds: float) -> None:
    """Time a verified candidate once more (without verifying it again) and let it stand at its
    best measurement: on a shared machine a busy moment only ever slows a measurement down, so one
    unlucky run cannot sink a good candidate. One that crashes or hangs now is failed, with the
    reason; today's default keeps its earlier measurements (it is what runs without tuning)."""
    trial = replace(cand, runs=list(cand.runs))
    _measure(trial, model_dir, batch, seconds, verify=False)
    if trial.status != "ok":
        if not cand.default:
            cand.status, cand.why = "failed", f"measured again: {trial.why}"
        return
    cand.runs = trial.runs
    cand.p50_ms = min(r[0] for r in cand.runs)
    cand.images_per_s = max(r[1] for r in cand.runs)


def _choose(todo: list[Candidate], config: TuneConfig, model_dir: Path, seconds: float) -> Candidate:
    """The fastest verified candidate (at its best measurement), if it still beats the default when
    both are measured twice more, alternating."""
    default = todo[0]
    if default.status != "ok":
        raise EdgecnnError(
            f"today's default configuration ({default.name}) did not pass: {default.why or default.status}; "
            f"check the model with: edgecnn verify {model_dir}"
        )
    ok = [c for c in todo if c.status == "ok"]
    best = min(ok, key=lambda c: c.value(config.objective))
    if best is not default:
        for _ in range(CONFIRM_ROUNDS):  # alternate, so that drift in the machine hits both
            for cand in (default, best):
                _measure_again(cand, model_dir, config.batch_size, seconds)
        if best.status != "ok":  # failed when measured again: the reason says so
            best = default
        elif best.value(config.objective) >= default.value(config.objective):
            best.why = "faster at first, not when measured again beside the default"
            best = default
    for c in ok:
        if c is not best and c.status == "ok" and not c.why:
            c.why = _lost(c, best, config.objective)
    best.chosen = True
    return best


def _lost(c: Candidate, best: Candidate, objective: str) -> str:
    if objective == "latency":
        return f"p50 {c.p50_ms:.3f} ms vs {best.p50_ms:.3f} ms"
    return f"{c.images_per_s:.0f} vs {best.images_per_s:.0f} images/s"


# -- the measuring process ---------------------------------------------------------------------
def _worker(spec: dict) -> dict:
    """Run in a fresh process: open the session, verify (unless spec["verify"] is False), time batch 1
    and the serving batch."""
    from edgecnn.runtime import Runner
    from edgecnn.verify import read_verification_set, score

    vset = read_verification_set(spec["model_dir"])
    runner = Runner(spec["file"], replace(runner_config_of({"runner": spec["runner"]}), prefer_fp16=False))
    verdict = score(runner, vset) if spec.get("verify", True) else None
    images = vset.images
    one = [runner.prepare([images[i % len(images)]]) for i in range(8)]
    reps = -(-spec["batch"] // len(images))
    batch = runner.prepare(list(np.concatenate([images] * reps)[: spec["batch"]]))
    p50 = _timed(lambda i: runner.run(one[i % len(one)]), spec["seconds"])
    per_batch = _timed(lambda i: runner.run(batch), spec["seconds"], warmup=1)
    timing = {"p50_ms": p50 * 1000, "images_per_s": spec["batch"] / per_batch, "provider": runner.provider}
    if verdict is None:
        return timing
    return {
        "passed": verdict.passed,
        "accuracy": verdict.accuracy,
        "agreement": verdict.keras_agreement,
        "max_abs_diff": verdict.max_prob_diff,
        "drop_pp": verdict.drop_pp,
        "budget_pp": verdict.budget_pp,
        "session_s": runner.session_seconds,
        **timing,
    }


def _timed(run, seconds: float, warmup: int = 3, min_runs: int = 5) -> float:
    """Median seconds of `run(i)` over at least `min_runs` calls and `seconds` of time."""
    for i in range(warmup):
        run(i)
    times, start, i = [], time.perf_counter(), 0
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - t)
        i += 1
    return statistics.median(times)


def _worker_main() -> None:
    spec = json.loads(sys.stdin.read())
    try:
        out = _worker(spec)
    except EdgecnnError as exc:
        out = {"error": str(exc)}
    except Exception as exc:  # a provider's own failure: reported, the search goes on
        out = {"error": f"{type(exc).__name__}: {first_line(exc)}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    _worker_main()
