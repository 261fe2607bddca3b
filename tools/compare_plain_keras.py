"""Does `edgecnn train` reach what a plain Keras script of the same network reaches?

For each seed, trains the same CNN (Rescaling, Conv2D 32 + MaxPool, Conv2D 64 + MaxPool,
Flatten, Dense 64, Dense softmax; Adam 1e-3; early stopping on val_loss, best weights) twice
on the same folder at the same input size:
  plain Keras   keras.utils.image_dataset_from_directory(validation_split, subset, seed)
  edgecnn       edgecnn.train.train(TrainConfig(...)) (stratified split, Pillow decoding)
and prints both validation accuracies and their medians. The two splits differ (Keras' is
not stratified), so compare medians over seeds, not single runs.

    python -m tools.compare_plain_keras data/photos --image-size 64 --epochs 15 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def plain_keras(data: Path, size: int, epochs: int, seed: int, batch: int) -> float:
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    common = dict(
        validation_split=0.2, seed=seed, image_size=(size, size), batch_size=batch, label_mode="int", verbose=False
    )
    train = keras.utils.image_dataset_from_directory(data, subset="training", **common)
    val = keras.utils.image_dataset_from_directory(data, subset="validation", **common)
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(len(train.class_names), activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
    model.fit(train, validation_data=val, epochs=epochs, callbacks=[stop], verbose=0)
    return float(model.evaluate(val, verbose=0)[1])


def edgecnn_train(data: Path, size: int, epochs: int, seed: int, batch: int) -> float:
    from edgecnn.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            data_dir=str(data),
            out=str(Path(tmp) / "m"),
            image_size=(size, size),
            channels=3,
            epochs=epochs,
            batch_size=batch,
            seed=seed,
            verbose=0,
        )
        return train(cfg, log=lambda *_: None).val_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="folder of class subfolders")
    parser.add_argument("--image-size", type=int, default=64, help="input side in pixels (default 64)")
    parser.add_argument("--epochs", type=int, default=15, help="maximum epochs (default 15)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        k = plain_keras(args.data, args.image_size, args.epochs, seed, args.batch_size)
        e = edgecnn_train(args.data, args.image_size, args.epochs, seed, args.batch_size)
        rows.append({"seed": seed, "plain_keras": k, "edgecnn": e})
        print(f"seed {seed}: plain Keras {k:.2%}   edgecnn {e:.2%}", flush=True)
    out = {
        "data": str(args.data),
        "image_size": args.image_size,
        "epochs": args.epochs,
        "runs": rows,
        "median_plain_keras": statistics.median(r["plain_keras"] for r in rows),
        "median_edgecnn": statistics.median(r["edgecnn"] for r in rows),
    }
    print(f"median: plain Keras {out['median_plain_keras']:.2%}   edgecnn {out['median_edgecnn']:.2%}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
