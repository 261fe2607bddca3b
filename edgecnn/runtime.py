"""The onnxruntime runner: one session, CUDA or CPU, many callers.

Device path: imports onnxruntime, numpy and Pillow only, never TensorFlow.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecnn.errors import DeviceError, EdgecnnError, ModelError, SettingError, check_one_of, first_line
from edgecnn.images import DEFAULT_MAX_PIXELS
from edgecnn.metadata import VARIANT_FILES, ModelMetadata, from_custom_map
from edgecnn.providers import PROVIDERS, Target, by_ort_name, parse_device
from edgecnn.session_cache import open_cached
from edgecnn.foreign import FOREIGN_HINT, ForeignModelSettings, parse_class_names, parse_image_size  # noqa: F401 (re-exported)
from edgecnn.machine import available_cpus, physical_cores  # noqa: F401 (physical_cores re-exported)
from edgecnn.ort import import_onnxruntime, installed_onnxruntime_distributions  # noqa: F401 (re-exported)


_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
CUDNN_ALGO_SEARCHES = PROVIDERS["cuda"].CUDNN_ALGO_SEARCHES
MAX_THREADS = 1024  # intra-op threads: more is a typo (or a corrupt deploy.json), not a machine


@dataclass(frozen=True)
class RunnerConfig:
    """How to run a model. Every field has a default fit for a small CPU or a GPU."""

    device: str = "auto"  # auto, or a provider of edgecnn.providers with an optional :DEVICE (cuda:1, openvino:GPU)
    intra_op_threads: int | None = None  # None: physical cores
    inter_op_threads: int = 1
    graph_optimization: str = "all"  # disable | basic | extended | all
    io_binding: bool | None = None  # None: on for CUDA, off for CPU
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # EXHAUSTIVE | HEURISTIC | DEFAULT
    # On CUDA, run the FP16 variant (model.fp16.onnx) when given the FP32 model.onnx of an
    # export that has one; the CPU always runs the file given (FP16 is slow there).
    prefer_fp16: bool = True
    enable_profiling: bool = False
    profile_prefix: str | None = None
    quiet: bool = True
    # CPU threads busy-wait between runs (onnxruntime's default): fastest back-to-back runs,
    # but they steal the cores from work done beside the model (decoding, HTTP). None: on.
    allow_spinning: bool | None = None
    # Settings of the chosen execution provider, checked by its registry entry (--ep-option KEY=VALUE).
    ep_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        check_one_of("graph_optimization", self.graph_optimization, _OPT_LEVELS)
        check_one_of("cudnn_conv_algo_search", self.cudnn_conv_algo_search, CUDNN_ALGO_SEARCHES)
        if self.intra_op_threads is not None:
            threads = self.intra_op_threads
            if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
                raise SettingError(
                    "intra_op_threads",
                    threads,
                    f"expected a whole number from 1 to {MAX_THREADS} (default: physical cores)",
                )


def require_model_file(path: str | os.PathLike) -> None:
    """A ModelError unless `path` is a file (what every command checks before anything slow)."""
    if not Path(path).is_file():
        raise ModelError(f"{path}: no such model file")


def _choose_provider(device: str, ort) -> tuple[Target, bool]:
    """The provider `device` asks for, and whether it is required (no CPU fallback allowed).

    auto: CUDA where this onnxruntime has it (falling back to the CPU with a note), else the CPU.
    """
    target = parse_device(device)
    if target is None:
        cuda = PROVIDERS["cuda"]
        return Target(cuda if cuda.installed(ort) else PROVIDERS["cpu"], "", device), False
    if not target.provider.installed(ort):
        raise DeviceError(target.provider.missing(device, ort))
    return target, target.provider.key != "cpu"


class Runner:
    """One onnxruntime session for one model; `run` and `predict` are safe to call from many threads.

    metadata: give it to override what the file says. foreign: what the user stated for a
    model without edgecnn metadata (ignored when the file has metadata). `provider` is the
    provider that really runs the model (checked after session creation, never assumed);
    `device_note` says why, when `--device auto` did not end up on CUDA.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        config: RunnerConfig = RunnerConfig(),
        metadata: ModelMetadata | None = None,
        foreign: ForeignModelSettings | None = None,
    ):
        ort = self._ort = import_onnxruntime()
        self.path = self.given_path = Path(model_path)
        self.config = config
        require_model_file(self.path)
        self.device = config.device.strip()
        self.target, required = _choose_provider(self.device, ort)
        self.provider_options, providers = self._providers()
        self.threads = config.intra_op_threads or physical_cores()
        self.device_note = ""
        self.session_cache = "not cached (not a CPU-only session)"  # what edgecnn.session_cache did
        self.path, self.variant_note = self._file_to_run()
        started = time.perf_counter()
        self.session = self._open_session(ort, providers, required)
        self.session_seconds = time.perf_counter() - started
        self._check_assigned_provider(ort, required)
        self._read_io()
        self.metadata, self.foreign = self._resolve_metadata(metadata, foreign)
        self._check_input_matches()
        self._check_output_matches()

    # -- construction: each helper answers one question -----------------------------------
    def _providers(self) -> tuple[dict, list]:
        """Which providers, in order, with which options: the chosen one, then the CPU to place
        the operators it lacks."""
        provider = self.target.provider
        settings = dict(self.config.ep_options)
        provider.check_settings(settings)
        options = provider.provider_options(self.target, settings, self.config)
        providers = [(provider.ort_name, options)]
        if provider.key != "cpu":
            providers.append(("CPUExecutionProvider", {}))
        return options, providers

    def _file_to_run(self) -> tuple[Path, str]:
        """Which file runs: the export's FP16 variant on an accelerator (unless prefer_fp16 is off), else the file given."""
        if not (self.target.provider.accelerator and self.config.prefer_fp16):
            return self.given_path, ""
        fp16 = fp16_variant(self.given_path)
        if fp16 is None:
            return self.given_path, ""
        name = self.given_path.name
        return fp16, f"the FP16 variant of {name} (--no-fp16 runs {name})"

    def _check_assigned_provider(self, ort, required: bool) -> None:
        """Which provider really runs the model (never assumed): a required one that onnxruntime did
        not assign is an error; `auto` off CUDA says why in `device_note`."""
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        wanted = self.target.provider
        if required and self.provider != wanted.ort_name:
            raise DeviceError(
                f"--device {self.config.device}: {wanted.label.removesuffix(' provider')} was requested but "
                f"onnxruntime assigned {self.provider} ({wanted.failure_hint}, or no device visible); "
                "refusing to run on the CPU silently"
            )
        if self.device == "auto" and self.provider != "CUDAExecutionProvider" and not self.device_note:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                self.device_note = "CUDA provider is installed but onnxruntime did not use it (no GPU visible?)"
            else:
                self.device_note = "this onnxruntime has no CUDA provider"
        self.on_cuda = self.provider == "CUDAExecutionProvider"
        self.on_accelerator = wanted.accelerator and self.provider == wanted.ort_name
        self.device_id = self.provider_options.get("device_id", 0) if self.on_accelerator else 0
        self.io_binding = self.on_cuda if self.config.io_binding is None else self.config.io_binding

    def _read_io(self) -> None:
        """The session's input and output: names, types, shapes, and a batch size fixed in the graph."""
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_type = inp.type
        self.onnx_input_shape = tuple(inp.shape)
        self.onnx_output_shape = tuple(out.shape)
        first = self.onnx_input_shape[0] if self.onnx_input_shape else None
        self.fixed_batch = first if isinstance(first, int) and first >= 1 else None

    def _resolve_metadata(
        self, given: ModelMetadata | None, foreign: ForeignModelSettings | None
    ) -> tuple[ModelMetadata, bool]:
        """What the model takes and answers: the metadata given, else the file's, else what the user
        stated about a foreign model; and whether the file has none of its own."""
        found = from_custom_map(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        if given is None and found is None:
            last = self.onnx_output_shape[-1] if self.onnx_output_shape else None
            outputs = last if isinstance(last, int) else None
            given = (foreign or ForeignModelSettings()).to_metadata(
                self.onnx_input_shape, self.input_type, outputs, str(self.path)
            )
        metadata = (given or found).replace(input_name=self.input_name, output_name=self.output_name)
        metadata.validate(str(self.path))
        return metadata, found is None

    def _open_session(self, ort, providers: list, required: bool):
        """Create the session. When it fails with another provider first, the CPU alone decides who
        was at fault: if the CPU loads the model, the provider (or its libraries: cuDNN, cuBLAS,
        OpenVINO) failed: `auto` notes it and runs on the CPU, an explicit device is a DeviceError;
        if the CPU fails too, the model is at fault."""
        try:
            return self._create_session(ort, providers)
        except DeviceError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            if providers[0][0] == "CPUExecutionProvider":
                raise ModelError(f"{self.path}: onnxruntime cannot load this model ({first_line(exc)})") from None
            provider_error = exc
        self.path, self.variant_note = self.given_path, ""  # FP16 was for the accelerator
        try:
            session = self._create_session(ort, [("CPUExecutionProvider", {})])
        except Exception as exc:
            raise ModelError(f"{self.path}: onnxruntime cannot load this model ({first_line(exc)})") from None
        wanted = self.target.provider
        if required:
            raise DeviceError(
                f"--device {self.config.device}: {wanted.label} could not be created ({first_line(provider_error)}); "
                f"{wanted.failure_hint}"
            )
        self.device_note = f"{wanted.label} could not be created ({first_line(provider_error)})"
        return session

    def _create_session(self, ort, providers):
        cfg = self.config
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        if cfg.allow_spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
        opts.inter_op_num_threads = cfg.inter_op_threads
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[cfg.graph_optimization])
        if cfg.quiet:
            opts.log_severity_level = 3
        if cfg.enable_profiling:
            opts.enable_profiling = True
            if cfg.profile_prefix:
                opts.profile_file_prefix = cfg.profile_prefix
        from edgecnn.onnxfile import check_external_data

        external = check_external_data(self.path)  # a model may read files from its own folder only
        classic = []
        for name, options in providers:
            entry = by_ort_name(name)
            if entry is None or not entry.attach(ort, opts, options, self.target):
                classic.append((name, options))
        if len(classic) < len(providers):  # a plugin provider was added to the options; the CPU comes by itself
            return ort.InferenceSession(str(self.path), opts)
        if classic != [("CPUExecutionProvider", {})]:
            return ort.InferenceSession(str(self.path), opts, providers=classic)
        session, self.session_cache = open_cached(
            lambda path, options: ort.InferenceSession(str(path), options, providers=classic),
            self.path,
            opts,
            ort,
            cfg.graph_optimization,
            external_data=bool(external),
        )
        return session

    # -- inputs ----------------------------------------------------------------------
    @property
    def numpy_input_dtype(self) -> np.dtype:
        return np.dtype(
            {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}.get(
                self.input_type, np.float32
            )
        )

    def _check_input_matches(self) -> None:
        meta = self.metadata
        shape = self.onnx_input_shape
        if len(shape) != 4:
            raise ModelError(
                f"{self.path}: input {self.input_name!r} has shape {list(shape)}; edgecnn runs image models with 4-D input"
            )
        expected = meta.input_shape(None)[1:]
        actual = tuple(s if isinstance(s, int) else None for s in shape[1:])
        for e, a in zip(expected, actual):
            if a is not None and a != e:
                raise ModelError(
                    f"{self.path}: input shape {list(shape)} does not match the stated {meta.layout} "
                    f"{meta.image_size[0]}x{meta.image_size[1]}x{meta.channels}"
                )

    def _check_output_matches(self) -> None:
        shape = self.onnx_output_shape
        if len(shape) != 2:  # a rank-3 output reached predict's table and raised TypeError there
            raise ModelError(
                f"{self.path}: output {self.output_name!r} has shape {list(shape)}; edgecnn reads one score per class: "
                "[N, classes]"
            )
        classes = shape[-1] if shape and isinstance(shape[-1], int) else None
        if classes is not None and classes != self.metadata.num_classes:
            raise ModelError(
                f"{self.path}: the model outputs {classes} scores per image but {self.metadata.num_classes} "
                f"class names were given; give {classes} names with --classes"
            )

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, C) uint8 images from `edgecnn.images.load_image` -> this model's input batch."""
        from edgecnn.images import to_batch

        batch = to_batch(images, self.metadata.layout, "uint8")
        if self.numpy_input_dtype != np.uint8:
            batch = batch.astype(self.numpy_input_dtype)
            if not self.metadata.preprocessing.in_graph:
                batch = self.metadata.preprocessing.apply(
                    batch.transpose(0, 2, 3, 1) if self.metadata.layout == "nchw" else batch
                )
                if self.metadata.layout == "nchw":
                    batch = batch.transpose(0, 3, 1, 2)
                batch = np.ascontiguousarray(batch, dtype=self.numpy_input_dtype)
        return batch

    def load(self, source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decode one image (path or bytes) at this model's size and channels.

        max_pixels: refuse larger images (`ImageTooLarge`); None: no limit.
        """
        from edgecnn.images import load_image

        return load_image(source, self.metadata.image_size, self.metadata.channels, max_pixels)

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
        n = len(batch)
        if self.fixed_batch is None or n == self.fixed_batch:
            return self._run_one(batch)
        size = self.fixed_batch  # a model exported with a fixed batch: run it in chunks of that size
        outputs = []
        for start in range(0, n, size):
            chunk = batch[start : start + size]
            if len(chunk) < size:
                pad = np.zeros((size - len(chunk),) + chunk.shape[1:], dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outputs.append(self._run_one(chunk)[: min(size, n - start)])
        return np.concatenate(outputs)

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        if self.io_binding:
            return self._run_bound(batch)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        ort = self._ort
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
        """What runs and how: for logs, `--json` outputs and the server's model endpoint."""
        return {
            "model": str(self.path),
            "device": self.device,
            "provider": self.provider,
            "providers": self.providers,
            "device_note": self.device_note,
            "input": {
                "name": self.input_name,
                "shape": list(self.metadata.input_shape(-1)),
                "dtype": str(self.numpy_input_dtype),
            },
            "output": {"name": self.output_name, "classes": self.metadata.num_classes},
            "variant": self.metadata.variant,
            "variant_note": self.variant_note or None,
            "foreign": self.foreign,
            "intra_op_threads": self.threads,
            "graph_optimization": self.config.graph_optimization,
            "io_binding": self.io_binding,
            "cudnn_conv_algo_search": self.config.cudnn_conv_algo_search if self.on_cuda else None,
            "ep_options": dict(self.config.ep_options),
            "provider_options": self.provider_options if self.provider == self.target.provider.ort_name else {},
            "allow_spinning": self.config.allow_spinning,
            "session_cache": self.session_cache,
        }

    def one_line(self) -> str:
        """One line for people: which provider ran and why."""
        where = (
            self.target.provider.describe(self.target, self.provider_options)
            if self.provider == self.target.provider.ort_name
            else ""
        )
        if not where or self.target.provider.key == "openvino":
            where = ", ".join(filter(None, (where, f"{self.threads} threads")))
        line = f"{self.path.name}: ran on {self.provider} ({where}, --device {self.device})"
        if self.variant_note:
            line += f"; {self.variant_note}"
        if self.device_note:
            line += f"; {self.device_note}"
        cpus = available_cpus()
        if self.threads > cpus:
            line += f"; {self.threads} threads on {cpus} CPU(s) here take turns: usually slower than {cpus} threads"
        return line


def fp16_variant(path: Path) -> Path | None:
    """The FP16 file `edgecnn export` wrote beside the FP32 `path`, if `path` is one and there is one."""
    path = Path(path)
    sibling = path.with_name(VARIANT_FILES["fp16"])
    return sibling if path.name == VARIANT_FILES["fp32"] and sibling.is_file() else None


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, largest first. (N, C) -> (N, k) x2.
    How a runner's probabilities are ranked: predict, profile, serve's /classify and its
    classification extension all use it, so they can never disagree."""
    k = max(1, min(k, probabilities.shape[-1]))
    idx = np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(probabilities, idx, axis=-1)
