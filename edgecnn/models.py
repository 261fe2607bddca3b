"""A registry of Keras model builders: adding an architecture means registering one function.

Every model takes raw pixels (float32, 0..255) and does its own preprocessing in its first
layer, so the exported ONNX graph takes raw pixels too. Augmentation is never part of a
model (it lives in the training tf.data pipeline) and so never reaches the export.
Imports Keras lazily: the registry itself can be imported without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgecnn.errors import EdgecnnError, SettingError, check_above, check_one_of, first_line
from edgecnn.metadata import IMAGENET_CAFFE_MEAN_BGR, Preprocessing
from edgecnn.registry import Registry
from edgecnn.tfimport import import_tensorflow


@dataclass(frozen=True)
class ConvBlock:
    filters: int = 32
    kernel_size: int = 3
    strides: int = 1
    padding: str = "same"  # valid | same
    activation: str = "relu"

    def __post_init__(self):
        check_one_of("padding", self.padding, ("valid", "same"))


RANDOM_WEIGHTS = ("none", "random", "", None)  # values of `weights` that mean: start from random weights

# Keras builds MobileNetV2's BatchNormalization with momentum 0.999 and ResNet50's with 0.99: right for
# ImageNet's million images, but from random weights on a small dataset the weights change faster than
# the moving mean and variance (what validation and the exported model use) can follow, and validation
# stays at chance while training accuracy climbs (0.999: for good; 0.9: the first 7 of 10 epochs on 288
# 64x64 photos; 0.5: from the second epoch, for mobilenetv2 and resnet50 alike). From random weights the
# backbones use this instead; pretrained backbones keep Keras' own (they are frozen in inference mode).
FROM_SCRATCH_BN_MOMENTUM = 0.5


@dataclass(frozen=True)
class ArchitectureOptions:
    """The architecture's own settings, declared once: the CLI fills them, `TrainConfig` carries them,
    `ModelSpec` hands them to the builder. Each architecture declares the fields it reads; one moved from
    its default for an architecture that does not read it is refused (`check_options`)."""

    # cnn
    conv_blocks: tuple[ConvBlock, ...] = (ConvBlock(32), ConvBlock(64))
    pool: str = "max"  # max | avg | none
    pool_size: int = 2
    pool_strides: int | None = None  # None: the pool size
    pool_padding: str = "valid"
    head: str = "flatten"  # flatten | gap (global average pooling)
    dense: tuple[int, ...] = (64,)
    dropout: float = 0.0  # also resnet50 and mobilenetv2, before their head
    rescale: float = 1.0 / 255.0
    # resnet50, mobilenetv2
    weights: str = "none"  # none | imagenet | PATH to a weights file
    alpha: float = 1.0  # mobilenetv2 width multiplier (0.35, 0.5, 0.75, 1.0, ...)
    # resnet50, mobilenetv2 from random weights: the backbone's BatchNormalization momentum (None: see
    # FROM_SCRATCH_BN_MOMENTUM); pretrained backbones keep their own
    bn_momentum: float | None = None

    @property
    def pretrained(self) -> bool:
        """Whether `weights` names pretrained weights (imagenet or a file), not a random start."""
        return self.weights not in RANDOM_WEIGHTS

    @property
    def from_scratch_bn_momentum(self) -> float:
        """The BatchNormalization momentum of a backbone trained from random weights."""
        return FROM_SCRATCH_BN_MOMENTUM if self.bn_momentum is None else self.bn_momentum

    def __post_init__(self):
        check_one_of("pool", self.pool, ("max", "avg", "none"))
        check_one_of("pool_padding", self.pool_padding, ("valid", "same"))
        check_one_of("head", self.head, ("flatten", "gap"))
        check_above("alpha", self.alpha, 0, "a width multiplier (e.g. 0.35, 0.5, 1.0)")
        if not 0 <= self.dropout < 1:
            raise SettingError("dropout", self.dropout, "expected a rate from 0 up to (not including) 1")
        if self.bn_momentum is not None and not 0 <= self.bn_momentum < 1:
            raise SettingError("bn_momentum", self.bn_momentum, "expected a momentum from 0 up to (not including) 1")


@dataclass(frozen=True)
class ModelSpec:
    """What to build: the data's shape and the architecture's options."""

    architecture: str
    image_size: tuple[int, int]
    channels: int
    num_classes: int
    options: ArchitectureOptions = ArchitectureOptions()
    seed: int = 1337


@dataclass(frozen=True)
class Architecture:
    """Everything edgecnn knows about one architecture, in one place."""

    name: str
    build: Callable  # build(spec: ModelSpec) -> keras.Model
    preprocessing: Callable[[ModelSpec], Preprocessing]  # what the exported graph does to raw pixels
    sides: tuple[int, int] = (8, 64)  # default input side: the data's median side, clamped to this range
    rgb: bool = False  # takes 3-channel images only
    backbone: str | None = None  # name prefix of the pretrained backbone `unfreeze_top` fine-tunes
    options: tuple[str, ...] = ()  # the `ArchitectureOptions` fields its builder reads (`check_options`)


ARCHITECTURES: Registry[Architecture] = Registry("model")


def register(name: str, preprocessing: Callable[[ModelSpec], Preprocessing], **traits):
    """Decorator: register a builder `fn(spec) -> keras.Model` as architecture `name` (traits: the
    other `Architecture` fields)."""

    def wrap(fn):
        ARCHITECTURES.add(name, Architecture(name, fn, preprocessing, **traits))
        return fn

    return wrap


def architecture(name: str) -> Architecture:
    """The registered architecture `name`, or a one-line SettingError ("model NAME: ...") listing them."""
    return ARCHITECTURES[name]


def check_options(name: str, options: ArchitectureOptions) -> None:
    """A one-line SettingError for a setting moved from its default that architecture `name` does not
    use (a --alpha given to the cnn would otherwise be dropped without a word)."""
    arch, default = architecture(name), ArchitectureOptions()
    for field in dataclasses.fields(ArchitectureOptions):
        value = getattr(options, field.name)
        if field.name in arch.options or value == getattr(default, field.name):
            continue
        users = ", ".join(a.name for a in ARCHITECTURES.values() if field.name in a.options)
        if isinstance(value, tuple):  # as typed: --dense 64,32; --conv-filters 32,64
            value = ",".join(str(getattr(v, "filters", v)) for v in value)
        raise SettingError(field.name, value, f"the {name} architecture does not use it (used by {users})")


def build_model(spec: ModelSpec):
    arch = architecture(spec.architecture)
    import_tensorflow()
    import keras

    keras.utils.set_random_seed(spec.seed)
    return arch.build(spec)


def preprocessing_for(spec: ModelSpec) -> Preprocessing:
    return architecture(spec.architecture).preprocessing(spec)


# ---- cnn ---------------------------------------------------------------------------------
CNN_OPTIONS = (
    "conv_blocks",
    "pool",
    "pool_size",
    "pool_strides",
    "pool_padding",
    "head",
    "dense",
    "dropout",
    "rescale",
)


@register(
    "cnn", lambda spec: Preprocessing(mode="rescale", scale=spec.options.rescale, offset=0.0), options=CNN_OPTIONS
)
def build_cnn(spec: ModelSpec):
    """Conv2D blocks (each followed by pooling), Flatten or global pooling, Dense, softmax."""
    import keras
    from keras import layers

    h, w = spec.image_size
    inputs = keras.Input((h, w, spec.channels), name="image")
    x = layers.Rescaling(spec.options.rescale, name="rescale")(inputs)
    for i, block in enumerate(spec.options.conv_blocks):
        try:
            keras.activations.get(block.activation)
        except ValueError:
            raise EdgecnnError(
                f"--activation {block.activation}: not a Keras activation (for example relu, tanh, swish)"
            ) from None
        if block.padding == "valid" and min(x.shape[1], x.shape[2]) < block.kernel_size:
            raise EdgecnnError(
                f"the image size {h}x{w} is too small for {len(spec.options.conv_blocks)} conv blocks "
                f"(block {i + 1} gets {x.shape[1]}x{x.shape[2]}, smaller than its {block.kernel_size}x{block.kernel_size} "
                "kernel); use a larger --image-size, fewer blocks or --padding same"
            )
        x = layers.Conv2D(
            block.filters,
            block.kernel_size,
            strides=block.strides,
            padding=block.padding,
            activation=block.activation,
            name=f"conv{i + 1}",
        )(x)
        if spec.options.pool != "none" and min(x.shape[1], x.shape[2]) >= spec.options.pool_size:
            pool = {"max": layers.MaxPooling2D, "avg": layers.AveragePooling2D}[spec.options.pool]
            x = pool(
                spec.options.pool_size,
                strides=spec.options.pool_strides,
                padding=spec.options.pool_padding,
                name=f"pool{i + 1}",
            )(x)
    x = (
        layers.Flatten(name="flatten")(x)
        if spec.options.head == "flatten"
        else layers.GlobalAveragePooling2D(name="gap")(x)
    )
    for j, units in enumerate(spec.options.dense):
        x = layers.Dense(units, activation="relu", name=f"dense{j + 1}")(x)
        if spec.options.dropout:
            x = layers.Dropout(spec.options.dropout, name=f"dropout{j + 1}")(x)
    outputs = layers.Dense(spec.num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


# ---- resnet50 ----------------------------------------------------------------------------
def _caffe_preprocessing(spec: ModelSpec) -> Preprocessing:
    return Preprocessing(mode="caffe", scale=1.0, mean=IMAGENET_CAFFE_MEAN_BGR, color_order="BGR")


def caffe_preprocess_layer():
    """ResNet50's own preprocessing (RGB->BGR, minus the ImageNet mean) as built-in layers.

    A fixed 1x1 convolution does the channel swap and the mean subtraction in one step, so
    the saved model needs no custom layer and the ONNX graph no special op.
    """
    import numpy as np
    from keras import layers

    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for i in range(3):
        kernel[0, 0, 2 - i, i] = 1.0  # output channel i (B,G,R) takes input channel 2-i
    bias = -np.asarray(IMAGENET_CAFFE_MEAN_BGR, np.float32)
    layer = layers.Conv2D(3, 1, use_bias=True, trainable=False, name="caffe_preprocess")
    return layer, [kernel, bias]


@register(
    "resnet50",
    _caffe_preprocessing,
    sides=(32, 224),
    rgb=True,
    backbone="resnet50",
    options=("dropout", "weights", "bn_momentum"),
)
def build_resnet50(spec: ModelSpec):
    """Keras ResNet50 (include_top=False) + GlobalAveragePooling2D + Dense softmax head.

    With imagenet or file weights the backbone is frozen (fine-tune later with `unfreeze_top`);
    with random weights (`none`) the whole network trains from scratch.
    """
    import keras

    if spec.channels != 3:
        raise EdgecnnError("resnet50 takes RGB images: use --channels 3")
    h, w = spec.image_size
    if min(h, w) < 32:
        raise EdgecnnError(f"--image-size {h}x{w}: resnet50 needs at least 32x32")
    backbone = _resnet50_backbone((h, w, 3), spec.options.weights)
    pretrained = spec.options.pretrained
    if not pretrained:
        set_batchnorm_momentum(backbone, spec.options.from_scratch_bn_momentum)
    # Pretrained: frozen, and BatchNorm stays in inference mode, also when fine-tuning.
    # Random weights: a frozen random backbone learns nothing, so the whole network trains.
    backbone.trainable = not pretrained
    inputs = keras.Input((h, w, 3), name="image")
    pre, pre_weights = caffe_preprocess_layer()
    x = pre(inputs)
    pre.set_weights(pre_weights)
    x = backbone(x, training=False) if pretrained else backbone(x)
    return keras.Model(inputs, _backbone_head(x, spec), name="resnet50_classifier")


def set_batchnorm_momentum(backbone, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer in `backbone` (a from-scratch backbone; a
    pretrained one keeps Keras' own); returns how many layers it set. Saved with the model's config."""
    from keras import layers

    norms = [layer for layer in backbone.layers if isinstance(layer, layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = momentum
    return len(norms)


def _backbone_head(features, spec: ModelSpec):
    """The head on a Keras applications backbone: global average pooling, dropout, softmax."""
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="gap")(features)
    if spec.options.dropout:
        x = layers.Dropout(spec.options.dropout, name="dropout")(x)
    return layers.Dense(spec.num_classes, activation="softmax", name="probabilities")(x)


def _resnet50_backbone(input_shape, weights: str):
    import keras

    if weights in RANDOM_WEIGHTS:
        return keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    if weights == "imagenet":
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=input_shape)
        except Exception as exc:  # urllib/ssl/http errors when offline or blocked
            raise EdgecnnError(
                f"could not download the ImageNet weights ({type(exc).__name__}: {first_line(exc)}); "
                "offline? pass --weights PATH to a local resnet50 notop .h5 file, or --weights none"
            ) from None
        finally:
            socket.setdefaulttimeout(old)
    path = Path(weights)
    if not path.is_file():
        raise EdgecnnError(f"--weights {weights}: no such file; use imagenet, none, or a path to a weights file")
    try:
        return keras.applications.ResNet50(include_top=False, weights=str(path), input_shape=input_shape)
    except Exception as exc:
        raise EdgecnnError(
            f"--weights {weights}: cannot load ({first_line(exc)}); expected ResNet50 notop weights"
        ) from None


# ---- mobilenetv2 ------------------------------------------------------------------------
def _mobilenet_preprocessing(spec: ModelSpec) -> Preprocessing:
    return Preprocessing(mode="rescale", scale=1 / 127.5, offset=-1.0)  # keras.applications' "tf" mode: [-1, 1]


@register(
    "mobilenetv2",
    _mobilenet_preprocessing,
    sides=(32, 224),
    rgb=True,
    backbone="mobilenetv2",
    options=("dropout", "weights", "alpha", "bn_momentum"),
)
def build_mobilenetv2(spec: ModelSpec):
    """Keras MobileNetV2 (width --alpha, include_top=False) + GlobalAveragePooling2D + Dense softmax:
    a common edge choice, a tenth of ResNet50's compute. Weights as for resnet50 (none, imagenet,
    or a PATH); with pretrained weights the backbone is frozen and can be fine-tuned."""
    import keras
    from keras import layers

    if spec.channels != 3:
        raise EdgecnnError("mobilenetv2 takes RGB images: use --channels 3")
    h, w = spec.image_size
    if min(h, w) < 32:
        raise EdgecnnError(f"--image-size {h}x{w}: mobilenetv2 needs at least 32x32")
    pretrained = spec.options.pretrained
    weights = None if not pretrained else spec.options.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise EdgecnnError(f"--weights {weights}: no such file; use imagenet, none, or a path to a weights file")
    backbone = keras.applications.MobileNetV2(
        input_shape=(h, w, 3), alpha=spec.options.alpha, include_top=False, weights=weights, name="mobilenetv2_backbone"
    )
    backbone.trainable = not pretrained
    if not pretrained:
        set_batchnorm_momentum(backbone, spec.options.from_scratch_bn_momentum)
    inputs = keras.Input((h, w, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="mobilenet_preprocess")(inputs)
    x = backbone(x, training=False) if pretrained else backbone(x)
    return keras.Model(inputs, _backbone_head(x, spec), name="mobilenetv2_classifier")


def backbone_of(model):
    """The pretrained backbone inside a classifier of an architecture that has one."""
    arch = architecture(model.name.removesuffix("_classifier"))
    for layer in model.layers:
        if arch.backbone and layer.name.startswith(arch.backbone):
            return layer
    raise EdgecnnError(f"this model ({arch.name}) has no pretrained backbone to fine-tune")


def unfreeze_top(model, n_layers: int) -> list[str]:
    """Make the top `n_layers` layers of the backbone trainable, BatchNorm layers excepted.

    BatchNormalization layers stay frozen (and in inference mode: the backbone is called
    with training=False), the usual recipe for fine-tuning on small data. Returns the names
    of the layers that became trainable.
    """
    from keras import layers

    backbone = backbone_of(model)
    backbone.trainable = True
    chosen = backbone.layers[-n_layers:] if n_layers > 0 else []
    unfrozen = []
    for layer in backbone.layers:
        layer.trainable = False
    for layer in chosen:
        if isinstance(layer, layers.BatchNormalization):
            continue
        layer.trainable = True
        if layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def parse_conv_blocks(
    filters: str, kernel_size: int, strides: int, padding: str, activation: str
) -> tuple[ConvBlock, ...]:
    """`--conv-filters 32,64` plus shared settings -> ConvBlocks. 'KxF' items set a per-block kernel."""
    blocks = []
    for item in [p.strip() for p in filters.split(",") if p.strip()]:
        kernel_text, sep, filters_text = item.rpartition("x")
        try:  # both numbers inside the try: "ax32" is as wrong as "32a"; "0x32" and "32,0" too
            k = int(kernel_text) if sep else kernel_size
            if k < 1 or int(filters_text) < 1:
                raise ValueError(item)
            blocks.append(ConvBlock(int(filters_text), k, strides, padding, activation))
        except ValueError:
            raise EdgecnnError(
                f"--conv-filters {filters}: expected numbers like 32,64 (or 5x32 for a 5x5 kernel)"
            ) from None
    return tuple(blocks)


def parse_dense(sizes: str) -> tuple[int, ...]:
    """`--dense 64,32` -> (64, 32); '' -> no hidden Dense layer."""
    try:
        units = tuple(int(p) for p in sizes.split(",") if p.strip())
    except ValueError:
        units = (0,)
    if any(u < 1 for u in units):
        raise EdgecnnError(f"--dense {sizes}: expected positive layer sizes like 64,32 ('' for none)")
    return units
