"""The confusion matrix, one definition for training (validation split) and predict (labelled folders)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predicted, num_classes: int) -> np.ndarray:
    """(classes, classes) counts: row = true class index, column = predicted class index."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predicted, int)), 1)
    return matrix
