"""Did training learn anything? The verdict `edgecnn train` gives before it writes a model.

A model whose validation accuracy is within a small margin of chance (1 / classes: 5 points, or
two standard errors of guessing on this many validation images if more), or not above the share
of the largest validation class (what always answering that class scores), has learned nothing
usable (a model that answers every validation image right always passes). `train` refuses to
write it unless told `--allow-poor`, and the verdict goes into metadata.json so that `edgecnn
report` shows it. Needs only NumPy: the device path can read it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

MIN_MARGIN = 0.05  # at least 5 percentage points above chance
STANDARD_ERRORS = 2.0  # ... and 2 standard errors of a guess on this many validation images
EXIT_CODE = 3  # `edgecnn train` when the model did not learn (1: bad input or settings, as everywhere)

LIKELY_CAUSES = (
    "likely causes: BatchNorm statistics that lag when training from scratch (resnet50/mobilenetv2: --bn-momentum, "
    "or --weights imagenet), too few epochs (--epochs, --patience), a learning rate too high or too low "
    "(--learning-rate), or labels that do not match the images (check the class folders)"
)


@dataclass(frozen=True)
class Verdict:
    """Whether the model that would be written learned; stored in metadata.json under training.verdict."""

    learned: bool
    val_accuracy: float  # of the model written (after early stopping restored the best weights)
    best_val_accuracy: float  # the best epoch's
    chance: float  # 1 / classes
    majority: float  # the largest class's share of the validation images
    threshold: float  # the accuracy the model had to beat
    validation_images: int
    written: bool = True  # False: refused; True with learned False: written anyway (--allow-poor)

    def summary(self) -> str:
        """One line: the verdict and its numbers."""
        numbers = (
            f"validation accuracy {self.val_accuracy:.1%} (best epoch {self.best_val_accuracy:.1%}) against "
            f"chance {self.chance:.1%}, the majority class {self.majority:.1%} and the bar {self.threshold:.1%} "
            f"on {self.validation_images} validation images"
        )
        if self.learned:
            return f"learned: {numbers}"
        return f"did not learn: {numbers}" + ("; written anyway (--allow-poor)" if self.written else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict | None":
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


def judge(val_labels, predicted, num_classes: int, best_val_accuracy: float | None = None) -> Verdict:
    """The verdict on a model from its validation answers (`predicted` for `val_labels`)."""
    import numpy as np

    labels = np.asarray(val_labels)
    n = int(labels.size)
    accuracy = float((np.asarray(predicted) == labels).mean()) if n else 0.0
    chance = 1.0 / num_classes
    majority = float(np.bincount(labels, minlength=num_classes).max() / n) if n else 1.0
    noise = STANDARD_ERRORS * math.sqrt(chance * (1 - chance) / max(n, 1))
    # below every answer right: on a handful of validation images the noise alone would ask for more than 100%
    threshold = min(max(chance + max(MIN_MARGIN, noise), majority), (n - 1) / n if n else 0.0)
    return Verdict(
        learned=accuracy > threshold,
        val_accuracy=accuracy,
        best_val_accuracy=accuracy if best_val_accuracy is None else float(best_val_accuracy),
        chance=chance,
        majority=majority,
        threshold=threshold,
        validation_images=n,
    )
