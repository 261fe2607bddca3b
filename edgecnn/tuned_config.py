"""The tuned configuration of a model folder (`deploy.json`, written by `edgecnn tune`) and its use.

`predict`, `profile`, `serve` and `verify` given a model folder, or a file in it, run the
configuration `edgecnn tune` chose when the folder's `deploy.json` was measured on this machine
(same fingerprint), and say so. On another machine they warn and run today's defaults. A setting
the user typed always wins over a tuned one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from edgecnn.errors import ModelError, SettingError
from edgecnn.metadata import recommended_file

DEPLOY_FILE = "deploy.json"
SERVE_SECTION = "serve"  # written by `edgecnn tune --serve` (edgecnn.tune_serve)
DEPLOY_FORMAT = 1
# The RunnerConfig fields a tuned configuration sets.
TUNED_FIELDS = (
    "device",
    "intra_op_threads",
    "allow_spinning",
    "graph_optimization",
    "io_binding",
    "cudnn_conv_algo_search",
    "ep_options",
)
# Machine facts that must agree for measurements to carry over.
FINGERPRINT_KEYS = ("cpu_model", "cpu_flags", "physical_cores", "gpus", "arch", "versions")


def fingerprint() -> dict:
    """What a measurement depends on: CPU model and flags, cores, GPUs, onnxruntime and EP versions."""
    from edgecnn.machine import machine_info
    from edgecnn.ort import import_onnxruntime
    from edgecnn.providers import versions

    info = machine_info()
    facts = {key: info[key] for key in FINGERPRINT_KEYS if key != "versions"}
    facts["versions"] = versions(import_onnxruntime())
    facts["id"] = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return facts


def differences(saved: dict, now: dict) -> list[str]:
    """The fingerprint facts that differ, as 'key: saved -> now'."""
    out = []
    for key in FINGERPRINT_KEYS:
        if saved.get(key) != now.get(key):
            out.append(f"{key}: {saved.get(key)!r} -> {now.get(key)!r}")
    return out


def read_deploy(model_dir: str | Path) -> dict | None:
    """The folder's deploy.json, None when there is none; a one-line error when it is not ours."""
    path = Path(model_dir) / DEPLOY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{path}: not a readable tuned configuration ({exc}); run edgecnn tune {model_dir} again or delete it"
        ) from None
    chosen = data.get("chosen") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != DEPLOY_FORMAT
        or not isinstance(chosen, dict)
        or not isinstance(chosen.get("file"), str)
        or not isinstance(chosen.get("runner"), dict)
        or not isinstance(data.get("machine"), dict)
    ):
        raise ModelError(
            f"{path}: not an edgecnn tuned configuration (format {DEPLOY_FORMAT}); "
            f"run edgecnn tune {model_dir} again or delete it"
        )
    if "/" in chosen["file"] or "\\" in chosen["file"] or chosen["file"].startswith("."):
        raise ModelError(
            f"{path}: the chosen file {chosen['file']!r} is not a file of this folder; run edgecnn tune again"
        )
    return data


def runner_config_of(chosen: dict, base=None):
    """The RunnerConfig a deploy.json `chosen` entry describes (over `base`'s other fields)."""
    from edgecnn.runtime import RunnerConfig

    settings = {k: v for k, v in chosen["runner"].items() if k in TUNED_FIELDS}
    if "ep_options" in settings:
        settings["ep_options"] = tuple((str(k), str(v)) for k, v in settings["ep_options"])
    try:
        return replace(base or RunnerConfig(), **settings)
    except TypeError as exc:
        raise ModelError(f"deploy.json: a tuned setting is malformed ({exc}); run edgecnn tune again") from None
    except SettingError as exc:  # named as deploy.json names it, not by a flag nobody typed
        raise ModelError(f"deploy.json: chosen.runner.{exc.message(exc.setting)}; run edgecnn tune again") from None


def runner_settings(config) -> dict:
    """The tuned fields of a RunnerConfig, for deploy.json."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name in TUNED_FIELDS}
    values["ep_options"] = [list(pair) for pair in values["ep_options"]]
    return values


@dataclass(frozen=True)
class Resolved:
    """What to run: the file, the runner settings, and the line that says where they came from."""

    path: Path
    runner: object  # RunnerConfig
    note: str = ""  # for the command's first line; "" when there is nothing to say
    warning: bool = False
    tuned: bool = False
    serving: "ServeSetting | None" = None  # the serving settings `tune --serve` chose, where it ran here
    serving_note: str = ""  # the line that says so


@dataclass(frozen=True)
class ServeSetting:
    """What `serve` is started with. threads None: the tuned configuration's (today's default)."""

    max_batch_size: int
    max_queue_delay_ms: float
    threads: int | None = None
    streams: int | None = None  # OpenVINO's parallel inference streams; None: what its hint picks

    def options(self, ep_options=()) -> tuple[str, ...]:
        """`serve` options for this setting; ep_options: the tuned provider settings, which a typed
        --ep-option would otherwise replace."""
        out = ("--max-batch-size", str(self.max_batch_size), "--max-queue-delay-ms", f"{self.max_queue_delay_ms:g}")
        if self.threads is not None:
            out += ("--threads", str(self.threads))
        if self.streams is not None:
            for key, value in [*((k, v) for k, v in ep_options if k != "streams"), ("streams", self.streams)]:
                out += ("--ep-option", f"{key}={value}")
        return out

    def label(self) -> str:
        words = [f"batch <= {self.max_batch_size}", f"delay {self.max_queue_delay_ms:g} ms"]
        if self.threads is not None:
            words.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        if self.streams is not None:
            words.append(f"{self.streams} streams")
        return ", ".join(words)

    def to_dict(self) -> dict:
        out = {"max_batch_size": self.max_batch_size, "max_queue_delay_ms": self.max_queue_delay_ms}
        if self.threads is not None:
            out["threads"] = self.threads
        if self.streams is not None:
            out["streams"] = self.streams
        return out


def serving_note(section: dict) -> str:
    """How `serve` says which tuned serving settings it runs."""
    measured = section.get("measured", {})
    return (
        f"serving settings from tune --serve: {section.get('chosen_label', '')} "
        f"(measured {measured.get('requests_per_s', '?')} requests/s, p99 {measured.get('p99_ms', '?')} ms "
        f"at {section.get('clients', '?')} clients)"
    )


def read_serving(deploy: dict) -> ServeSetting | None:
    """The tuned serving settings of a deploy.json, None when it has none; an error when malformed."""
    section = deploy.get(SERVE_SECTION)
    if section is None:
        return None
    chosen = section.get("chosen") if isinstance(section, dict) else None
    try:
        setting = ServeSetting(
            int(chosen["max_batch_size"]),
            float(chosen["max_queue_delay_ms"]),
            int(chosen["threads"]) if chosen.get("threads") is not None else None,
            int(chosen["streams"]) if chosen.get("streams") is not None else None,
        )
        if (
            setting.max_batch_size < 1
            or not setting.max_queue_delay_ms >= 0  # NaN too
            or any(n is not None and n < 1 for n in (setting.threads, setting.streams))
        ):
            raise ValueError("out of range")
        return setting
    except (TypeError, KeyError, ValueError, AttributeError, OverflowError):
        raise ModelError(
            "deploy.json: its serve section is malformed; run edgecnn tune MODEL_DIR --serve again or delete it"
        ) from None


def apply_serving(resolved: Resolved, batch: int, delay_ms: float, typed: frozenset[str]) -> tuple[int, float, object]:
    """(max batch size, queue delay, runner config) with `tune --serve`'s settings applied where the
    user typed none. typed: the names among max_batch_size, max_queue_delay_ms, intra_op_threads and
    ep_options that were given."""
    setting, runner = resolved.serving, resolved.runner
    if setting is None:
        return batch, delay_ms, runner
    if "max_batch_size" not in typed:
        batch = setting.max_batch_size
    if "max_queue_delay_ms" not in typed:
        delay_ms = setting.max_queue_delay_ms
    if setting.threads is not None and "intra_op_threads" not in typed:
        runner = replace(runner, intra_op_threads=setting.threads)
    if setting.streams is not None and "ep_options" not in typed:
        options = tuple((k, v) for k, v in runner.ep_options if k != "streams") + (("streams", str(setting.streams)),)
        runner = replace(runner, ep_options=options)
    return batch, delay_ms, runner


def default_file(model_dir: Path) -> Path:
    """The file a folder without a usable tuning runs: the export's recommended variant, else model.onnx."""
    path = recommended_file(model_dir)
    if path.is_file():
        return path
    raise ModelError(f"{model_dir}: no exported model in this folder; export one with: edgecnn export {model_dir}")


def resolve(model: str | Path, runner, explicit: frozenset[str] = frozenset()) -> Resolved:
    """The file and runner settings for `model` (a folder or an .onnx file), with the tuned
    configuration applied where it was measured on this machine. `explicit`: RunnerConfig fields
    the user set, which always win."""
    model = Path(model)
    folder = model if model.is_dir() else model.parent
    deploy = read_deploy(folder) if model.is_dir() or model.suffix == ".onnx" else None
    if deploy is None:
        return Resolved(default_file(model) if model.is_dir() else model, runner)
    chosen = deploy["chosen"]
    tuned_file = folder / chosen["file"]
    if not model.is_dir() and model.name != tuned_file.name:
        return Resolved(
            model,
            runner,
            f"{folder / DEPLOY_FILE} tuned {tuned_file.name}, not {model.name}: running "
            f"{model.name} with default settings",
        )
    different = differences(deploy["machine"], fingerprint())
    if different:
        path = default_file(folder) if model.is_dir() else model
        return Resolved(
            path,
            runner,
            f"warning: {folder / DEPLOY_FILE} was tuned on another machine ({different[0]}); "
            f"running {path.name} with default settings (run edgecnn tune {folder} here)",
            warning=True,
        )
    if not tuned_file.is_file():
        raise ModelError(
            f"{folder / DEPLOY_FILE} chose {tuned_file.name}, which is not in the folder; run edgecnn tune {folder} again"
        )
    tuned = runner_config_of(chosen, runner)
    for name in explicit:  # what the user typed wins
        tuned = replace(tuned, **{name: getattr(runner, name)})
    # Typed flags, and settings a command keeps its own (serve's spinning): never the tuned value.
    overridden = f" (kept as this command sets them: {', '.join(sorted(explicit))})" if explicit else ""
    serving = read_serving(deploy)
    return Resolved(
        tuned_file,
        tuned,
        f"using the tuned configuration from {folder / DEPLOY_FILE}: {chosen.get('name', tuned_file.name)}{overridden}",
        tuned=True,
        serving=serving,
        serving_note=serving_note(deploy[SERVE_SECTION]) if serving else "",
    )
