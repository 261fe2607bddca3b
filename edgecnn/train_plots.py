"""Training's PNGs on the workstation: training curves, confusion matrices.

matplotlib is imported lazily with the Agg backend (no display needed); it comes with the
`train` extra, and without it `_pyplot()` says to install that. The device path needs none of
this: `edgecnn report` and `profile --plot` draw SVG in plain Python (`edgecnn.charts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgecnn.errors import require
from edgecnn.files import atomic_path


def _pyplot():
    matplotlib = require("matplotlib", "train")  # or a one-line MissingDependency naming the extra
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: dict, path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], style, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        values = [v for key in (metric, f"val_{metric}") for v in history.get(key, []) if v > 0]
        if metric == "loss" and values and max(values) / min(values) > 50:
            ax.set_yscale("log")  # an early spike would flatten every later epoch
            metric = "loss (log scale)"
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = "validation confusion matrix"
) -> Path:
    plt = _pyplot()
    n = len(class_names)
    size = min(12, 2 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        top = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    color="white" if matrix[i, j] > top / 2 else "black",
                    fontsize=8,
                )
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path
