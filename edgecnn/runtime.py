"""The onnxruntime runner: one session, CUDA or CPU, many callers.

Device path: imports onnxruntime, numpy and Pillow only, never TensorFlow.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecnn.errors import DeviceError, EdgecnnError, ModelError, MissingDependency
from edgecnn.metadata import ModelMetadata, from_custom_map

DEVICES_HELP = "auto (CUDA if it works, else CPU, and says which ran), cpu, cuda or cuda:N"
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def installed_onnxruntime_distributions() -> list[str]:
    """The pip distributions that provide the `onnxruntime` module."""
    from importlib import metadata

    found = []
    for dist in _ORT_DISTRIBUTIONS:
        try:
            metadata.version(dist)
            found.append(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def import_onnxruntime():
    """Import onnxruntime, or say which extra to install; warn when two builds are installed."""
    dists = installed_onnxruntime_distributions()
    if len(dists) > 1:
        warnings.warn(
            f"both {' and '.join(dists)} are installed; they provide the same module and only one works. "
            "Uninstall both, then install one: pip install \"edgecnn[cpu]\" or \"edgecnn[gpu]\"",
            RuntimeWarning,
            stacklevel=2,
        )
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency(
            'onnxruntime is not installed: pip install "edgecnn[cpu]" (CPU), or "edgecnn[gpu]" (NVIDIA GPUs)'
        ) from None
    return onnxruntime


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads not counted)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    try:
        cores = set()
        physical = core = None
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    cores.add((physical, core))
                    physical = core = None
        if core is not None:
            cores.add((physical, core))
        if cores:
            threads_per_core = max(1, (os.cpu_count() or 1) // len(cores))
            return max(1, min(len(cores), available // threads_per_core or 1))
    except OSError:
        pass
    return max(1, available)


@dataclass(frozen=True)
class RunnerConfig:
    """How to run a model. Every field has a default fit for a small CPU or a GPU."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    intra_op_threads: int | None = None  # None: physical cores
    inter_op_threads: int = 1
    graph_optimization: str = "all"  # disable | basic | extended | all
    io_binding: bool | None = None  # None: on for CUDA, off for CPU
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # EXHAUSTIVE | HEURISTIC | DEFAULT
    enable_profiling: bool = False
    profile_prefix: str | None = None
    quiet: bool = True


def _provider_list(device: str, cfg: RunnerConfig, ort) -> tuple[list, bool]:
    device = device.lower().strip()
    available = ort.get_available_providers()
    cpu = ("CPUExecutionProvider", {})
    if device == "cpu":
        return [cpu], False
    if device == "auto":
        if "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": cfg.cudnn_conv_algo_search}), cpu], False
        return [cpu], False
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise DeviceError(f"--device {device}: expected {DEVICES_HELP}")
        if "CUDAExecutionProvider" not in available:
            raise DeviceError(
                f"--device {device}: this onnxruntime has no CUDA execution provider (it has "
                f"{', '.join(available)}); install the GPU build: pip uninstall onnxruntime && pip install \"edgecnn[gpu]\""
            )
        options = {"device_id": int(index), "cudnn_conv_algo_search": cfg.cudnn_conv_algo_search}
        return [("CUDAExecutionProvider", options), cpu], True
    raise DeviceError(f"--device {device}: unknown device; expected {DEVICES_HELP}")


_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class Runner:
    """One onnxruntime session for one model; `run` is safe to call from many threads.

    metadata: give it for a foreign model without edgecnn metadata; otherwise it is read
    from the file. `provider` is the provider that really runs the model (checked after
    session creation, never assumed).
    """

    def __init__(self, model_path: str | os.PathLike, config: RunnerConfig = RunnerConfig(),
                 metadata: ModelMetadata | None = None):
        ort = import_onnxruntime()
        self.path = Path(model_path)
        self.config = config
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        providers, cuda_required = _provider_list(config.device, config, ort)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = config.intra_op_threads or physical_cores()
        opts.inter_op_num_threads = config.inter_op_threads
        if config.graph_optimization not in _OPT_LEVELS:
            raise EdgecnnError(f"graph optimization {config.graph_optimization!r}: expected one of {', '.join(_OPT_LEVELS)}")
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[config.graph_optimization])
        if config.quiet:
            opts.log_severity_level = 3
        if config.enable_profiling:
            opts.enable_profiling = True
            if config.profile_prefix:
                opts.profile_file_prefix = config.profile_prefix
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            text = str(exc).strip().splitlines()
            first = text[0] if text else type(exc).__name__
            if cuda_required and "CUDA" in str(exc):
                raise DeviceError(f"--device {config.device}: CUDA provider could not be created ({first}); check the CUDA 12/13 and cuDNN 9 libraries") from None
            raise ModelError(f"{self.path}: onnxruntime cannot load this model ({first})") from None
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        if cuda_required and self.provider != "CUDAExecutionProvider":
            raise DeviceError(
                f"--device {config.device}: CUDA was requested but onnxruntime assigned {self.provider} "
                "(CUDA or cuDNN libraries missing or no GPU visible); refusing to run on the CPU silently"
            )
        self.on_cuda = self.provider == "CUDAExecutionProvider"
        self.device_id = int(config.device.partition(":")[2] or 0) if config.device.startswith("cuda") else 0
        self.io_binding = self.on_cuda if config.io_binding is None else config.io_binding
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_type = inp.type
        self.onnx_input_shape = tuple(inp.shape)
        found = from_custom_map(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        if metadata is None and found is None:
            raise ModelError(
                f"{self.path} has no edgecnn metadata; state it: --image-size HxW --channels C "
                "[--classes a,b,...] [--layout nhwc|nchw] [--input-dtype float32|uint8]"
            )
        self.metadata = (metadata or found).replace(input_name=self.input_name, output_name=self.output_name)
        self.foreign = found is None
        self._check_input_matches()
        self._lock = threading.Lock()

    # -- inputs ----------------------------------------------------------------------
    @property
    def numpy_input_dtype(self) -> np.dtype:
        return np.dtype({"tensor(uint8)": np.uint8, "tensor(float)": np.float32,
                         "tensor(float16)": np.float16}.get(self.input_type, np.float32))

    def _check_input_matches(self) -> None:
        meta = self.metadata
        shape = self.onnx_input_shape
        if len(shape) != 4:
            raise ModelError(f"{self.path}: input {self.input_name!r} has shape {list(shape)}; edgecnn runs image models with 4-D input")
        expected = meta.input_shape(None)[1:]
        actual = tuple(s if isinstance(s, int) else None for s in shape[1:])
        for e, a in zip(expected, actual):
            if a is not None and a != e:
                raise ModelError(
                    f"{self.path}: input shape {list(shape)} does not match the stated {meta.layout} "
                    f"{meta.image_size[0]}x{meta.image_size[1]}x{meta.channels}"
                )

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, C) uint8 images from `edgecnn.images.load_image` -> this model's input batch."""
        from edgecnn.images import to_batch

        batch = to_batch(images, self.metadata.layout, "uint8")
        if self.numpy_input_dtype != np.uint8:
            batch = batch.astype(self.numpy_input_dtype)
            if not self.metadata.preprocessing.in_graph:
                batch = self.metadata.preprocessing.apply(batch.transpose(0, 2, 3, 1) if self.metadata.layout == "nchw" else batch)
                if self.metadata.layout == "nchw":
                    batch = batch.transpose(0, 3, 1, 2)
                batch = np.ascontiguousarray(batch, dtype=self.numpy_input_dtype)
        return batch

    def load(self, source) -> np.ndarray:
        """Decode one image (path or bytes) at this model's size and channels."""
        from edgecnn.images import load_image

        return load_image(source, self.metadata.image_size, self.metadata.channels)

    # -- inference -------------------------------------------------------------------
    def check_batch(self, batch: np.ndarray) -> None:
        expected = self.metadata.input_shape(None)[1:]
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(expected):
            raise EdgecnnError(
                f"input shape {list(batch.shape)} does not match the model's [N, {', '.join(map(str, expected))}]"
            )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (already in the model's layout and dtype); returns (N, classes) float32."""
        self.check_batch(batch)
        if batch.dtype != self.numpy_input_dtype:
            batch = batch.astype(self.numpy_input_dtype)
        if self.io_binding:
            return self._run_bound(batch)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        ort = import_onnxruntime()
        device = "cuda" if self.on_cuda else "cpu"
        binding = self.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), device, self.device_id)
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded (H, W, C) uint8 images -> probabilities (N, classes)."""
        return self.run(self.prepare(images))

    def end_profiling(self) -> str | None:
        """Stop onnxruntime's profiler and return the trace file's path."""
        if not self.config.enable_profiling:
            return None
        return self.session.end_profiling()

    def describe(self) -> dict:
        return {
            "model": str(self.path),
            "provider": self.provider,
            "providers": self.providers,
            "input": {"name": self.input_name, "shape": list(self.metadata.input_shape(-1)), "dtype": str(self.numpy_input_dtype)},
            "output": {"name": self.output_name, "classes": self.metadata.num_classes},
            "variant": self.metadata.variant,
            "intra_op_threads": self.config.intra_op_threads or physical_cores(),
            "io_binding": self.io_binding,
        }


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, largest first. (N, C) -> (N, k) x2."""
    k = max(1, min(k, probabilities.shape[-1]))
    idx = np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(probabilities, idx, axis=-1)
