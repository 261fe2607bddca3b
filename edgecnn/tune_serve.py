"""`edgecnn tune MODEL_DIR --serve`: the serving settings that give the most throughput within a
latency target, measured on this device with a real server and real clients.

`edgecnn tune` chose how one model run goes (file, provider, precision, threads). A served model's
latency and throughput also depend on the largest batch, how long a request waits for others, the
threads (and OpenVINO's streams) and how many clients there are. This search starts a real
`edgecnn serve MODEL_DIR` on loopback for every setting it tries (so every setting serves the
folder's tuned, verified configuration), drives it with `edgecnn.loadgen` at `--clients`
concurrent clients and keeps:

- with `--p99-ms N`: the setting with the most requests/s whose p99 latency is at most N ms;
- without: the most requests/s whose p99 is no worse than today's defaults'.

The search is coordinate-wise (largest batch, then queue delay, then threads, then streams where
the provider has them), each stage starting from the best setting so far. The winner and the
defaults are measured once more, alternately, before anything is chosen: a setting must meet the
limit in both of its measurements. The result goes into the `serve` section of `deploy.json`
(atomically), with every setting tried and why it lost; `edgecnn serve MODEL_DIR` uses it on this
machine and says so in its first line.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgecnn.errors import EdgecnnError, check_above, check_at_least, check_one_of
from edgecnn.loadgen import PAYLOADS, LoadResult
from edgecnn.tuned_config import SERVE_SECTION, ServeSetting

NAME = "tuned"  # the model's name in the URLs of the servers tune starts
BATCH_SIZES = (1, 4, 8, 16, 32, 64)
QUEUE_DELAYS_MS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)
STREAMS = (1, 2)


@dataclass(frozen=True)
class ServeTuneConfig:
    model_dir: str
    p99_ms: float | None = None  # latency target; None: no worse than the defaults' p99
    clients: int = 8  # concurrent clients, each sending its next request when the last is answered
    time_budget_s: float = 60.0  # for the whole search; settings not reached are listed as such
    payload: str = "binary"  # binary | json | png (see edgecnn.loadgen)

    def __post_init__(self):
        if self.p99_ms is not None:
            check_above("p99_ms", self.p99_ms, 0, "milliseconds")
        check_at_least("clients", self.clients, 1)
        check_above("time_budget_s", self.time_budget_s, 0, "seconds")
        check_one_of("payload", self.payload, PAYLOADS)


@dataclass
class Trial:
    setting: ServeSetting
    stage: str  # default | batch | delay | threads | streams
    default: bool = False
    status: str = "not measured"  # ok | failed | not measured (time budget)
    why: str = ""
    runs: list[LoadResult] = field(default_factory=list)
    chosen: bool = False

    @property
    def requests_per_s(self) -> float:
        return statistics.median(r.requests_per_s for r in self.runs)

    @property
    def p99_ms(self) -> float:
        """The worst p99 of its measurements: a setting must meet the limit every time."""
        return max(r.p99_ms for r in self.runs)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.runs)

    def to_dict(self) -> dict:
        out = {"stage": self.stage, "settings": self.setting.to_dict(), "label": self.setting.label()}
        out.update(status=self.status, why=self.why, default=self.default, chosen=self.chosen)
        if self.runs:
            out.update(
                requests_per_s=round(self.requests_per_s, 1),
                p50_ms=round(self.p50_ms, 3),
                p99_ms=round(self.p99_ms, 3),
                errors=sum(r.errors for r in self.runs),
                mean_batch_size=self.runs[-1].mean_batch_size,
                runs=[r.to_dict() for r in self.runs],
            )
        return out


@dataclass
class ServeTuneResult:
    model_dir: str
    config: ServeTuneConfig
    chosen: Trial
    default: Trial
    trials: list[Trial]
    limit_ms: float  # the p99 every kept setting met
    seconds: float

    @property
    def speedup(self) -> float:
        return self.chosen.requests_per_s / self.default.requests_per_s

    def to_dict(self) -> dict:
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "clients": self.config.clients,
            "payload": self.config.payload,
            "p99_target_ms": self.config.p99_ms,
            "p99_limit_ms": round(self.limit_ms, 3),
            "chosen": self.chosen.setting.to_dict(),
            "chosen_label": self.chosen.setting.label(),
            "measured": {
                "requests_per_s": round(self.chosen.requests_per_s, 1),
                "p50_ms": round(self.chosen.p50_ms, 3),
                "p99_ms": round(self.chosen.p99_ms, 3),
            },
            "default_measured": {
                "requests_per_s": round(self.default.requests_per_s, 1),
                "p50_ms": round(self.default.p50_ms, 3),
                "p99_ms": round(self.default.p99_ms, 3),
            },
            "speedup_vs_default": round(self.speedup, 4),
            "seconds": self.seconds,
            "trials": [t.to_dict() for t in self.trials],
        }


# -- the search --------------------------------------------------------------------------------
def tune_serve(
    config: ServeTuneConfig,
    progress: Callable[[int, int, str], None] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> ServeTuneResult:
    """Search the serving settings, write deploy.json's `serve` section; returns the result."""
    from edgecnn.files import write_json
    from edgecnn.machine import physical_cores
    from edgecnn.serve.config import ServeConfig
    from edgecnn.tuned_config import DEPLOY_FILE, differences, fingerprint, read_deploy

    started = time.perf_counter()
    model_dir = Path(config.model_dir)
    if not model_dir.is_dir():
        raise EdgecnnError(f"{model_dir}: no such model folder")
    deploy = read_deploy(model_dir)
    if deploy is None:
        raise EdgecnnError(
            f"{model_dir}: not tuned yet; tune how the model runs first (edgecnn tune {model_dir}), then its serving"
        )
    different = differences(deploy["machine"], fingerprint())
    if different:
        raise EdgecnnError(
            f"{model_dir / DEPLOY_FILE} was tuned on another machine ({different[0]}); run edgecnn tune {model_dir} here first"
        )
    defaults = ServeConfig()
    runner = deploy["chosen"]["runner"]
    tuned_threads = runner.get("intra_op_threads") or physical_cores()
    openvino = str(runner.get("device", "")).startswith("openvino")
    ep_options = tuple(tuple(pair) for pair in runner.get("ep_options") or ())
    stages = _stages(physical_cores(), tuned_threads, openvino)
    planned = 1 + sum(len(values) for _, values in stages) + 2  # the default, every stage, the final check
    deadline = started + config.time_budget_s
    default = Trial(
        ServeSetting(defaults.max_batch_size, defaults.max_queue_delay_ms, tuned_threads), "default", default=True
    )
    trials = [default]
    step = [0]

    def measure(trial: Trial, seconds: float) -> None:
        step[0] += 1
        if progress:
            progress(min(step[0], planned), planned, trial.setting.label())
        _measure(trial, model_dir, config, seconds, ep_options)

    # the first run also tells how long a server takes to start: the budget is shared from there
    t0 = time.perf_counter()
    measure(default, 2.0)
    if default.status != "ok":
        raise EdgecnnError(f"today's default serving settings did not run: {default.why}")
    start_s = max(0.5, time.perf_counter() - t0 - 2.0)
    left = deadline - time.perf_counter()
    measure_s = min(5.0, max(0.5, left * 0.9 / (planned - 1) - start_s))

    def limit() -> float:  # the target, else the defaults' worst p99 so far
        return config.p99_ms if config.p99_ms is not None else default.p99_ms

    best = default
    for stage, values in stages:
        for value in values:
            setting = _with(best.setting, stage, value)
            if any(t.setting == setting for t in trials) or (stage == "delay" and setting.max_batch_size == 1):
                continue  # measured already; or no batching, where the queue delay changes nothing
            trial = Trial(setting, stage)
            trials.append(trial)
            if time.perf_counter() > deadline:
                trial.status, trial.why = (
                    "not measured (time budget)",
                    f"--time-budget {config.time_budget_s:g} s spent",
                )
                continue
            measure(trial, measure_s)
        best = _best([t for t in trials if t.status == "ok"], limit()) or best
    chosen = _check(trials, default, config, limit, measure, measure_s, log)
    for t in trials:
        if t is not chosen and not t.why and t.status == "ok":
            t.why = _lost(t, chosen, limit())
    chosen.chosen = True
    result = ServeTuneResult(
        str(model_dir), config, chosen, default, trials, limit(), round(time.perf_counter() - started, 2)
    )
    deploy = read_deploy(model_dir)  # read again: written atomically, never half
    deploy[SERVE_SECTION] = result.to_dict()
    write_json(model_dir / DEPLOY_FILE, deploy)
    return result


def _stages(cores: int, tuned_threads: int, openvino: bool) -> list[tuple[str, tuple]]:
    threads = tuple(sorted({1, max(1, cores // 2), cores, tuned_threads}))
    stages = [("batch", BATCH_SIZES), ("delay", QUEUE_DELAYS_MS), ("threads", threads)]
    if openvino:
        stages.append(("streams", STREAMS))
    return stages


def _with(setting: ServeSetting, stage: str, value) -> ServeSetting:
    from dataclasses import replace

    field_name = {
        "batch": "max_batch_size",
        "delay": "max_queue_delay_ms",
        "threads": "threads",
        "streams": "streams",
    }[stage]
    return replace(setting, **{field_name: value})


def _feasible(trial: Trial, limit: float) -> bool:
    return trial.status == "ok" and trial.p99_ms <= limit and not any(r.errors for r in trial.runs)


def _best(trials: list[Trial], limit: float) -> Trial | None:
    """The most requests/s among the trials within the limit."""
    within = [t for t in trials if _feasible(t, limit)]
    return max(within, key=lambda t: t.requests_per_s) if within else None


def _check(trials, default, config, limit, measure, seconds, log) -> Trial:
    """Measure the best settings once more beside the defaults (alternating, so drift hits both) and
    keep the first that still meets the limit and still beats the defaults. limit(): the p99 limit."""
    ranked = sorted(
        (t for t in trials if _feasible(t, limit()) and not t.default), key=lambda t: t.requests_per_s, reverse=True
    )
    for candidate in ranked[:3]:
        measure(default, seconds)
        measure(candidate, seconds)
        if not _feasible(candidate, limit()):
            candidate.why = f"p99 {candidate.p99_ms:.2f} ms > {limit():.2f} ms when measured again"
            log(f"{candidate.setting.label()}: {candidate.why}")
            continue
        if candidate.requests_per_s <= default.requests_per_s and _feasible(default, limit()):
            candidate.why = "faster in the first round, not when measured again beside the defaults"
            continue
        return candidate
    if config.p99_ms is None or _feasible(default, limit()):
        return default
    reached = min((t for t in trials if t.status == "ok"), key=lambda t: t.p99_ms, default=None)
    best = f"{reached.p99_ms:.2f} ms ({reached.setting.label()})" if reached else "none (no setting ran)"
    raise EdgecnnError(
        f"--p99-ms {config.p99_ms:g}: no serving setting met it at {config.clients} clients; the best p99 reached "
        f"was {best}; raise the target or lower --clients"
    )


def _lost(trial: Trial, chosen: Trial, limit: float) -> str:
    if trial.p99_ms > limit:
        return f"p99 {trial.p99_ms:.2f} ms > {limit:.2f} ms"
    if any(r.errors for r in trial.runs):
        return f"{sum(r.errors for r in trial.runs)} failed requests"
    return f"{trial.requests_per_s:.0f} vs {chosen.requests_per_s:.0f} requests/s"


def serve_options(setting: ServeSetting, ep_options=()) -> tuple[str, ...]:
    """The `edgecnn serve` options of a server measuring `setting`: every setting typed, the defaults'
    too, since typed flags beat deploy.json's serve section: an earlier `tune --serve`'s result never
    stands in for the setting measured."""
    typed = setting.options(ep_options)
    if setting.streams is None:  # the tuned provider settings as they are (no earlier streams)
        typed += tuple(word for key, value in ep_options for word in ("--ep-option", f"{key}={value}"))
    return typed


def _measure(trial: Trial, model_dir: Path, config: ServeTuneConfig, seconds: float, ep_options=()) -> None:
    """One more measurement of a trial; a server that fails to start, to carry the load or to stop
    cleanly fails the trial, nothing more."""
    options = serve_options(trial.setting, ep_options)
    try:
        result = measure_serving(model_dir, options, config.clients, seconds, config.payload)
    except EdgecnnError as exc:
        trial.status, trial.why = "failed", str(exc).splitlines()[0][:300]
        return
    trial.runs.append(result)
    trial.status = "ok"


def measure_serving(
    model_dir: Path, options: tuple[str, ...], clients: int, seconds: float, payload: str = "binary"
) -> LoadResult:
    """Start `edgecnn serve MODEL_DIR OPTIONS` on loopback, warm it up, drive it with `clients`
    clients for `seconds`, stop it with SIGTERM. An EdgecnnError when it does not start, the load
    fails, or it does not exit 0."""
    from edgecnn.launch import ServeProcess
    from edgecnn.loadgen import run_load

    server = ServeProcess(Path(model_dir), ("--name", NAME, "--no-ui", *options), stderr=subprocess.PIPE)
    try:
        server.start()
    except EdgecnnError:
        if server.proc.stderr:
            server.proc.stderr.close()
        raise
    try:
        run_load(server.base, NAME, clients, 10**9, min(0.5, seconds / 4), payload)  # warm-up
        result = run_load(server.base, NAME, clients, 10**9, seconds, payload)
    except OSError as exc:
        raise EdgecnnError(f"the load failed: {exc}") from None
    finally:
        code = server.stop()
        server.proc.stderr.close()
    if code != 0:
        raise EdgecnnError(f"the server exited with {code} on SIGTERM")
    return result
