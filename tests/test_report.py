"""`edgecnn report`: one self-contained HTML page of a model folder, checked as data and in Chromium."""

from __future__ import annotations

import json
from html import escape
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from browser import Watched, launch_chromium
from trained_models import copy_model_dir
from edgecnn.cli import app
from edgecnn.data import load_arrays, split_folder
from edgecnn.files import write_json
from edgecnn.metadata import read_model_dir
from edgecnn.report import ReportConfig, per_class_scores, write_report
from edgecnn.runtime import Runner, RunnerConfig
from edgecnn.verify import write_verification_set

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("data", "training", "confusion", "per_class", "misclassified", "export", "profile", "tuning")
DEPLOY = {
    "chosen": {"name": "int8-cpu-2t", "variant": "int8", "provider": "CPUExecutionProvider", "threads": 2},
    "candidates": [
        {
            "name": "fp32-cpu",
            "variant": "fp32",
            "provider": "CPUExecutionProvider",
            "verified": True,
            "accuracy": 0.98,
            "agreement": 1.0,
            "max_abs_diff": 1e-6,
            "p50_ms": 0.05,
            "images_per_s": 20000.0,
            "status": "ok",
        },
        {
            "name": "int8-cpu-2t",
            "variant": "int8",
            "provider": "CPUExecutionProvider",
            "verified": True,
            "accuracy": 0.98,
            "agreement": 0.997,
            "max_abs_diff": 0.03,
            "p50_ms": 0.04,
            "images_per_s": 26000.0,
            "status": "ok",
            "threads": 2,
        },
        {
            "name": "fp16-cuda",
            "variant": "fp16",
            "provider": "CUDAExecutionProvider",
            "verified": False,
            "status": "skipped",
            "why": "no CUDA here",
        },
    ],
    "machine": {"cpu_model": "a test CPU", "logical_cores": 2},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits_model) -> Path:
    """The digits CNN: trained, exported (FP32), profiled; a verification set from its validation images."""
    from edgecnn.export import ExportConfig, export
    from edgecnn.profile import ProfileConfig, profile_models

    model_dir = copy_model_dir(digits_model.dir, tmp_path_factory.mktemp("report") / "digits")
    export(
        ExportConfig(str(model_dir), quantize=("int8",), calibration_samples=64, parity_samples=64, latency_batch=4),
        log=lambda m: None,
    )
    profile = profile_models(
        [model_dir / "model.onnx"],
        ProfileConfig(
            batch_sizes=(1, 4),
            iterations=10,
            warmup=1,
            op_profile=True,
            op_profile_runs=3,
            runner=RunnerConfig(device="cpu"),
        ),
    )
    write_json(model_dir / "profile.json", profile.to_dict())
    images, labels, probs = validation_predictions(model_dir)
    meta, _ = read_model_dir(model_dir)
    write_verification_set(model_dir, images, labels, probs, meta.class_names, 2.0, len(images))
    return model_dir


def validation_predictions(model_dir: Path):
    meta, record = read_model_dir(model_dir)
    cfg = record["training"]["config"]
    split = split_folder(cfg["data_dir"], cfg["validation_split"], cfg["seed"], class_names=meta.class_names)
    images, labels, _ = load_arrays(split.validation, meta.image_size, meta.channels)
    runner = Runner(model_dir / "model.onnx", RunnerConfig(device="cpu"))
    return images, labels.astype(np.int64), runner.run(images)


def misclassified(model_dir: Path) -> int:
    with np.load(model_dir / "verification.npz") as npz:
        return int((npz["probabilities"].argmax(1) != npz["labels"]).sum())


@pytest.fixture(scope="module")
def full(folder, tmp_path_factory):
    """A folder with everything, a tuned configuration included, and its report."""
    model_dir = tmp_path_factory.mktemp("full") / "digits"
    shutil.copytree(folder, model_dir)
    write_json(model_dir / "deploy.json", DEPLOY)
    return model_dir, write_report(ReportConfig(str(model_dir)))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from launch_chromium(tmp_path_factory)


# -- what the page holds -----------------------------------------------------------------------
def test_a_full_folder_fills_every_section(full):
    model_dir, result = full
    assert result.path == model_dir / "report.html" and result.path.is_file()
    assert {s.key: s.has_data for s in result.sections} == dict.fromkeys(SECTIONS, True)
    assert result.missing == {}
    assert result.misclassified == misclassified(model_dir) > 0
    assert result.thumbnails == result.misclassified and "verification.npz" in result.misclassified_source


def test_the_page_is_one_self_contained_file(full):
    html = full[1].path.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    assert html.count("src='data:image/png;base64,") == full[1].thumbnails
    assert html.count("<svg") == 4  # loss, accuracy, latency, throughput


def test_the_numbers_on_the_page_are_the_folders_numbers(full):
    model_dir, result = full
    html = result.path.read_text()
    record = json.loads((model_dir / "metadata.json").read_text())
    matrix = np.asarray(record["training"]["confusion_matrix"])
    precision, recall, f1 = per_class_scores(matrix)
    assert f"<td>{f1.mean():.3f}</td>" in html and f"<td>{precision[0]:.3f}</td>" in html
    export = json.loads((model_dir / "export_report.json").read_text())
    assert f"<td>{export['variants'][0]['accuracy']:.2%}</td>" in html
    profile = json.loads((model_dir / "profile.json").read_text())
    assert f"<td>{profile['models'][0]['model_only'][0]['p50_ms']:.3f}</td>" in html
    slowest = profile["models"][0]["slowest_nodes"][0]  # where in the network the time goes
    assert "Slowest nodes" in html and f"<td>{escape(slowest['name'])}</td><td>{slowest['op_type']}</td>" in html
    assert profile["machine"]["cpu_model"] in html and "a test CPU" in html  # each number's machine


def test_the_export_section_lists_the_most_sensitive_int8_layers_and_recall_per_class(full):
    model_dir, result = full
    html = result.path.read_text()
    export = json.loads((model_dir / "export_report.json").read_text())

    assert "<h3>Most sensitive INT8 layers</h3>" in html and export["int8_sensitivity"]
    for layer in export["int8_sensitivity"]:
        assert f"<td>{layer['node']}</td><td>{layer['op_type']}</td><td>{layer['sqnr_db']:.1f}</td>" in html
    assert "<h3>Recall per class</h3><table><tr><th>class</th><th>fp32</th><th>int8</th></tr>" in html
    fp32, int8 = export["variants"]
    for i, name in enumerate(export["class_names"]):
        assert (
            f"<tr><td>{name}</td><td>{fp32['class_recall'][i]:.2%}</td><td>{int8['class_recall'][i]:.2%}</td></tr>"
            in html
        )


def test_precision_recall_and_f1_follow_their_definitions():
    matrix = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    precision, recall, f1 = per_class_scores(matrix)
    np.testing.assert_allclose(precision, [8 / 9, 9 / 11, 0])
    np.testing.assert_allclose(recall, [0.8, 0.9, 0])
    np.testing.assert_allclose(f1, [2 * (8 / 9) * 0.8 / (8 / 9 + 0.8), 2 * (9 / 11) * 0.9 / (9 / 11 + 0.9), 0])


def test_tuning_candidates_are_a_table_of_whatever_keys_they_have(full):
    html = full[1].path.read_text()
    section = html[html.index("<section id='tuning'") :]
    for key in ("name", "verified", "max_abs_diff", "images_per_s", "status", "threads", "why"):
        assert f"<th>{key}</th>" in section
    assert section.count("<tr class=chosen>") == 1 and "no CUDA here" in section


def test_a_folder_with_only_training_says_how_to_produce_the_rest(folder, tmp_path):
    model_dir = copy_model_dir(folder, tmp_path / "bare")
    result = write_report(ReportConfig(str(model_dir), run_validation=False))
    assert {s.key for s in result.sections if not s.has_data} == {"misclassified", "export", "profile", "tuning"}
    assert result.missing["Export variants"] == f"edgecnn export {model_dir} --quantize int8"
    assert result.missing["Profile: latency, throughput, operators"].startswith(
        f"edgecnn profile {model_dir}/model.onnx"
    )
    assert "--json" in result.missing["Profile: latency, throughput, operators"]
    html = result.path.read_text()
    assert html.count("class='missing'") == 4 and f"edgecnn export {model_dir} --quantize int8" in html


def test_without_a_verification_set_the_onnx_model_runs_on_the_validation_folder(folder, tmp_path):
    model_dir = tmp_path / "digits"
    shutil.copytree(folder, model_dir)
    (model_dir / "verification.npz").unlink()
    result = write_report(ReportConfig(str(model_dir), out=str(tmp_path / "elsewhere.html"), max_thumbnails=2))
    _, labels, probs = validation_predictions(model_dir)
    assert result.path == tmp_path / "elsewhere.html"
    assert result.misclassified == int((probs.argmax(1) != labels).sum())
    assert result.thumbnails == min(2, result.misclassified)
    assert f"model.onnx run on the {len(labels)} validation images" in result.misclassified_source


def test_a_verification_set_that_does_not_fit_the_model_is_named_not_drawn(folder, tmp_path):
    model_dir = tmp_path / "digits"
    shutil.copytree(folder, model_dir)
    write_verification_set(
        model_dir, np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, int), np.zeros((2, 3), np.float32), "abc", 2.0, 2
    )
    result = write_report(ReportConfig(str(model_dir)))
    assert result.thumbnails == 0 and "does not match this model" in result.path.read_text()


def test_a_verification_set_that_is_not_a_zip_is_named_not_a_traceback(folder, tmp_path):
    model_dir = tmp_path / "digits"
    shutil.copytree(folder, model_dir)
    whole = (model_dir / "verification.npz").read_bytes()
    (model_dir / "verification.npz").write_bytes(whole[:1000])
    result = write_report(ReportConfig(str(model_dir)))
    assert result.thumbnails == 0 and "not a readable verification set" in result.path.read_text()


# -- the command line ----------------------------------------------------------------------------
def test_cli_writes_the_report_and_says_where(full, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(full[0]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["thumbnails"] == full[1].thumbnails and out.is_file()


def test_cli_mistakes_are_one_line(full, tmp_path):
    missing = CliRunner().invoke(app, ["report", str(full[0]), "--profile", str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and "--profile" in missing.output and len(missing.output.strip().splitlines()) == 1
    not_a_model = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert not_a_model.exit_code == 1 and "not a trained edgecnn model" in not_a_model.output
    (tmp_path / "bad.json").write_text("{")
    bad = CliRunner().invoke(
        app, ["report", str(full[0]), "--profile", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.html")]
    )
    assert bad.exit_code == 1 and "unreadable JSON" in bad.output and not (tmp_path / "x.html").exists()
    (tmp_path / "other.json").write_text(json.dumps({"variants": []}))  # JSON, but an export report
    other = CliRunner().invoke(
        app, ["report", str(full[0]), "--profile", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.html")]
    )
    assert (
        other.exit_code == 1 and "not an edgecnn profile report" in other.output and not (tmp_path / "x.html").exists()
    )
    folder = CliRunner().invoke(app, ["report", str(full[0]), "--out", str(tmp_path)])
    assert folder.exit_code == 1 and "it is a folder; give a file name" in folder.output


def test_writing_a_report_imports_neither_tensorflow_nor_matplotlib(full, tmp_path):
    code = (
        f"import sys\nfrom edgecnn.report import ReportConfig, write_report\n"
        f"write_report(ReportConfig({str(full[0])!r}, out={str(tmp_path / 'r.html')!r}))\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- in Chromium ---------------------------------------------------------------------------------
def test_the_report_opens_in_chromium_without_errors_or_network(full, browser):
    context = browser.new_context()
    watched = Watched(context.new_page())
    watched.page.goto(full[1].path.resolve().as_uri())
    page = watched.page
    shown = {s: page.locator(f"section#{s}").get_attribute("data-has-data") for s in SECTIONS}
    assert shown == dict.fromkeys(SECTIONS, "true")
    for s in SECTIONS:
        assert page.locator(f"section#{s}").is_visible() and page.locator(f"section#{s} .missing").count() == 0
    thumbs = page.locator(".thumb img")
    assert thumbs.count() == full[1].thumbnails
    assert all(thumbs.nth(i).evaluate("img => img.complete && img.naturalWidth >= 64") for i in range(thumbs.count()))
    assert page.locator("svg.chart").count() == 4
    assert all(box["width"] > 200 for box in (c.bounding_box() for c in page.locator("svg.chart").all()))
    assert watched.errors == []
    assert all(re.match(r"(file|data):", url) for url in watched.requests), watched.requests
    context.close()


def test_every_report_option_has_help_text():
    command = typer.main.get_command(app).commands["report"]
    assert command.help
    assert all(p.help for p in command.params if p.param_type_name == "option")


def test_open_hands_the_file_to_the_default_browser(full, tmp_path):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    out = tmp_path / "r.html"
    done = subprocess.run(
        [sys.executable, "-m", "edgecnn.cli", "report", str(full[0]), "--out", str(out), "--open"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "BROWSER": str(browser), "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert opened.read_text().strip() == out.resolve().as_uri()


def test_a_negative_image_count_is_a_one_line_error(full):
    result = CliRunner().invoke(app, ["report", str(full[0]), "--max-images", "-1"])
    assert result.exit_code == 1 and result.output.strip() == "error: --max-images -1: expected 0 or more"
