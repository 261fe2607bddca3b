"""edgecnn tune --serve: serving settings measured with a real server and real clients, used by serve."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from typer.testing import CliRunner

from edgecnn.cli import app
from edgecnn.errors import EdgecnnError, ModelError
from edgecnn.launch import ServeProcess
from edgecnn.loadgen import run_load
from edgecnn.tune import TuneConfig, tune
from edgecnn.serve.config import ServeConfig
from edgecnn.tune_serve import NAME, ServeTuneConfig, serve_options, tune_serve
from edgecnn.tuned_config import DEPLOY_FILE, ServeSetting, apply_serving, read_serving, resolve
from edgecnn.runtime import RunnerConfig
from trained_models import copy_export


@pytest.fixture(scope="module")
def tuned(exported_digits, tmp_path_factory):
    """The digits export, its run tuned on the CPU provider (a short search: which settings win is not the point)."""
    folder = copy_export(exported_digits, tmp_path_factory.mktemp("tuned-serve") / "digits")
    tune(TuneConfig(str(folder), devices=("cpu",), rewrites=False, time_budget_s=8))
    return folder


@pytest.fixture(scope="module")
def served(tuned):
    """tune --serve through the command line, with a small budget and two clients."""
    out = CliRunner().invoke(app, ["tune", str(tuned), "--serve", "--clients", "2", "--time-budget", "12", "--json"])
    assert out.exit_code == 0, out.output
    return tuned, json.loads(out.stdout)


def test_tune_serve_writes_a_serve_section_with_every_setting_tried_and_why_it_lost(served):
    folder, printed = served
    section = json.loads((folder / DEPLOY_FILE).read_text())["serve"]
    assert section == printed
    assert section["clients"] == 2 and section["p99_target_ms"] is None
    trials = section["trials"]
    assert trials[0]["stage"] == "default" and trials[0]["default"] and trials[0]["status"] == "ok"
    assert sum(t["chosen"] for t in trials) == 1
    chosen = next(t for t in trials if t["chosen"])
    assert chosen["settings"] == section["chosen"] and chosen["status"] == "ok" and chosen["errors"] == 0
    # without a target the limit is the defaults' worst p99, and the winner met it in every measurement
    assert section["p99_limit_ms"] == trials[0]["p99_ms"]
    assert max(r["p99_ms"] for r in chosen["runs"]) <= section["p99_limit_ms"]
    assert chosen["default"] or len(chosen["runs"]) == 2  # checked again once before it was chosen
    for t in trials:
        assert t["status"] in ("ok", "not measured (time budget)"), t
        if t["status"] == "ok":
            assert t["requests_per_s"] > 0 and 0 < t["p50_ms"] <= t["p99_ms"] and t["mean_batch_size"] >= 1
            assert t["chosen"] or t["why"]
    stages = {t["stage"] for t in trials}
    assert "batch" in stages and section["speedup_vs_default"] >= 1.0


def test_serve_given_the_folder_uses_the_tuned_serving_settings_and_says_so_first(served):
    folder, section = served
    chosen = section["chosen"]
    server = ServeProcess(folder, ("--no-ui",), stdout=subprocess.PIPE, stderr=subprocess.PIPE).start()
    try:
        result = run_load(server.base, "digits", clients=2, max_requests=40, duration_s=5)
    finally:
        assert server.stop() == 0
    with server.proc.stderr, server.proc.stdout:
        first = server.proc.stderr.read().decode().splitlines()[0]
        ready = server.proc.stdout.read().decode().splitlines()[0]
    assert "serving settings from tune --serve: " + ServeSetting(**chosen).label() in first
    assert first.startswith("using the tuned configuration from")
    batching = "off" if chosen["max_batch_size"] == 1 else f"up to {chosen['max_batch_size']} rows"
    assert f"(batching {batching};" in ready
    assert result.errors == 0 and result.requests == 40


def test_typed_serving_flags_win_over_the_tuned_ones(served):
    folder, _ = served
    resolved = resolve(folder, RunnerConfig(intra_op_threads=2), explicit=frozenset({"intra_op_threads"}))
    batch, delay, runner = apply_serving(resolved, 7, 3.5, frozenset({"max_batch_size", "intra_op_threads"}))
    assert batch == 7 and runner.intra_op_threads == 2  # typed
    assert delay == resolved.serving.max_queue_delay_ms  # tuned


def test_a_target_that_cannot_be_met_is_one_line_naming_the_best_p99_reached(tuned, tmp_path):
    folder = copy_export(tuned, tmp_path / "digits")
    before = (folder / DEPLOY_FILE).read_text()
    out = CliRunner().invoke(
        app, ["tune", str(folder), "--serve", "--p99-ms", "0.0001", "--clients", "2", "--time-budget", "4"]
    )
    assert out.exit_code == 1
    [line] = out.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: --p99-ms 0.0001: no serving setting met it at 2 clients; the best p99 reached was ")
    assert line.endswith("raise the target or lower --clients")
    assert (folder / DEPLOY_FILE).read_text() == before  # nothing written


def test_an_untuned_folder_says_to_tune_the_model_first(exported_digits, tmp_path):
    folder = copy_export(exported_digits, tmp_path / "digits")
    (folder / DEPLOY_FILE).unlink(missing_ok=True)
    with pytest.raises(EdgecnnError, match=r"not tuned yet; tune how the model runs first \(edgecnn tune .*\)"):
        tune_serve(ServeTuneConfig(str(folder), time_budget_s=5))


def test_serving_flags_without_serve_and_bad_settings_are_one_line_errors(tuned):
    out = CliRunner().invoke(app, ["tune", str(tuned), "--p99-ms", "5"])
    assert (
        out.exit_code == 1 and out.stderr.strip() == "error: --p99-ms is for tuning the serving settings: add --serve"
    )
    out = CliRunner().invoke(app, ["tune", str(tuned), "--serve", "--clients", "0"])
    assert out.exit_code == 1 and out.stderr.strip() == "error: --clients 0: expected 1 or more"
    out = CliRunner().invoke(app, ["tune", str(tuned), "--serve", "--p99-ms", "-1"])
    assert out.exit_code == 1 and "--p99-ms -1" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_malformed_serve_section_is_a_one_line_error():
    assert read_serving({}) is None
    with pytest.raises(ModelError, match="its serve section is malformed"):
        read_serving({"serve": {"chosen": {"max_batch_size": "many"}}})


def test_a_serve_section_with_settings_serve_cannot_take_names_deploy_json():
    """Not serve's own flag error (`max_queue_delay_ms -1.0: expected 0 or more`), which names a flag nobody typed."""
    for chosen in (
        {"max_batch_size": 0, "max_queue_delay_ms": 1.0},
        {"max_batch_size": 8, "max_queue_delay_ms": -1.0},
        {"max_batch_size": 8, "max_queue_delay_ms": float("nan")},
        {"max_batch_size": 8, "max_queue_delay_ms": 1.0, "threads": 0},
        {"max_batch_size": 8, "max_queue_delay_ms": 1.0, "streams": -2},
    ):
        with pytest.raises(ModelError, match="deploy.json: its serve section is malformed"):
            read_serving({"serve": {"chosen": chosen}})


def test_serve_settings_become_serve_options_keeping_the_tuned_provider_settings():
    setting = ServeSetting(16, 1.0, threads=2, streams=2)
    assert setting.options((("precision", "f32"), ("streams", "4"))) == (
        "--max-batch-size", "16", "--max-queue-delay-ms", "1", "--threads", "2",
        "--ep-option", "precision=f32", "--ep-option", "streams=2",
    )  # fmt: skip
    assert ServeSetting(1, 0.5, threads=1).label() == "batch <= 1, delay 0.5 ms, 1 thread"


def test_tuning_again_measures_today_s_defaults_not_the_serve_section_it_replaces(tuned, tmp_path):
    """Every server tune --serve starts is given all its serving settings: the folder's earlier serve
    section never stands in for them (its model metadata states the largest batch its batcher runs)."""
    folder = copy_export(tuned, tmp_path / "digits")
    deploy = json.loads((folder / DEPLOY_FILE).read_text())
    deploy["serve"] = {"chosen": {"max_batch_size": 1, "max_queue_delay_ms": 0.0}}
    (folder / DEPLOY_FILE).write_text(json.dumps(deploy))
    defaults = ServeSetting(ServeConfig().max_batch_size, ServeConfig().max_queue_delay_ms)
    for setting in (defaults, ServeSetting(4, 2.0)):
        server = ServeProcess(
            folder, ("--name", NAME, *serve_options(setting)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server.start()
        try:
            served = httpx.get(f"{server.base}/v2/models/{NAME}", timeout=10).json()["parameters"]
        finally:
            assert server.stop() == 0
        assert served["max_batch_size"] == setting.max_batch_size > 1
