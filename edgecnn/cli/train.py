"""Stage 1 on the workstation: `edgecnn datasets` (a built-in dataset as a folder) and `edgecnn train`.

Thin commands over `edgecnn.builtin_datasets` and `edgecnn.train`; TensorFlow is imported inside train only.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import csv, echo, flag_of, given, print_json, user_errors
from edgecnn.cli.options import argument, option
from edgecnn.errors import EdgecnnError, SettingError
from edgecnn.verdict import EXIT_CODE as VERDICT_EXIT_CODE, LIKELY_CAUSES

CNN = "The cnn architecture"
BACKBONE = "resnet50 and mobilenetv2"


def datasets(
    ctx: typer.Context,
    name: Annotated[
        str,
        argument(
            metavar="NAME",
            help="Built-in dataset: digits (scikit-learn's 1,797 real 8x8 handwritten digit scans) or photos (random "
            "crops of real photographs shipped in scikit-learn and scikit-image, one class each).",
        ),
    ],
    out_dir: Annotated[
        Path,
        argument(metavar="OUT_DIR", help="Folder to write the class-folder image tree into (OUT_DIR/<class>/<n>.png)."),
    ],
    overwrite: Annotated[bool, option("--overwrite", help="Rewrite the tree even if it is already complete.")] = False,
    per_class: Annotated[int, option(help="photos: images per class. Default: 100.")] = 100,
    size: Annotated[int, option(help="photos: side of each JPEG in pixels. Default: 256.")] = 256,
    classes: Annotated[
        str,
        option(
            help="photos: comma list of astronaut, cat, china, coffee, flower, rocket. Default: every one installed."
        ),
    ] = "",
):
    """Write a built-in dataset as a folder of class subfolders (no network needed)."""
    with user_errors(ctx):
        from edgecnn.builtin_datasets import DATASETS

        write = DATASETS[name]  # an unknown name: one line listing the datasets
        if name != "photos":
            for option_name in sorted(given(ctx, "per_class", "size", "classes")):
                raise EdgecnnError(f"{flag_of(option_name)}: a photos option; {name} has its own fixed images")
        extra = {"per_class": per_class, "size": size, "classes": csv(classes) or None} if name == "photos" else {}
        marker = out_dir / ".complete"

        def stamp():  # a rewrite swaps the whole folder in: a new marker file (inode), whatever the clock says
            return (marker.stat().st_ino, marker.stat().st_mtime_ns) if marker.is_file() else None

        before = stamp()
        path = write(out_dir, overwrite=overwrite, **extra)
        if before is not None and stamp() == before:
            echo(f"{name} is already complete in {path}; --overwrite writes it again")
        else:
            echo(f"wrote {name} to {path}")


def train(
    ctx: typer.Context,
    data_dir: Annotated[
        Optional[Path],
        argument(
            metavar="DATA_DIR",
            help="Folder of class subfolders (DATA/<class>/<image>), or with train/ and val/ subfolders. "
            "Default: the built-in digits.",
        ),
    ] = None,
    model: Annotated[
        str,
        option(
            help="Architecture: cnn (small configurable CNN), resnet50 or mobilenetv2 (Keras applications backbone "
            "+ softmax head). Default: cnn."
        ),
    ] = "cnn",
    image_size: Annotated[
        Optional[str],
        option(
            help="Input size N or HxW in pixels. Default: the data's median side, within 8..64 (cnn) or 32..224 "
            "(resnet50, mobilenetv2)."
        ),
    ] = None,
    channels: Annotated[
        Optional[int],
        option(
            help="1 (grayscale) or 3 (RGB). Default: 1 if every image is grayscale, else 3; resnet50 and mobilenetv2 "
            "always 3."
        ),
    ] = None,
    epochs: Annotated[int, option(help="Maximum training epochs (early stopping may end sooner). Default: 20.")] = 20,
    batch_size: Annotated[int, option(help="Images per training step. Default: 32.")] = 32,
    validation_split: Annotated[
        float,
        option(
            help="Fraction of each class held out for validation (ignored for train/ + val/ folders). Default: 0.2."
        ),
    ] = 0.2,
    seed: Annotated[
        int, option(help="Seed for the split, shuffling, augmentation and initialization. Default: 1337.")
    ] = 1337,
    augment: Annotated[
        str,
        option(
            help="Comma list applied to the training subset only: hflip, vflip, rotate (+-18 deg), zoom (+-10%). "
            "Default: none."
        ),
    ] = "",
    learning_rate: Annotated[float, option(help="Adam learning rate. Default: 0.001.")] = 1e-3,
    patience: Annotated[
        int,
        option(
            help="Early stopping: epochs without a better validation loss before stopping (best weights kept); "
            "0 turns it off. Default: 5."
        ),
    ] = 5,
    conv_filters: Annotated[
        str,
        option(
            help="Filters per Conv2D block, comma separated; KxF sets a block's kernel, e.g. 5x32,3x64. Default: 32,64.",
            rich_help_panel=CNN,
        ),
    ] = "32,64",
    kernel_size: Annotated[
        int, option(help="Conv2D kernel size (square) for blocks without KxF. Default: 3.", rich_help_panel=CNN)
    ] = 3,
    strides: Annotated[int, option(help="Conv2D strides. Default: 1.", rich_help_panel=CNN)] = 1,
    padding: Annotated[str, option(help="Conv2D padding, valid or same. Default: same.", rich_help_panel=CNN)] = "same",
    activation: Annotated[
        str, option(help="Conv2D activation (any Keras activation name). Default: relu.", rich_help_panel=CNN)
    ] = "relu",
    pool: Annotated[
        str, option(help="Pooling after each conv block: max, avg or none. Default: max.", rich_help_panel=CNN)
    ] = "max",
    pool_size: Annotated[int, option(help="Pooling window. Default: 2.", rich_help_panel=CNN)] = 2,
    pool_strides: Annotated[
        Optional[int], option(help="Pooling strides. Default: the pool size.", rich_help_panel=CNN)
    ] = None,
    pool_padding: Annotated[
        str, option(help="Pooling padding, valid or same. Default: valid.", rich_help_panel=CNN)
    ] = "valid",
    head: Annotated[
        str,
        option(
            help="flatten (Flatten + Dense) or gap (GlobalAveragePooling2D). Default: flatten.", rich_help_panel=CNN
        ),
    ] = "flatten",
    dense: Annotated[
        str,
        option(
            help="Hidden Dense layer sizes before the softmax, comma separated ('' for none). Default: 64.",
            rich_help_panel=CNN,
        ),
    ] = "64",
    dropout: Annotated[
        float,
        option(help="Dropout rate after each hidden Dense layer (resnet50: before the head). Default: 0."),
    ] = 0.0,
    weights: Annotated[
        str,
        option(
            help="Backbone weights: none (random), imagenet (downloaded once by Keras, needs the network) or a PATH "
            "to a local .h5 file. Default: none.",
            rich_help_panel=BACKBONE,
        ),
    ] = "none",
    fine_tune_layers: Annotated[
        int,
        option(
            help="After training the head, unfreeze the top N backbone layers (BatchNorm stays frozen); "
            "0 = no fine-tuning. Default: 0.",
            rich_help_panel=BACKBONE,
        ),
    ] = 0,
    alpha: Annotated[
        float,
        option(
            help="mobilenetv2 width multiplier: 0.35, 0.5, 0.75, 1.0, 1.3 or 1.4 (Keras' choices). Default: 1.0.",
            rich_help_panel=BACKBONE,
        ),
    ] = 1.0,
    bn_momentum: Annotated[
        Optional[float],
        option(
            help="From random weights (--weights none): momentum of the backbone's BatchNormalization moving "
            "statistics. Default: 0.5 (Keras' own 0.99 / 0.999 suit ImageNet-sized data: from scratch on small data "
            "the moving statistics lag the weights and validation stays at chance). Pretrained backbones keep their own.",
            rich_help_panel=BACKBONE,
        ),
    ] = None,
    fine_tune_epochs: Annotated[
        int, option(help="Epochs of the fine-tuning phase. Default: 5.", rich_help_panel=BACKBONE)
    ] = 5,
    fine_tune_learning_rate: Annotated[
        Optional[float],
        option(help="Learning rate of the fine-tuning phase. Default: --learning-rate / 10.", rich_help_panel=BACKBONE),
    ] = None,
    strict: Annotated[
        bool,
        option(
            "--strict", help="Stop at the first image that cannot be decoded instead of skipping it with a warning."
        ),
    ] = False,
    out: Annotated[Path, option(help="Model folder to write (replaced atomically). Default: models/digits.")] = Path(
        "models/digits"
    ),
    distribute: Annotated[
        str,
        option(
            help="none (one device), mirrored (all local GPUs; one replica on a CPU-only machine) or multiworker "
            "(the hosts in the TF_CONFIG environment variable; only the chief writes --out). --batch-size is per "
            "replica. Default: none."
        ),
    ] = "none",
    distribute_timeout: Annotated[
        float,
        option(
            help="Seconds to wait for the other workers (at start and in each collective step) before failing. "
            "Default: 120."
        ),
    ] = 120.0,
    allow_poor: Annotated[
        bool,
        option(
            "--allow-poor",
            help="Write the model even if it did not learn (validation accuracy within a small margin of chance or "
            "not above the majority class). Without it such a run writes nothing, leaves --out as it was and exits "
            "with code 3.",
        ),
    ] = False,
    as_json: Annotated[bool, option("--json", help="Print the result as JSON (for scripts).")] = False,
):
    """Train a classifier on a folder of class subfolders (or the built-in digits) and write models/NAME/."""
    with user_errors(ctx):
        from edgecnn.models import ArchitectureOptions, parse_conv_blocks, parse_dense
        from edgecnn.runtime import parse_image_size
        from edgecnn.train import TrainConfig, train as run_train

        conv_flags = {
            "conv_filters": conv_filters,
            "kernel_size": kernel_size,
            "strides": strides,
            "padding": padding,
            "activation": activation,
        }
        try:
            config = TrainConfig(
                data_dir=str(data_dir) if data_dir is not None else None,
                out=str(out),
                model=model,
                image_size=None if image_size in (None, "auto") else parse_image_size(image_size),
                channels=channels,
                epochs=epochs,
                batch_size=batch_size,
                validation_split=validation_split,
                seed=seed,
                augment=csv(augment),
                learning_rate=learning_rate,
                early_stopping_patience=patience,
                strict=strict,
                options=ArchitectureOptions(
                    conv_blocks=parse_conv_blocks(conv_filters, kernel_size, strides, padding, activation),
                    pool=pool,
                    pool_size=pool_size,
                    pool_strides=pool_strides,
                    pool_padding=pool_padding,
                    head=head,
                    dense=parse_dense(dense),
                    dropout=dropout,
                    weights=weights,
                    alpha=alpha,
                    bn_momentum=bn_momentum,
                ),
                fine_tune_layers=fine_tune_layers,
                fine_tune_epochs=fine_tune_epochs,
                fine_tune_learning_rate=fine_tune_learning_rate,
                verbose=2 if as_json else None,
                distribute=distribute,
                distribute_timeout_s=distribute_timeout,
                allow_poor=allow_poor,
            )
        except SettingError as exc:
            if exc.setting != "conv_blocks":
                raise
            # The convolution blocks are made of five flags: name the one typed, as typed.
            typed = [name for name in conv_flags if name in given(ctx, *conv_flags)] or ["conv_filters"]
            raise SettingError(typed[0], conv_flags[typed[0]], exc.expected) from None
        log = (lambda msg: echo(msg, err=True)) if as_json else echo
        result = run_train(config, log=log)
        if as_json:
            print_json(result.summary())
        if result.refused:
            echo(_did_not_learn(result), err=True, color="red")
            raise typer.Exit(VERDICT_EXIT_CODE)
        if as_json:
            return
        echo(
            f"validation accuracy {result.val_accuracy:.2%} (best epoch {result.best_val_accuracy:.2%}), "
            f"{result.epochs_run} epochs in {result.seconds:.0f} s",
            color="green",
        )
        if not result.wrote_model:
            echo(f"not the chief: the chief writes {result.out_dir}/ (this worker's copy was removed)")
            return
        echo(
            f"wrote {result.out_dir}/: model.keras, metadata.json, classes.txt, training_curves.png, confusion_matrix.png"
        )
        if result.verdict and not result.verdict.learned:
            echo(f"warning: the model {result.verdict.summary()}; {LIKELY_CAUSES}", color="yellow")
            return
        echo(f"next: edgecnn export {result.out_dir} --quantize int8")


def _did_not_learn(result) -> str:
    """The one line `train` ends with when the model did not learn and --allow-poor was not given."""
    v = result.verdict
    return (
        f"error: the model did not learn: validation accuracy {v.val_accuracy:.1%} (best epoch "
        f"{v.best_val_accuracy:.1%}) is not above {v.threshold:.1%} (chance {v.chance:.1%}, majority class "
        f"{v.majority:.1%}, {v.validation_images} validation images); {LIKELY_CAUSES}; nothing was written "
        f"({result.out_dir} is untouched; --allow-poor writes the model anyway)"
    )
