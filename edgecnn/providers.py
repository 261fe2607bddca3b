"""The execution providers edgecnn knows, one registry entry each.

An entry says how to find the provider in this onnxruntime, which devices it sees, how to ask
for it when a session is created, which settings it takes (`--ep-option KEY=VALUE`) and which
pip extra installs it. Adding a provider means adding one class here with `@register`.

`--device` names an entry and, after a colon, one of its devices: `cpu`, `cuda:1`,
`openvino:GPU`, `tensorrt`. Nothing falls back silently: a provider that is missing is a
one-line `DeviceError` naming its extra, and `Runner` checks which provider really runs.

Device path: onnxruntime (and the chosen provider's plugin package) only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from edgecnn.errors import DeviceError, EdgecnnError
from edgecnn.registry import Registry

PROVIDERS: Registry["Provider"] = Registry("device", note=" or auto (NAME:DEVICE picks a device: cuda:1, openvino:GPU)")


def register(cls):
    """Class decorator: add one provider to the registry under its `key`."""
    PROVIDERS.add(cls.key, cls())
    return cls


@dataclass(frozen=True)
class Target:
    """A parsed `--device`: the provider, the device it should use ("" = its default), what was typed."""

    provider: "Provider"
    device: str
    text: str


class Provider:
    """One execution provider. Subclasses set the class attributes and override what differs."""

    key: ClassVar[str]
    ort_name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs it: pip install "edgecnn[EXTRA]"
    accelerator: ClassVar[bool] = False  # IOBinding on by default; runs an export's FP16 variant
    label: ClassVar[str] = ""  # for messages: "the CUDA provider"
    failure_hint: ClassVar[str] = "check that its libraries are installed"
    settings: ClassVar[dict[str, str]] = {}  # --ep-option KEY: what it means (its values, default)
    device_help: ClassVar[str] = ""

    # -- detection ---------------------------------------------------------------------
    def installed(self, ort) -> bool:
        return self.ort_name in ort.get_available_providers()

    def devices(self, ort) -> list[str]:
        """The devices this provider can run on here ([] when it is not installed)."""
        return ["0"] if self.installed(ort) else []

    def version(self, ort) -> str | None:
        """The provider's own version where it has one apart from onnxruntime's."""
        return None

    def present(self, ort) -> bool:
        """Whether its package is installed here, whether or not it sees a device."""
        return self.installed(ort)

    def unusable(self, ort) -> str | None:
        """Why this provider cannot run here, in a few words; None when it can. Tells "not installed"
        from "installed, but it sees no device on this machine" (a skip reason must be true)."""
        try:
            if self.devices(ort):
                return None
        except DeviceError as exc:
            return str(exc)
        if not self.present(ort):
            return f'not installed (pip install "edgecnn[{self.extra}]")'
        return self.no_device_reason(ort)

    def no_device_reason(self, ort) -> str:
        return f"installed, but {self.ort_name} sees no device on this machine"

    def missing(self, text: str, ort) -> str:
        return (
            f"--device {text}: this onnxruntime has no {self.ort_name} (it has "
            f'{", ".join(ort.get_available_providers())}); install it: pip install "edgecnn[{self.extra}]"'
        )

    # -- sessions ------------------------------------------------------------------------
    def check_device(self, target: Target) -> None:
        """Refuse a device spec this provider cannot mean (before looking at the machine)."""
        if target.device and not target.device.isdigit():
            raise DeviceError(f"--device {target.text}: expected {self.key} or {self.key}:N (N a device number)")

    def check_settings(self, settings: dict[str, str]) -> None:
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            known = ", ".join(self.settings) or "none"
            raise EdgecnnError(f"--ep-option {unknown[0]}: {self.key} has no such setting (it takes: {known})")

    def provider_options(self, target: Target, settings: dict[str, str], config) -> dict[str, str]:
        """The options handed to onnxruntime for this provider."""
        return dict(settings)

    def attach(self, ort, session_options, options: dict[str, str], target: Target) -> bool:
        """Add a plugin provider to `session_options` itself; False for classic providers,
        which are passed to InferenceSession by name."""
        return False

    def describe(self, target: Target, options: dict[str, str]) -> str:
        """A few words for the one-line summary: which device, which settings."""
        return f"device {target.device or '0'}"


# ---------------------------------------------------------------------------------------
@register
class CPU(Provider):
    key = "cpu"
    label = "CPU provider"
    ort_name = "CPUExecutionProvider"
    extra = "cpu"
    device_help = "cpu"

    def check_device(self, target: Target) -> None:
        if target.device:
            raise DeviceError(f"--device {target.text}: the CPU provider takes no device number; use --device cpu")

    def devices(self, ort) -> list[str]:
        return [""]

    def describe(self, target: Target, options: dict[str, str]) -> str:
        return ""


@register
class CUDA(Provider):
    key = "cuda"
    ort_name = "CUDAExecutionProvider"
    extra = "gpu"
    accelerator = True
    device_help = "cuda or cuda:N"
    label = "CUDA provider"
    failure_hint = "check the CUDA 12/13 and cuDNN 9 libraries"
    CUDNN_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")

    def missing(self, text: str, ort) -> str:
        return (
            f"--device {text}: this onnxruntime has no CUDA execution provider (it has "
            f"{', '.join(ort.get_available_providers())}); install the GPU build: "
            'pip uninstall onnxruntime && pip install "edgecnn[gpu]"'
        )

    def provider_options(self, target: Target, settings: dict[str, str], config) -> dict[str, str]:
        return {"device_id": int(target.device or 0), "cudnn_conv_algo_search": config.cudnn_conv_algo_search}

    def describe(self, target: Target, options: dict[str, str]) -> str:
        return f"GPU {target.device or 0}"


@register
class TensorRT(CUDA):
    key = "tensorrt"
    ort_name = "TensorrtExecutionProvider"
    device_help = "tensorrt or tensorrt:N"
    label = "TensorRT provider"
    failure_hint = "check the TensorRT, CUDA and cuDNN libraries"
    settings = {
        "trt_fp16_enable": "True|False: let TensorRT run layers in FP16 (default False)",
        "trt_int8_enable": "True|False: INT8 (the model must carry QDQ scales; default False)",
    }

    def missing(self, text: str, ort) -> str:
        return (
            f"--device {text}: this onnxruntime has no TensorRT execution provider (it has "
            f'{", ".join(ort.get_available_providers())}); install onnxruntime-gpu (pip install "edgecnn[gpu]") '
            "and NVIDIA's TensorRT libraries"
        )

    def provider_options(self, target: Target, settings: dict[str, str], config) -> dict[str, str]:
        return {"device_id": int(target.device or 0), **settings}


@register
class OpenVINO(Provider):
    """Intel's OpenVINO as onnxruntime's plugin EP (`onnxruntime-ep-openvino`, beside stock onnxruntime).

    The plugin ignores the classic `precision`/`num_streams` options (with only a log line), so
    every setting goes into its `load_config`. Precision defaults to f32: OpenVINO's own default
    on CPUs with AMX is bf16, which changes answers; `edgecnn tune` tries it and keeps it only
    where the verification set says it is within budget.
    """

    key = "openvino"
    ort_name = "OpenVINOExecutionProvider"
    extra = "openvino"
    plugin_module = "onnxruntime_ep_openvino"
    device_help = "openvino or openvino:CPU|GPU|NPU"
    label = "OpenVINO provider"
    failure_hint = 'check the onnxruntime-ep-openvino plugin (pip install "edgecnn[openvino]")'
    settings = {
        "precision": "f32 (default: exact), bf16, f16, or device (OpenVINO's own choice: bf16 on CPUs with AMX)",
        "hint": "LATENCY (default) or THROUGHPUT: OpenVINO's performance hint",
        "streams": "number of parallel inference streams (default: what the hint picks)",
    }
    PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16", "device": None}
    HINTS = ("LATENCY", "THROUGHPUT")
    _registered = False

    def _plugin(self):
        try:
            import importlib

            return importlib.import_module(self.plugin_module)
        except ImportError:
            return None

    def _ep_devices(self, ort) -> list:
        plugin = self._plugin()
        if plugin is None or not hasattr(ort, "register_execution_provider_library"):
            return []
        if not OpenVINO._registered:
            try:
                ort.register_execution_provider_library("edgecnn-openvino", plugin.get_library_path())
            except Exception as exc:  # onnxruntime raises its own types; a broken plugin is not "missing"
                raise DeviceError(
                    f"the OpenVINO plugin could not be loaded ({str(exc).splitlines()[0] if str(exc) else exc})"
                ) from None
            OpenVINO._registered = True
        return [d for d in ort.get_ep_devices() if d.ep_name == self.ort_name]

    def installed(self, ort) -> bool:
        return bool(self._ep_devices(ort))

    def present(self, ort) -> bool:
        return self._plugin() is not None

    def no_device_reason(self, ort) -> str:
        from importlib.metadata import PackageNotFoundError, version

        from edgecnn.machine import cpuinfo

        try:
            package = f"onnxruntime-ep-openvino {version('onnxruntime-ep-openvino')}"
        except PackageNotFoundError:
            package = "the OpenVINO plugin"
        return f"installed ({package}), but the plugin lists no device on this CPU ({cpuinfo()[0]})"

    def devices(self, ort) -> list[str]:
        return sorted({d.ep_metadata.get("ov_device", "CPU") for d in self._ep_devices(ort)})

    def version(self, ort) -> str | None:
        devices = self._ep_devices(ort)
        return devices[0].ep_metadata.get("version") if devices else None

    def missing(self, text: str, ort) -> str:
        if self.present(ort):
            return f"--device {text}: the OpenVINO execution provider is {self.unusable(ort)}"
        return (
            f"--device {text}: the OpenVINO execution provider is not installed; "
            'install it beside onnxruntime: pip install "edgecnn[openvino]"'
        )

    def check_device(self, target: Target) -> None:
        if target.device and target.device.upper() not in ("CPU", "GPU", "NPU"):
            raise DeviceError(f"--device {target.text}: expected openvino, openvino:CPU, openvino:GPU or openvino:NPU")

    def check_settings(self, settings: dict[str, str]) -> None:
        super().check_settings(settings)
        if settings.get("precision", "f32") not in self.PRECISIONS:
            raise EdgecnnError(
                f"--ep-option precision={settings['precision']}: expected one of {', '.join(self.PRECISIONS)}"
            )
        if settings.get("hint", "LATENCY").upper() not in self.HINTS:
            raise EdgecnnError(f"--ep-option hint={settings['hint']}: expected LATENCY or THROUGHPUT")
        streams = settings.get("streams", "1")
        if not streams.isdigit() or int(streams) < 1:
            raise EdgecnnError(f"--ep-option streams={streams}: expected a whole number of 1 or more")

    def provider_options(self, target: Target, settings: dict[str, str], config) -> dict[str, str]:
        from edgecnn.machine import physical_cores

        device = (target.device or "CPU").upper()
        properties = {"PERFORMANCE_HINT": settings.get("hint", "LATENCY").upper()}
        precision = self.PRECISIONS[settings.get("precision", "f32")]
        if precision is not None:
            properties["INFERENCE_PRECISION_HINT"] = precision
        if "streams" in settings:
            properties["NUM_STREAMS"] = settings["streams"]
        if device == "CPU":
            properties["INFERENCE_NUM_THREADS"] = str(config.intra_op_threads or physical_cores())
        return {"load_config": json.dumps({device: properties}, sort_keys=True)}

    def attach(self, ort, session_options, options: dict[str, str], target: Target) -> bool:
        device = (target.device or "CPU").upper()
        chosen = [
            d
            for d in self._ep_devices(ort)
            if d.ep_metadata.get("ov_device") == device and "ov_meta_device" not in d.ep_metadata
        ]
        if not chosen:
            seen = ", ".join(self.devices(ort)) or "none"
            raise DeviceError(f"--device {target.text}: OpenVINO sees no {device} here (it sees: {seen})")
        session_options.add_provider_for_devices(chosen, options)
        return True

    def describe(self, target: Target, options: dict[str, str]) -> str:
        props = next(iter(json.loads(options["load_config"]).values()))
        precision = props.get("INFERENCE_PRECISION_HINT", "device default")
        return (
            f"OpenVINO {(target.device or 'CPU').upper()}, precision {precision}, {props['PERFORMANCE_HINT'].lower()}"
            + (f", {props['NUM_STREAMS']} streams" if "NUM_STREAMS" in props else "")
        )


# ---------------------------------------------------------------------------------------
def devices_help() -> str:
    """What --device accepts, from the registry."""
    return "auto (CUDA if it works, else CPU; says which ran), " + ", ".join(p.device_help for p in PROVIDERS.values())


def by_ort_name(name: str) -> Provider | None:
    return next((p for p in PROVIDERS.values() if p.ort_name == name), None)


def parse_device(text: str) -> Target | None:
    """`--device` -> Target; None for `auto`. An unknown name is a SettingError listing the
    providers, a malformed device a DeviceError."""
    spec = text.strip()
    key, _, device = spec.partition(":")
    key = key.lower()
    if key == "auto" and not device:
        return None
    provider = PROVIDERS.get(key)
    if provider is None:
        raise PROVIDERS.unknown(text)
    target = Target(provider, device, text)
    provider.check_device(target)
    return target


def parse_ep_options(pairs) -> tuple[tuple[str, str], ...]:
    """['precision=bf16', 'hint=THROUGHPUT'] -> (('precision', 'bf16'), ('hint', 'THROUGHPUT'))."""
    parsed = []
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise EdgecnnError(f"--ep-option {pair}: expected KEY=VALUE, e.g. precision=bf16")
        parsed.append((key.strip(), value.strip()))
    return tuple(parsed)


def usable(ort) -> list[tuple[Provider, str]]:
    """(provider, device) for every provider and device that can run here, CPU first."""
    found = []
    for provider in PROVIDERS.values():
        try:
            found.extend((provider, device) for device in provider.devices(ort))
        except DeviceError:
            continue
    return found


def unusable(ort) -> list[tuple[Provider, str]]:
    """(provider, why) for every provider whose package is here but which cannot run: installed,
    yet it sees no device on this machine (the OpenVINO plugin on an AMD CPU, say)."""
    return [(p, why) for p in PROVIDERS.values() if p.present(ort) and (why := p.unusable(ort))]


def versions(ort) -> dict[str, str]:
    """onnxruntime's version and every installed provider's own version (for fingerprints)."""
    out = {"onnxruntime": ort.__version__}
    for provider in PROVIDERS.values():
        try:
            version = provider.version(ort)
        except DeviceError:
            version = None
        if version:
            out[provider.key] = version
    return out
