"""INT8 quality against TFLite: one Keras model, quantized by edgecnn and by TFLite, per architecture.

For each architecture (cnn, mobilenetv2, resnet50) the tool trains a small model from random
weights with edgecnn's library on a real-photo texture task, then quantizes that one Keras model
two ways with the same calibration images (the class-balanced training images `edgecnn export`
picks, `--calibration-samples` of them):

- edgecnn: `edgecnn export --quantize int8` with its defaults (static QDQ, the budget of
  `--max-accuracy-drop`, which it measures on the validation split);
- TFLite: full-integer INT8 (`TFLiteConverter`, `Optimize.DEFAULT`, a representative dataset,
  `TFLITE_BUILTINS_INT8` only); its input and output stay float32, so the graph quantizes the
  input once and dequantizes the probabilities once, as edgecnn's does. Run with LiteRT's
  interpreter (`ai-edge-litert`) where installed, else `tf.lite.Interpreter`.

Both are then scored on a held-out folder that neither training nor calibration saw: accuracy,
the drop against the Keras FP32 model in percentage points, and top-1 agreement with it. Two more
edgecnn rows explain differences: every layer quantized (the export's first try, before any
layer stays in float), and the same with `reduce_range` (7-bit weights: what `edgecnn export`
does on a CPU without VNNI).

The task: each source photo of tools/make_photo_dataset.py cut into a grid of regions, one
class per region (2 photos x 2x2 = 8 classes without scikit-image); images are random crops
inside a region, so the classes are textures of the same photo.

    python -m tools.compare_int8_tflite --work /tmp/int8-vs-tflite --json docs/benchmarks/int8_vs_tflite.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from PIL import Image

ARCHITECTURES = ("cnn", "mobilenetv2", "resnet50")
EPOCHS = {"cnn": 30, "mobilenetv2": 30, "resnet50": 20}


def make_regions(out: Path, per_class: int, size: int, grid: int, seed: int) -> list[str]:
    """OUT/<photo>_<row><col>/<n>.jpg: random crops (40-100% of the cell's side) inside each grid cell."""
    from edgecnn.builtin_datasets import available_photos, photo_path  # the photographs of make_photo_dataset

    rng = np.random.default_rng(seed)
    names = []
    for name, path in sorted((name, photo_path(name)) for name in available_photos()):
        photo = Image.open(path).convert("RGB")
        w, h = photo.size
        cw, ch = w // grid, h // grid
        for r in range(grid):
            for c in range(grid):
                label = f"{name}_{r}{c}"
                names.append(label)
                folder = out / label
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    side = int(min(cw, ch) * rng.uniform(0.4, 1.0))
                    x = c * cw + int(rng.integers(0, cw - side + 1))
                    y = r * ch + int(rng.integers(0, ch - side + 1))
                    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
                    if rng.random() < 0.5:
                        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                    crop.save(folder / f"{i:04d}.jpg", quality=90)
    return names


def train_model(arch: str, data: Path, out: Path, size: int, epochs: int, log) -> None:
    from edgecnn.models import ArchitectureOptions
    from edgecnn.train import TrainConfig, train

    options = ArchitectureOptions(alpha=0.35) if arch == "mobilenetv2" else ArchitectureOptions()
    config = TrainConfig(
        data_dir=str(data),
        out=str(out),
        model=arch,
        image_size=(size, size),
        channels=3,
        epochs=epochs,
        batch_size=32,
        early_stopping_patience=0,
        verbose=0,
        options=options,
    )
    result = train(config, log=log)
    log(
        f"{arch}: validation accuracy {result.val_accuracy:.2%} after {result.epochs_run} epochs ({result.seconds:.0f} s)"
    )


def calibration_images(model_dir: Path, count: int, meta) -> np.ndarray:
    """The images `edgecnn export` calibrates on: `count` class-balanced training-split images."""
    from edgecnn.data import class_balanced, load_arrays, split_folder

    record = json.loads((model_dir / "metadata.json").read_text())
    cfg = record["training"]["config"]
    split = split_folder(cfg["data_dir"], cfg["validation_split"], cfg["seed"], class_names=meta.class_names)
    images, _, _ = load_arrays(class_balanced(split.train, count, seed=0), meta.image_size, meta.channels)
    return images


def tflite_int8(model, calibration: np.ndarray):
    """TFLite full-integer INT8 of `model` (float32 input/output), calibrated on `calibration`; -> run(x)."""
    import tempfile

    import keras
    import tensorflow as tf

    h, w, c = calibration.shape[1:]
    saved = tempfile.mkdtemp(prefix="edgecnn-tflite-")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([1, h, w, c], tf.float32)],
    )
    archive.write_out(saved, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serve"])

    def representative():
        for image in calibration:
            yield [image[None].astype(np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flat = converter.convert()
    try:
        from ai_edge_litert.interpreter import Interpreter

        engine = "ai_edge_litert"
    except ImportError:
        Interpreter = tf.lite.Interpreter
        engine = f"tf.lite.Interpreter (tensorflow {tf.__version__})"
    interp = Interpreter(model_content=flat, num_threads=2)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32, (inp["dtype"], out["dtype"])

    def run(images: np.ndarray) -> np.ndarray:
        probs = []
        for image in images:
            interp.set_tensor(inp["index"], image[None].astype(np.float32))
            interp.invoke()
            probs.append(interp.get_tensor(out["index"])[0].copy())
        return np.stack(probs)

    return run, engine, len(flat)


def onnx_probs(path: Path, images: np.ndarray, meta) -> np.ndarray:
    from edgecnn.images import to_batch
    from edgecnn.runtime import Runner, RunnerConfig

    runner = Runner(path, RunnerConfig(device="cpu"))
    batch = to_batch(list(images), meta.layout, meta.input_dtype)
    return np.concatenate([runner.run(batch[i : i + 64]) for i in range(0, len(batch), 64)])


def check_ranking(model_dir: Path, scratch: Path, calibration, images, meta, reference, k: int = 3) -> dict:
    """Does the ranking find the harmful layers? Held-out output SQNR (dB, against Keras FP32) with
    every layer quantized, with the `k` most sensitive layers in float, and with the `k` least."""
    from edgecnn.images import to_batch
    from edgecnn.quantize import SENSITIVITY_IMAGES, Int8Config, quantize_int8
    from edgecnn.sensitivity import rank_layers, sqnr_db

    scratch.mkdir(parents=True, exist_ok=True)
    calib = to_batch(list(calibration), meta.layout, meta.input_dtype)
    every = quantize_int8(
        model_dir / "model.onnx",
        scratch / "every.onnx",
        calib,
        Int8Config(reduce_range=False),
        keep_float=scratch / "float.onnx",
    )
    started = time.time()
    nodes = [s.node for s in rank_layers(scratch / "float.onnx", every, calib[:SENSITIVITY_IMAGES])]
    out = {"ranked_layers": len(nodes), "ranking_seconds": round(time.time() - started, 1), "layers_in_float": k}
    for name, kept in (("every_layer", ()), (f"top_{k}_in_float", nodes[:k]), (f"bottom_{k}_in_float", nodes[-k:])):
        path = quantize_int8(
            model_dir / "model.onnx",
            scratch / f"{name}.onnx",
            calib,
            Int8Config(reduce_range=False, nodes_to_exclude=tuple(kept)),
        )
        probs = onnx_probs(path, images, meta)
        out[name] = {
            "nodes": list(kept),
            "sqnr_db": sqnr_db(reference, probs),
            "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
        }
    return out


def quality(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray, fp32_accuracy: float) -> dict:
    accuracy = float((probs.argmax(1) == labels).mean())
    return {
        "accuracy": accuracy,
        "drop_pp": round((fp32_accuracy - accuracy) * 100, 3),
        "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
    }


def compare(arch: str, work: Path, test_dir: Path, args, log) -> dict:
    import keras

    from edgecnn.data import load_arrays, scan_classes
    from edgecnn.export import ExportConfig, export
    from edgecnn.images import to_batch
    from edgecnn.quantize import Int8Config, quantize_int8
    from edgecnn.train import load_keras_model

    model_dir = work / "models" / arch
    if args.retrain or not (model_dir / "model.keras").is_file():
        train_model(arch, work / "train", model_dir, args.size, args.epochs or EPOCHS[arch], log)
    report = export(
        ExportConfig(
            str(model_dir),
            quantize=("int8",),
            calibration_samples=args.calibration_samples,
            max_accuracy_drop=args.max_accuracy_drop,
            verify_samples=0,
            latency_batch=8,
        ),
        log=log,
    )
    keras_model, meta, _ = load_keras_model(model_dir)
    _, test_samples, _ = scan_classes(test_dir, class_names=meta.class_names)
    images, labels, _ = load_arrays(test_samples, meta.image_size, meta.channels)
    reference = keras_model.predict(images.astype(np.float32), batch_size=32, verbose=0)
    fp32_accuracy = float((reference.argmax(1) == labels).mean())
    calibration = calibration_images(model_dir, args.calibration_samples, meta)
    started = time.time()
    run_tflite, engine, tflite_bytes = tflite_int8(keras_model, calibration)
    log(f"{arch}: TFLite INT8 converted in {time.time() - started:.0f} s ({engine})")
    edgecnn_probs = onnx_probs(model_dir / "model.int8.onnx", images, meta)
    ranking_check = check_ranking(model_dir, work / arch, calibration, images, meta, reference)
    variants = {}
    for name, cfg in (
        ("all_layers", Int8Config(reduce_range=False)),  # what export tries first, on a CPU with VNNI
        ("reduce_range", Int8Config(reduce_range=True)),  # what export tries first on a CPU without VNNI
    ):
        path = quantize_int8(
            model_dir / "model.onnx",
            work / f"{arch}.{name}.int8.onnx",
            to_batch(list(calibration), meta.layout, meta.input_dtype),
            cfg,
        )
        variants[name] = quality(onnx_probs(path, images, meta), labels, reference, fp32_accuracy)
    fp32_onnx = onnx_probs(model_dir / "model.onnx", images, meta)
    row = {
        "architecture": arch,
        "image_size": list(meta.image_size),
        "classes": len(meta.class_names),
        "held_out_images": int(len(images)),
        "calibration_images": int(len(calibration)),
        "fp32_accuracy": fp32_accuracy,
        "fp32_onnx_agreement_with_keras": float((fp32_onnx.argmax(1) == reference.argmax(1)).mean()),
        "edgecnn_int8": {
            **quality(edgecnn_probs, labels, reference, fp32_accuracy),
            "nodes_in_float": report.nodes_in_float,
            "recipe": next(v.note for v in report.variants if v.variant == "int8"),
            "sensitive_layers": report.int8_sensitivity[:10],
        },
        "edgecnn_int8_every_layer": variants["all_layers"],
        "edgecnn_int8_reduce_range": variants["reduce_range"],
        "ranking_check": ranking_check,
        "tflite_int8": {**quality(run_tflite(images), labels, reference, fp32_accuracy), "interpreter": engine},
    }
    row["edgecnn_drop_le_tflite"] = row["edgecnn_int8"]["drop_pp"] <= row["tflite_int8"]["drop_pp"]
    keras.backend.clear_session()
    return row


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/edgecnn-int8-vs-tflite"), help="data and models go here"
    )
    parser.add_argument("--arch", default=",".join(ARCHITECTURES), help="comma list of architectures")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels (default 48)")
    parser.add_argument("--grid", type=int, default=2, help="regions per photo side: classes = photos x grid^2")
    parser.add_argument("--per-class", type=int, default=150, help="training images per class (default 150)")
    parser.add_argument("--test-per-class", type=int, default=60, help="held-out images per class (default 60)")
    parser.add_argument(
        "--epochs", type=int, default=0, help="training epochs (default: cnn 30, mobilenetv2 30, resnet50 20)"
    )
    parser.add_argument(
        "--calibration-samples", type=int, default=100, help="calibration images, both engines (default 100)"
    )
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0, help="edgecnn export's budget (default 1.0)")
    parser.add_argument("--retrain", action="store_true", help="train again even if WORK/models/ARCH exists")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    work = args.work
    if not (work / "train").is_dir():
        make_regions(work / "train", args.per_class, args.size, args.grid, seed=0)
        make_regions(work / "test", args.test_per_class, args.size, args.grid, seed=1)
    rows = [compare(arch, work, work / "test", args, log) for arch in args.arch.split(",") if arch]

    import onnxruntime
    import tensorflow as tf

    from edgecnn.machine import machine_info

    out = {
        "command": " ".join(["python", "-m", "tools.compare_int8_tflite", *sys.argv[1:]]),
        "machine": machine_info(),
        "versions": {
            "tensorflow": tf.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
            "ai-edge-litert": _version("ai-edge-litert"),
        },
        "results": rows,
    }
    print(
        f"{'arch':12s} {'held-out':>8s} {'FP32':>7s} {'edgecnn':>8s} {'drop':>6s} {'agree':>7s} {'TFLite':>8s} {'drop':>6s} {'agree':>7s}"
    )
    for r in rows:
        e, t = r["edgecnn_int8"], r["tflite_int8"]
        print(
            f"{r['architecture']:12s} {r['held_out_images']:8d} {r['fp32_accuracy']:7.2%} {e['accuracy']:8.2%} "
            f"{e['drop_pp']:6.2f} {e['agreement']:7.2%} {t['accuracy']:8.2%} {t['drop_pp']:6.2f} {t['agreement']:7.2%}"
        )
    for r in rows:
        e, rr = r["edgecnn_int8_every_layer"], r["edgecnn_int8_reduce_range"]
        print(
            f"{r['architecture']:12s} edgecnn every layer quantized: drop {e['drop_pp']:.2f}, agreement {e['agreement']:.2%}; "
            f"with reduce_range (CPUs without VNNI): drop {rr['drop_pp']:.2f}, agreement {rr['agreement']:.2%}"
        )
    for r in rows:
        c, k = r["ranking_check"], r["ranking_check"]["layers_in_float"]
        print(
            f"{r['architecture']:12s} held-out output SQNR: every layer quantized {c['every_layer']['sqnr_db']:.1f} dB, "
            f"{k} most sensitive in float {c[f'top_{k}_in_float']['sqnr_db']:.1f} dB, "
            f"{k} least sensitive in float {c[f'bottom_{k}_in_float']['sqnr_db']:.1f} dB "
            f"(ranking {c['ranked_layers']} layers took {c['ranking_seconds']:.0f} s)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
