"""`edgecnn report`: one self-contained HTML page that shows what a model folder knows.

`write_report` reads ``MODEL_DIR/``: ``metadata.json`` (data, training curves, confusion matrix),
``verification.npz`` (the export's verification set: misclassified images as thumbnails; without
it, the ONNX model runs on the validation folder when that is at hand), ``export_report.json``
(variant table), ``profile.json`` or ``--profile FILE`` (latency and throughput against batch
size, top operators, machine) and ``deploy.json`` (the tuned configuration and its candidates).
Charts are inline SVG (`edgecnn.charts`), thumbnails inline PNG: no network, no scripts, no
plotting library, so the file opens from a USB stick. A section without data says which command
produces it. Device path: onnxruntime, numpy and Pillow only, never TensorFlow or matplotlib.

Over 400 lines: one page whose sections are the functions here; its HTML and CSS are in
htmlpage.py and its charts in charts.py.
"""

from __future__ import annotations

import datetime
import json
import warnings
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from edgecnn import __version__
from edgecnn.charts import line_chart, profile_charts
from edgecnn.errors import EdgecnnError, ModelError, check_at_least, first_line
from edgecnn.files import check_writable, write_text
from edgecnn.htmlpage import CSS, generic_table, key_values, machine_table, mb, num, pct, png_data_uri, table
from edgecnn.metadata import VARIANT_FILES, ModelMetadata, read_model_dir
from edgecnn.verdict import LIKELY_CAUSES, Verdict
from edgecnn.verify import read_verification_set

REPORT_FILE = "report.html"
VERIFICATION_FILE = "verification.npz"
EXPORT_REPORT_FILE = "export_report.json"
PROFILE_FILE = "profile.json"
DEPLOY_FILE = "deploy.json"


@dataclass(frozen=True)
class ReportConfig:
    model_dir: str
    out: str | None = None  # default: MODEL_DIR/report.html
    profile: str | None = None  # a profile JSON; default: MODEL_DIR/profile.json when present
    max_thumbnails: int = 60  # misclassified images shown (most confident mistakes first)
    run_validation: bool = True  # without verification.npz, run model.onnx on the validation folder

    def __post_init__(self):
        check_at_least("max_thumbnails", self.max_thumbnails, 0)


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    has_data: bool
    html: str
    hint: str = ""  # what to run when there is no data


@dataclass
class ReportResult:
    path: Path
    sections: list[Section]
    thumbnails: int  # misclassified images shown
    misclassified: int  # misclassified images found
    misclassified_source: str  # where they came from, in words
    size_bytes: int = 0
    missing: dict[str, str] = field(default_factory=dict)  # section title -> how to produce it
    verdict: Verdict | None = None  # did training learn (edgecnn.verdict); None: not recorded (an older folder)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "thumbnails": self.thumbnails,
            "misclassified": self.misclassified,
            "misclassified_source": self.misclassified_source,
            "sections": {s.key: s.has_data for s in self.sections},
            "missing": self.missing,
            "verdict": self.verdict.to_dict() if self.verdict else None,
        }


def write_report(config: ReportConfig) -> ReportResult:
    """Read the model folder, write the HTML page atomically, return what it shows."""
    model_dir = Path(config.model_dir)
    meta, record = read_model_dir(model_dir)
    out = Path(config.out) if config.out else model_dir / REPORT_FILE
    check_writable(out)
    profile_path = Path(config.profile) if config.profile else model_dir / PROFILE_FILE
    if config.profile and not profile_path.is_file():
        raise EdgecnnError(
            f"--profile {profile_path}: no such file; write one with: edgecnn profile MODEL.onnx --json {profile_path}"
        )
    if config.profile and not isinstance((_read_json(profile_path) or {}).get("models"), list):
        raise EdgecnnError(
            f'--profile {profile_path}: not an edgecnn profile report (no "models" list); write one with: '
            f"edgecnn profile MODEL.onnx --json {profile_path}"
        )
    training = record.get("training", {})
    matrix = np.asarray(training.get("confusion_matrix") or [], dtype=np.int64)
    mistakes = _misclassified(model_dir, meta, training, config)
    d = str(model_dir)
    sections = [
        _data_section(meta, training, matrix),
        _curves_section(training.get("history") or {}, d, training),
        _confusion_section(meta, matrix, d),
        _per_class_section(meta, matrix, d),
        _misclassified_section(mistakes, meta.class_names, config.max_thumbnails, d),
        _export_section(_read_json(model_dir / EXPORT_REPORT_FILE), d),
        _profile_section(_read_json(profile_path) if profile_path.is_file() else None, profile_path, d),
        _tuning_section(_read_json(model_dir / DEPLOY_FILE), d),
    ]
    page = _page(model_dir.resolve().name, meta, sections)
    write_text(out, page)
    shown = min(len(mistakes.items), config.max_thumbnails)
    return ReportResult(
        out,
        sections,
        shown,
        len(mistakes.items),
        mistakes.source,
        len(page.encode()),
        {s.title: s.hint for s in sections if not s.has_data},
        _verdict(training),
    )


# -- reading -------------------------------------------------------------------------------
def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgecnnError(f"{path}: unreadable JSON ({exc}); write it again or move it out of the folder") from None
    if not isinstance(data, dict):
        raise EdgecnnError(f"{path}: expected a JSON object; write it again or move it out of the folder")
    return data


@dataclass
class _Mistakes:
    source: str  # in words; "" when there is nothing to look at
    total: int = 0  # images checked
    items: list = field(default_factory=list)  # (image uint8 HxWxC, true, predicted, confidence, p_true)
    problem: str = ""


def _misclassified(model_dir: Path, meta: ModelMetadata, training: dict, config: ReportConfig) -> _Mistakes:
    path = model_dir / VERIFICATION_FILE
    if path.is_file():
        try:
            found = read_verification_set(model_dir)
        except ModelError as exc:
            return _Mistakes("", problem=first_line(exc))
        images, labels, probs = found.images, found.labels, found.probabilities
        if (
            images.ndim != 4
            or labels.shape != (len(images),)
            or probs.shape != (len(images), meta.num_classes)
            or (len(labels) and (labels.min() < 0 or labels.max() >= meta.num_classes))
        ):
            return _Mistakes(
                "",
                problem=f"{path.name} does not match this model ({images.shape} images, {labels.shape} "
                f"labels, {probs.shape} probabilities for {meta.num_classes} classes); export again",
            )
        return _pick(
            images,
            labels,
            probs,
            f"the export's verification set ({path.name}, {len(labels)} validation images, Keras probabilities)",
        )
    onnx_path = model_dir / VARIANT_FILES["fp32"]
    data_dir = (training.get("config") or {}).get("data_dir")
    if not (config.run_validation and onnx_path.is_file() and data_dir and Path(data_dir).is_dir()):
        return _Mistakes("")
    from edgecnn.data import load_arrays, split_folder
    from edgecnn.runtime import Runner, RunnerConfig

    cfg = training.get("config") or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = split_folder(
            data_dir, cfg.get("validation_split", 0.2), cfg.get("seed", 1337), class_names=meta.class_names
        )
    images, labels, _ = load_arrays(split.validation, meta.image_size, meta.channels)
    runner = Runner(onnx_path, RunnerConfig(device="cpu"))
    probs = np.concatenate(
        [runner.run(runner.prepare(list(images[i : i + 64]))) for i in range(0, len(images), 64)]
        or [np.zeros((0, meta.num_classes), np.float32)]
    )
    return _pick(
        images,
        labels.astype(np.int64),
        probs,
        f"{onnx_path.name} run on the {len(labels)} validation images of {data_dir} (no {VERIFICATION_FILE})",
    )


def _pick(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, source: str) -> _Mistakes:
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]  # most confident mistakes first
    items = [
        (images[i], int(labels[i]), int(predicted[i]), float(probs[i, predicted[i]]), float(probs[i, labels[i]]))
        for i in wrong
    ]
    return _Mistakes(source, len(labels), items)


# -- sections ------------------------------------------------------------------------------
def _missing(key: str, title: str, what: str, command: str) -> Section:
    return Section(
        key,
        title,
        False,
        f"<p class='missing'>{escape(what)} Produce it with: <code>{escape(command)}</code></p>",
        command,
    )


def _data_section(meta: ModelMetadata, training: dict, matrix: np.ndarray) -> Section:
    dataset = training.get("dataset") or {}
    rows = [
        ("classes", f"{meta.num_classes}: {', '.join(meta.class_names)}"),
        (
            "model input",
            f"{meta.image_size[0]}x{meta.image_size[1]} pixels, {meta.channels} channel(s), "
            f"{meta.input_dtype} {meta.layout.upper()}",
        ),
        ("training images", dataset.get("train_images")),
        ("validation images", dataset.get("validation_images")),
        ("skipped non-images", dataset.get("skipped_non_images")),
        ("folder", dataset.get("root")),
        (
            "split",
            "train/ and val/ folders"
            if dataset.get("presplit")
            else f"{(training.get('config') or {}).get('validation_split', '?')} of each class held out",
        ),
        ("fingerprint", dataset.get("fingerprint")),
        ("architecture", meta.architecture),
        ("parameters", training.get("parameters")),
    ]
    html = key_values(rows)
    counts = _class_counts(dataset.get("root"), meta, training)
    if counts is None and matrix.size:
        counts = [(name, None, int(n)) for name, n in zip(meta.class_names, matrix.sum(axis=1))]
    if counts:
        html += table(
            ["class", "training images", "validation images"],
            [[name, "" if t is None else t, v] for name, t, v in counts],
        )
    sizes = _image_sizes(dataset.get("root"))
    if sizes:
        html += f"<p>Image sizes on disk (width x height, {sizes[1]} images sampled): {escape(sizes[0])}.</p>"
    return Section("data", "Data", bool(dataset or matrix.size), html)


def _class_counts(root, meta: ModelMetadata, training: dict):
    if not root or not Path(root).is_dir():
        return None
    from edgecnn.data import split_folder

    cfg = training.get("config") or {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            split = split_folder(
                root, cfg.get("validation_split", 0.2), cfg.get("seed", 1337), class_names=meta.class_names
            )
    except EdgecnnError:
        return None
    train = np.bincount([s.label for s in split.train], minlength=meta.num_classes)
    val = np.bincount([s.label for s in split.validation], minlength=meta.num_classes)
    return [(name, int(t), int(v)) for name, t, v in zip(meta.class_names, train, val)]


def _image_sizes(root, limit: int = 200):
    """The distinct image sizes among up to `limit` files under the data folder (headers only)."""
    if not root or not Path(root).is_dir():
        return None
    from PIL import Image

    from edgecnn.images import find_images

    files, _ = find_images([root])
    seen: dict[str, int] = {}
    for path in files[:: max(1, len(files) // limit)][:limit]:
        try:
            with Image.open(path) as img:
                key = f"{img.width}x{img.height}"
        except OSError:
            continue
        seen[key] = seen.get(key, 0) + 1
    if not seen:
        return None
    common = sorted(seen.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{size} ({n})" for size, n in common[:8]) + (
        f", {len(common) - 8} more sizes" if len(common) > 8 else ""
    )
    return shown, sum(seen.values())


def _curves_section(history: dict, d: str, training: dict) -> Section:
    title = "Training curves"
    if not any(history.get(k) for k in ("loss", "accuracy")):
        return _missing("training", title, "No training history in metadata.json.", f"edgecnn train --out {d}")
    charts = []
    for metric in ("loss", "accuracy"):
        series = {name: list(enumerate(history.get(name) or [], start=1)) for name in (metric, f"val_{metric}")}
        values = [v for s in series.values() for _, v in s if v > 0]
        log_y = metric == "loss" and bool(values) and max(values) / min(values) > 50
        charts.append(
            line_chart(
                series,
                metric + (" (log scale)" if log_y else ""),
                "epoch",
                metric,
                log_y=log_y,
                dashed=(f"val_{metric}",),
            )
        )
    when = (
        f"{training.get('epochs_run', len(history.get('loss') or []))} epochs in {training.get('seconds', '?')} s; "
        "metadata.json does not record the machine that trained."
    )
    return Section(
        "training",
        title,
        True,
        f"{_verdict_html(training)}<div class='charts'>{''.join(charts)}</div><p>{escape(when)}</p>",
    )


def _verdict(training: dict) -> Verdict | None:
    recorded = training.get("verdict")
    return Verdict.from_dict(recorded) if isinstance(recorded, dict) else None


def _verdict_html(training: dict) -> str:
    """The training verdict (edgecnn.verdict) as the section's first line; a model that did not learn stands out."""
    verdict = _verdict(training)
    if verdict is None:
        return "<p>metadata.json records no verdict on whether training learned (trained by an older edgecnn).</p>"
    if verdict.learned:
        return f"<p class='learned'>Training {escape(verdict.summary())}.</p>"
    return f"<p class='poor'>This model {escape(verdict.summary())}. {escape(LIKELY_CAUSES[0].upper() + LIKELY_CAUSES[1:])}.</p>"


def _confusion_section(meta: ModelMetadata, matrix: np.ndarray, d: str) -> Section:
    title = "Confusion matrix"
    if matrix.shape != (meta.num_classes, meta.num_classes):
        return _missing("confusion", title, "No confusion matrix in metadata.json.", f"edgecnn train --out {d}")
    top = max(int(matrix.max()), 1)
    head = "".join(f"<th>{escape(c)}</th>" for c in meta.class_names)
    rows = []
    for i, name in enumerate(meta.class_names):
        cells = []
        for j, n in enumerate(matrix[i]):
            share = n / top
            color = f"rgba({'31,119,180' if i == j else '214,39,40'},{0.08 + 0.85 * share:.2f})" if n else "transparent"
            cells.append(f"<td style='background:{color};color:{'#fff' if share > 0.55 else '#000'}'>{int(n)}</td>")
        rows.append(f"<tr><th>{escape(name)}</th>{''.join(cells)}</tr>")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    return Section(
        "confusion",
        title,
        True,
        f"<p>Rows: true class, columns: predicted class; the Keras model on the {int(matrix.sum())} validation "
        f"images after training (accuracy {accuracy:.2%}).</p><table class='confusion'><tr><th>true \\ predicted</th>"
        f"{head}</tr>{''.join(rows)}</table>",
    )


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) per class from a (true, predicted) confusion matrix; 0 where undefined."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(hits / matrix.sum(axis=0))
        recall = np.nan_to_num(hits / matrix.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return precision, recall, f1


def _per_class_section(meta: ModelMetadata, matrix: np.ndarray, d: str) -> Section:
    title = "Per-class precision, recall, F1"
    if matrix.shape != (meta.num_classes, meta.num_classes):
        return _missing("per_class", title, "No confusion matrix in metadata.json.", f"edgecnn train --out {d}")
    precision, recall, f1 = per_class_scores(matrix)
    rows = [
        [name, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", int(n)]
        for name, p, r, f, n in zip(meta.class_names, precision, recall, f1, matrix.sum(axis=1))
    ]
    rows.append(
        ["mean (macro)", f"{precision.mean():.3f}", f"{recall.mean():.3f}", f"{f1.mean():.3f}", int(matrix.sum())]
    )
    return Section("per_class", title, True, table(["class", "precision", "recall", "F1", "validation images"], rows))


def _misclassified_section(mistakes: _Mistakes, class_names, limit: int, d: str) -> Section:
    title = "Misclassified validation images"
    if mistakes.problem:
        return Section(
            "misclassified", title, False, f"<p class='missing'>{escape(mistakes.problem)}</p>", f"edgecnn export {d}"
        )
    if not mistakes.source:
        return _missing(
            "misclassified", title, f"No {VERIFICATION_FILE} and no validation folder at hand.", f"edgecnn export {d}"
        )
    intro = (
        f"<p>{len(mistakes.items)} of {mistakes.total} images misclassified, from {escape(mistakes.source)}"
        f"{f'; the {limit} most confident mistakes are shown' if len(mistakes.items) > limit else ''}.</p>"
    )
    figures = "".join(
        f"<figure class='thumb'><img src='{png_data_uri(image)}' alt='true {escape(class_names[t])}, predicted "
        f"{escape(class_names[p])}'><figcaption>true <b>{escape(class_names[t])}</b><br>predicted "
        f"<b>{escape(class_names[p])}</b><br>{conf:.1%} (true {p_true:.1%})</figcaption></figure>"
        for image, t, p, conf, p_true in mistakes.items[:limit]
    )
    return Section("misclassified", title, True, intro + f"<div class='thumbs'>{figures}</div>")


def _export_section(report: dict | None, d: str) -> Section:
    title = "Export variants"
    if not report or not report.get("variants"):
        return _missing("export", title, f"No {EXPORT_REPORT_FILE}.", f"edgecnn export {d} --quantize int8")
    n = report.get("latency_batch", "N")
    rows = [
        [
            v.get("variant"),
            Path(str(v.get("path", ""))).name,
            mb(v.get("size_bytes")),
            pct(v.get("accuracy")),
            pct(v.get("keras_agreement")),
            num(v.get("max_prob_diff"), ".1e"),
            num(v.get("latency_ms_b1"), ".3f"),
            num(v.get("latency_ms_bn"), ".3f"),
            "yes" if v.get("recommended") else "",
            v.get("note", ""),
        ]
        for v in report["variants"]
    ]
    html = table(
        [
            "variant",
            "file",
            "MB",
            "accuracy",
            "agreement with Keras",
            "max |Δp|",
            "ms b=1",
            f"ms/image b={n}",
            "recommended",
            "note",
        ],
        rows,
    )
    html += (
        f"<p>Keras accuracy {pct(report.get('keras_accuracy'))} on {escape(str(report.get('images', '?')))} validation "
        f"images. Latency measured on {escape(str(report.get('provider', '?')))}, "
    )
    html += (
        ("on this machine:</p>" + machine_table(report["machine"]))
        if report.get("machine")
        else "on the machine that ran the export (its details are not in export_report.json; a profile records them).</p>"
    )
    if report.get("nodes_in_float"):
        html += f"<p>INT8 kept in float: {escape(', '.join(map(str, report['nodes_in_float'])))}.</p>"
    if report.get("int8_attempts"):
        html += "<h3>INT8 attempts</h3>" + generic_table(report["int8_attempts"])
    kept = set(map(str, report.get("nodes_in_float") or []))
    if report.get("int8_sensitivity"):
        html += (
            "<h3>Most sensitive INT8 layers</h3><p>Each layer quantized alone, measured on calibration images at "
            "the model's output: lowest SQNR (most harmful) first.</p>"
        )
        html += table(
            ["layer", "op", "output SQNR (dB)", "top-1 agreement", "kept in float"],
            [
                [
                    s.get("node"),
                    s.get("op_type"),
                    num(s.get("sqnr_db"), ".1f"),
                    pct(s.get("agreement")),
                    "yes" if str(s.get("node")) in kept else "",
                ]
                for s in report["int8_sensitivity"]
            ],
        )
    recalls = [v for v in report["variants"] if v.get("class_recall")]
    names = report.get("class_names") or []
    if recalls and names:
        html += "<h3>Recall per class</h3>" + table(
            ["class", *[str(v.get("variant")) for v in recalls]],
            [[name, *[pct(v["class_recall"][i]) for v in recalls]] for i, name in enumerate(names)],
        )
    return Section("export", title, True, html)


def _profile_section(report: dict | None, path: Path, d: str) -> Section:
    title = "Profile: latency, throughput, operators"
    models = (report or {}).get("models") or []
    if not models:
        return _missing(
            "profile",
            title,
            f"No profile report ({path.name}).",
            f"edgecnn profile {d}/model.onnx {d}/model.int8.onnx --op-profile --json {d}/{PROFILE_FILE}",
        )
    rows = []
    for m in models:
        for mode, suffix in (("model_only", ""), ("end_to_end", " (end to end)")):
            stats = m.get(mode) or []
            speedup = m.get("speedup") or {}
            rows += [
                [
                    m["label"] + suffix,
                    m.get("provider", ""),
                    s["batch_size"],
                    f"{s['p50_ms']:.3f}",
                    f"{s['p90_ms']:.3f}",
                    f"{s['p99_ms']:.3f}",
                    f"{s['images_per_second']:,.0f}",
                    num(s.get("peak_rss_mb"), ".0f"),
                    num(speedup.get(str(s["batch_size"]), speedup.get(s["batch_size"])) if not suffix else None, ".2f"),
                ]
                for s in stats
            ]
    html = "<div class='charts'>" + "".join(profile_charts(models)) + "</div>"
    html += table(["model", "provider", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "peak MB", "speedup"], rows)
    for m in models:
        if m.get("op_profile"):
            html += (
                f"<h3>Top operators: {escape(m['label'])} (batch {escape(str(m.get('op_profile_batch_size')))})</h3>"
                + table(
                    ["operator", "nodes", "ms per run", "%", "providers"],
                    [
                        [
                            o["op_type"],
                            o["nodes"],
                            f"{o['ms']:.3f}",
                            f"{o['percent']:.1f}",
                            ", ".join(o.get("providers", [])),
                        ]
                        for o in m["op_profile"]
                    ],
                )
            )
        if m.get("slowest_nodes"):
            batch = escape(str(m.get("op_profile_batch_size")))
            html += f"<h3>Slowest nodes: {escape(m['label'])} (batch {batch})</h3>" + table(
                ["node", "operator", "output shape", "ms per run", "%", "provider"],
                [
                    [
                        n["name"],
                        n["op_type"],
                        "x".join(map(str, n.get("output_shape") or [])) or "-",
                        f"{n['ms']:.3f}",
                        f"{n['percent']:.1f}",
                        n.get("provider", ""),
                    ]
                    for n in m["slowest_nodes"]
                ],
            )
    if not any(m.get("op_profile") for m in models):
        html += "<p class='missing'>No operator breakdown: add <code>--op-profile</code> to the profile command.</p>"
    html += f"<p>Measured on (from {escape(path.name)}):</p>" + machine_table(report.get("machine") or {})
    return Section("profile", title, True, html)


def _tuning_section(deploy: dict | None, d: str) -> Section:
    title = "Tuned configuration"
    if not deploy:
        return _missing("tuning", title, f"No {DEPLOY_FILE}.", f"edgecnn tune {d}")
    html = ""
    if isinstance(deploy.get("chosen"), dict):
        html += "<h3>Chosen</h3>" + key_values(list(deploy["chosen"].items()))
    candidates = [c for c in deploy.get("candidates") or [] if isinstance(c, dict)]
    if candidates:
        html += f"<h3>Candidates ({len(candidates)})</h3>" + generic_table(candidates, deploy.get("chosen"))
    others = {k: v for k, v in deploy.items() if k not in ("chosen", "candidates", "machine")}
    if others:
        html += key_values(list(others.items()))
    html += (
        "<p>Measured on:</p>" + machine_table(deploy.get("machine") or {})
        if deploy.get("machine")
        else "<p>The machine is not recorded in deploy.json.</p>"
    )
    return Section("tuning", title, True, html)


def _page(name: str, meta: ModelMetadata, sections: list[Section]) -> str:
    nav = "".join(f"<a href='#{s.key}'{'' if s.has_data else ' class=empty'}>{escape(s.title)}</a>" for s in sections)
    body = "".join(
        f"<section id='{s.key}' data-has-data='{str(s.has_data).lower()}'><h2>{escape(s.title)}</h2>{s.html}</section>"
        for s in sections
    )
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>edgecnn report: {escape(name)}</title>"
        f"<style>{CSS}</style></head><body><h1>{escape(name)}</h1>"
        f"<p>{escape(meta.architecture)} classifier, {meta.num_classes} classes, input {meta.image_size[0]}x{meta.image_size[1]}x"
        f"{meta.channels}. Written by edgecnn {__version__} on {when}.</p><nav>{nav}</nav>{body}</body></html>\n"
    )
