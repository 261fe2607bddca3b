"""`edgecnn train`: a folder of class subfolders -> a trained Keras model and its report.

Writes into ``models/NAME/`` (all at once: an interrupted run leaves the previous model):
``model.keras``, ``classes.txt``, ``metadata.json`` (the contract for later stages plus the
training record), ``training_curves.png`` and ``confusion_matrix.png``. A model that did not learn
(validation accuracy near chance or not above the majority class: `edgecnn.verdict`) is not
written unless `allow_poor`: the result says so and ``models/NAME/`` stays as it was.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn import __version__
from edgecnn.errors import DataError, EdgecnnError, SettingError, check_above, check_at_least, check_one_of, first_line
from edgecnn.confusion import confusion_matrix
from edgecnn.files import atomic_path, check_writable, write_json
from edgecnn.metadata import METADATA_FILE, SCHEMA_VERSION, ModelMetadata
from edgecnn.models import ArchitectureOptions, ModelSpec
from edgecnn.tfimport import import_tensorflow
from edgecnn.verdict import Verdict, judge

MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class TrainConfig:
    """Everything `edgecnn train` needs; stored in metadata.json as the training record."""

    data_dir: str | None = None  # None: the built-in digits
    out: str = "models/digits"
    model: str = "cnn"
    image_size: tuple[int, int] | None = None  # None: chosen from the data (see choose_image_size)
    channels: int | None = None  # None: 1 if every image is grayscale, else 3 (resnet50: 3)
    epochs: int = 20
    batch_size: int = 32
    validation_split: float = 0.2
    seed: int = 1337
    augment: tuple[str, ...] = ()
    learning_rate: float = 1e-3
    early_stopping_patience: int = 5  # epochs without val_loss improvement; 0 turns it off
    strict: bool = False
    options: ArchitectureOptions = ArchitectureOptions()  # the architecture's own settings (edgecnn.models)
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float | None = None  # None: learning_rate / 10
    verbose: int | None = (
        None  # 0 silent, 1 Keras progress bar, 2 a line an epoch to `log`; None: 1 on a terminal, else 2
    )
    distribute: str = "none"  # none | mirrored (local GPUs) | multiworker (TF_CONFIG); see edgecnn/distribute.py
    distribute_timeout_s: float = 120.0  # a worker silent this long is an error, not a hang
    allow_poor: bool = False  # write the model even if it did not learn (edgecnn.verdict)

    def __post_init__(self):
        check_at_least("epochs", self.epochs, 1)
        check_at_least("batch_size", self.batch_size, 1)
        check_above("learning_rate", self.learning_rate, 0, "a learning rate")
        check_at_least("early_stopping_patience", self.early_stopping_patience, 0, " (0 turns early stopping off)")
        check_at_least("fine_tune_layers", self.fine_tune_layers, 0)
        check_at_least("fine_tune_epochs", self.fine_tune_epochs, 0)
        if self.fine_tune_learning_rate is not None:
            check_above("fine_tune_learning_rate", self.fine_tune_learning_rate, 0, "a learning rate")
        if self.channels is not None:
            check_one_of("channels", self.channels, (1, 3))
        check_above("distribute_timeout_s", self.distribute_timeout_s, 0, "seconds")
        from edgecnn import models

        models.check_options(self.model, self.options)
        if self.fine_tune_layers > 0 and not (models.architecture(self.model).backbone and self.options.pretrained):
            raise SettingError(
                "fine_tune_layers",
                self.fine_tune_layers,
                "fine-tuning unfreezes a pretrained backbone: give resnet50 or mobilenetv2 --weights imagenet or a "
                "weights file (from random weights the whole network trains anyway)",
            )


@dataclass
class TrainResult:
    out_dir: Path
    metadata: ModelMetadata
    val_accuracy: float
    best_val_accuracy: float
    epochs_run: int
    seconds: float
    record: dict = field(default_factory=dict)
    wrote_model: bool = True  # False on a multi-worker run's other workers (the chief wrote out_dir), or refused
    verdict: Verdict | None = None  # did it learn? (not learned and not verdict.written: nothing was written)

    @property
    def refused(self) -> bool:
        """The model did not learn and was not written (no --allow-poor): out_dir is as it was."""
        return self.verdict is not None and not self.verdict.written

    def summary(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "val_accuracy": self.val_accuracy,
            "best_val_accuracy": self.best_val_accuracy,
            "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 2),
            "classes": list(self.metadata.class_names),
            "image_size": list(self.metadata.image_size),
            "channels": self.metadata.channels,
            "verdict": self.verdict.to_dict() if self.verdict else None,
        }


def choose_image_size(model: str, median: int) -> tuple[int, int]:
    """Default input size: the data's median side, clamped to the architecture's range (cnn: 8 to
    64; resnet50, mobilenetv2: 32 to 224)."""
    from edgecnn.models import architecture

    low, high = architecture(model).sides
    side = min(high, max(low, median))
    return side, side


def train(config: TrainConfig, log=print) -> TrainResult:
    """Train per `config` and write the model folder; returns the result with its paths."""
    import_tensorflow()
    from edgecnn import data, models
    from edgecnn.distribute import distribution

    started = time.time()
    plan = distribution(config.distribute, config.distribute_timeout_s)  # before any other TensorFlow op
    _check_out_dir(Path(config.out))
    if plan.is_chief:
        check_writable(config.out, folder=True)  # before the training, not after
    data_dir = config.data_dir
    if data_dir is None:
        from edgecnn.builtin_datasets import write_digits

        data_dir = str(write_digits())
        log(f"built-in dataset: 1,797 handwritten digits (8x8 scans) in {data_dir}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = data.split_folder(data_dir, config.validation_split, config.seed)
    for w in caught:
        log(f"warning: {w.message}")
    channels = config.channels or (3 if models.architecture(config.model).rgb else data.detect_channels(split.train))
    image_size = config.image_size or choose_image_size(config.model, data.median_side(split.train))
    log(
        f"data: {len(split.train)} training and {len(split.validation)} validation images, "
        f"{len(split.class_names)} classes, input {image_size[0]}x{image_size[1]}x{channels}"
    )

    if config.distribute != "none":
        log(plan.describe(config.batch_size))
    global_config = dataclasses.replace(config, batch_size=plan.global_batch(config.batch_size))
    train_ds, val_ds, val_images, val_labels = _datasets(split, image_size, channels, global_config, log)
    train_ds, val_ds = plan.shard(train_ds), plan.shard(val_ds)
    spec = ModelSpec(
        architecture=config.model,
        image_size=image_size,
        channels=channels,
        num_classes=len(split.class_names),
        options=config.options,
        seed=config.seed,
    )
    verbose = config.verbose if config.verbose is not None else (1 if sys.stdout.isatty() else 2)
    with plan.scope():
        model = models.build_model(spec)
        history = _fit(model, train_ds, val_ds, config.learning_rate, config.epochs, config, verbose, log, plan)
        unfrozen: list[str] = []
        if models.architecture(config.model).backbone and config.fine_tune_layers > 0:
            unfrozen = models.unfreeze_top(model, config.fine_tune_layers)
            lr = config.fine_tune_learning_rate or config.learning_rate / 10
            log(
                f"fine-tuning: {len(unfrozen)} layers with weights unfrozen (top {config.fine_tune_layers}, BatchNorm kept frozen) at learning rate {lr:g}"
            )
            more = _fit(model, train_ds, val_ds, lr, config.fine_tune_epochs, config, verbose, log, plan)
            for key, values in more.items():
                history.setdefault(key, []).extend(values)

    if plan.custom_loop:
        probs = plan.predict(model, val_ds if val_images is None else val_images)
    else:
        probs = (
            model.predict(val_ds, verbose=0)
            if val_images is None
            else model.predict(val_images.astype(np.float32), batch_size=256, verbose=0)
        )
    if val_labels is None:
        val_labels = np.concatenate([y.numpy() for _, y in val_ds])
    predicted = probs.argmax(axis=1)
    val_accuracy = float((predicted == val_labels).mean())
    confusion = confusion_matrix(val_labels, predicted, len(split.class_names))
    best = float(max(history.get("val_accuracy", [val_accuracy])))
    verdict = judge(val_labels, predicted, len(split.class_names), best)
    verdict = dataclasses.replace(verdict, written=verdict.learned or config.allow_poor)

    meta = ModelMetadata(
        class_names=split.class_names,
        image_size=tuple(image_size),
        channels=channels,
        preprocessing=models.preprocessing_for(spec),
        architecture=config.model,
    )
    record = {
        "schema_version": SCHEMA_VERSION,
        "edgecnn_version": __version__,
        "model": meta.to_dict(),
        "training": {
            "config": _jsonable_config(config, data_dir, image_size, channels),
            "dataset": split.summary(),
            "epochs_run": len(history.get("loss", [])),
            "history": {k: [float(v) for v in vals] for k, vals in history.items()},
            "final_val_accuracy": val_accuracy,
            "best_val_accuracy": best,
            "verdict": verdict.to_dict(),
            "confusion_matrix": confusion.tolist(),
            "unfrozen_layers": unfrozen,
            "distribute": {
                "strategy": plan.name,
                "replicas": plan.replicas,
                "workers": plan.workers,
                "global_batch_size": plan.global_batch(config.batch_size),
            },
            "parameters": int(model.count_params()),
            "seconds": round(time.time() - started, 2),
        },
    }
    out = Path(config.out)
    if verdict.written:
        with plan.output_dir(out) as written, atomic_path(written) as tmp:  # only the chief writes `out`
            tmp.mkdir(parents=True)
            model.save(tmp / MODEL_FILE)
            (tmp / "classes.txt").write_text("\n".join(split.class_names) + "\n")
            write_json(tmp / METADATA_FILE, record)
            from edgecnn.train_plots import plot_confusion_matrix, plot_training_curves

            plot_training_curves(history, tmp / "training_curves.png")
            plot_confusion_matrix(confusion, split.class_names, tmp / "confusion_matrix.png")
    return TrainResult(
        out,
        meta,
        val_accuracy,
        best,
        record["training"]["epochs_run"],
        time.time() - started,
        record,
        wrote_model=plan.is_chief and verdict.written,
        verdict=verdict,
    )


def _check_out_dir(out: Path) -> None:
    """`out` is replaced as a whole at the end: refuse anything but a new, empty or model folder."""
    if out.exists() and not out.is_dir():
        raise EdgecnnError(f"--out {out} is a file; choose a folder such as models/NAME")
    if out.is_dir() and any(out.iterdir()) and not (out / METADATA_FILE).is_file():
        raise EdgecnnError(
            f"--out {out} is a folder that is not an edgecnn model and would be replaced; "
            "choose a new folder such as models/NAME"
        )


def whole_batches_only(config: TrainConfig, train_images: int) -> bool:
    """Train on whole batches only: a backbone's BatchNorm from random weights follows the last few
    batches (momentum 0.5, edgecnn.models), and a small last batch would set its statistics from a
    handful of images. Only when there is a whole batch at all."""
    from edgecnn.models import architecture

    from_scratch = architecture(config.model).backbone is not None and not config.options.pretrained
    return from_scratch and config.options.from_scratch_bn_momentum < 0.9 and train_images >= config.batch_size


def _datasets(split, image_size, channels, config: TrainConfig, log):
    from edgecnn import data

    total = len(split.train) + len(split.validation)

    def whole_batches(n_train: int) -> bool:
        whole = whole_batches_only(config, n_train)
        if whole and n_train % config.batch_size:
            log(
                f"training on whole batches of {config.batch_size}: each epoch leaves out {n_train % config.batch_size} "
                "images (others each epoch) so that no small batch sets the from-scratch BatchNorm statistics"
            )
        return whole

    if data.fits_in_memory(total, image_size, channels):
        x_train, y_train, bad_train = data.load_arrays(split.train, image_size, channels, config.strict)
        x_val, y_val, bad_val = data.load_arrays(split.validation, image_size, channels, config.strict)
        bad = bad_train + bad_val
        if bad:
            log(
                f"warning: skipped {len(bad)} images that could not be decoded, for example {bad[0]} (--strict stops instead)"
            )
        if len(x_train) == 0 or len(x_val) == 0:
            raise DataError("no decodable images left in the training or validation subset")
        if len(np.unique(y_train)) < 2:
            raise DataError("the training subset has fewer than two classes with decodable images")
        if bad:  # the counts said above were before the skipped images
            log(f"data after skipping: {len(x_train)} training and {len(x_val)} validation images")
        seen = set(y_val.tolist())
        unseen = [name for c, name in enumerate(split.class_names) if c not in seen]
        if unseen:
            log(
                f"warning: no validation image of {', '.join(unseen[:5])}{' ...' if len(unseen) > 5 else ''}: "
                "the validation accuracy says nothing about that class (add images, or raise --validation-split)"
            )
        train_ds = data.make_dataset(
            x_train, y_train, config.batch_size, True, config.augment, config.seed, whole_batches(len(x_train))
        )
        val_ds = data.make_dataset(x_val, y_val, config.batch_size, False)
        return train_ds, val_ds, x_val, y_val
    log("data is larger than the in-memory cache: decoding on the fly")
    train_ds = data.make_streaming_dataset(
        split.train,
        image_size,
        channels,
        config.batch_size,
        True,
        config.augment,
        config.seed,
        whole_batches(len(split.train)),
    )
    val_ds = data.make_streaming_dataset(split.validation, image_size, channels, config.batch_size, False)
    return train_ds, val_ds, None, None


def _fit(model, train_ds, val_ds, learning_rate, epochs, config: TrainConfig, verbose, log, plan=None) -> dict:
    """Compile and fit; verbose 2 reports each epoch through `log` (Keras would print to stdout)."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    callbacks = []
    if config.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
            )
        )
    if epochs <= 0:
        return {}
    if verbose == 2:
        callbacks.append(_epoch_logger(epochs, log))
    if plan is not None and plan.custom_loop:  # several workers: Keras 3's fit cannot (see edgecnn/distribute.py)
        on_epoch = callbacks[-1].on_epoch_end if verbose == 2 else lambda epoch, logs: None
        return plan.fit_loop(model, train_ds, val_ds, learning_rate, epochs, config.early_stopping_patience, on_epoch)
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        callbacks=callbacks,
        verbose=1 if verbose == 1 else 0,
        shuffle=False,
    )  # tf.data shuffles the training subset
    return {k: list(v) for k, v in hist.history.items()}


def _epoch_logger(epochs: int, log):
    """A Keras callback: one line an epoch with its metrics, its time and the time left."""
    import keras

    started = time.time()

    def on_epoch_end(epoch, logs):
        elapsed = time.time() - started
        left = elapsed / (epoch + 1) * (epochs - epoch - 1)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
        log(f"epoch {epoch + 1}/{epochs}: {metrics} ({elapsed / (epoch + 1):.1f} s/epoch, at most {left:.0f} s left)")

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def _jsonable_config(config: TrainConfig, data_dir, image_size, channels) -> dict:
    d = dataclasses.asdict(config)
    d.update(data_dir=str(data_dir), image_size=list(image_size), channels=channels)
    return d


def load_keras_model(model_dir: str | os.PathLike):
    """Load ``models/NAME/model.keras`` (and its metadata) for export."""
    from edgecnn.metadata import read_model_dir

    meta, record = read_model_dir(model_dir)
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise EdgecnnError(f"{model_dir} has no {MODEL_FILE}; train again with: edgecnn train --out {model_dir}")
    import_tensorflow()
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise EdgecnnError(f"{path}: cannot load the Keras model ({first_line(exc)})") from None
    return model, meta, record
