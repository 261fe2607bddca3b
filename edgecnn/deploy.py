"""`edgecnn deploy kserve`: a container image recipe and a KServe InferenceService for a model.

Writes, into one folder (replaced atomically), everything `docker build` and `kubectl apply`
need: ``Dockerfile`` (slim Python base, `pip install edgecnn[cpu,uvloop]` or `[gpu,uvloop]`, the model file,
`edgecnn serve --host 0.0.0.0` as a non-root user), ``model/`` (the chosen ONNX file, which
carries its own metadata) and ``inferenceservice.yaml`` (``serving.kserve.io/v1beta1``, a custom
predictor container speaking the Open Inference Protocol v2, which `edgecnn serve` speaks,
with readiness and liveness probes on ``/v2/health/ready`` and ``/v2/health/live``).

The manifest is YAML written by hand (JSON-quoted scalars): no YAML library at run time.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgecnn import __version__
from edgecnn.errors import EdgecnnError, ModelError, SettingError
from edgecnn.files import atomic_path
from edgecnn.metadata import VARIANT_FILES, ModelMetadata
from edgecnn.verify import VERIFY_FILE

PORT = 8080  # KServe's default container port
UID = 10001  # the image's non-root user
MANIFEST = "inferenceservice.yaml"
STARTUP_S = 600  # the longest a container may take to load and verify its model before it answers
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# Kubernetes' quantity grammar: a number, then an exponent, a decimal SI suffix or a binary one
QUANTITY = re.compile(r"(?P<number>[+-]?(\d+(\.\d*)?|\.\d+))(?P<suffix>[eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?")
_SUFFIXES = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_SUFFIXES.update({f"{k}i": 1024.0 ** (i + 1) for i, k in enumerate("KMGTPE")})


@dataclass(frozen=True)
class ChosenModel:
    path: Path
    name: str  # the model's name in URLs: the model folder's name
    metadata: ModelMetadata


def choose_model(model_dir: str | Path, variant: str | None = None) -> ChosenModel:
    """MODEL_DIR's exported file: `variant` (fp32, int8, fp16), else the export's recommended one, else model.onnx."""
    from edgecnn.metadata import read_onnx_metadata, recommended_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: no such model folder; export one with: edgecnn export {model_dir}")
    if variant is not None and variant not in VARIANT_FILES:
        raise EdgecnnError(f"--variant {variant}: expected one of {', '.join(VARIANT_FILES)}")
    path = model_dir / VARIANT_FILES[variant] if variant is not None else recommended_file(model_dir)
    if not path.is_file():
        raise ModelError(
            f"{path}: no such file; export the model first: edgecnn export {model_dir}"
            + (f" --quantize {variant}" if variant and variant != "fp32" else "")
        )
    meta = read_onnx_metadata(path)
    if meta is None:
        raise ModelError(f"{path} has no edgecnn metadata; export it with: edgecnn export {model_dir}")
    return ChosenModel(path, model_dir.resolve().name, meta)


@dataclass(frozen=True)
class KServeConfig:
    """What `edgecnn deploy kserve` writes; the defaults fit a small CPU model."""

    model_dir: Path
    image: str  # where the image will be pushed, e.g. registry.example.com/team/digits:1
    out: Path | None = None  # None: MODEL_DIR/kserve
    name: str | None = None  # InferenceService name and model name in URLs; None: the model folder's name
    gpu: bool = False
    variant: str | None = None  # None: the export's recommended variant
    cpu: str = "1"  # requests (limits: twice)
    memory: str = "1Gi"
    python: str = "3.11"

    def __post_init__(self):
        if not (quantity(self.cpu, cpu=True) or 0) > 0:
            raise SettingError("cpu", self.cpu, "expected a Kubernetes CPU quantity above 0, such as 1, 2 or 500m")
        if not (quantity(self.memory) or 0) > 0:
            raise SettingError(
                "memory", self.memory, "expected a Kubernetes memory quantity above 0, such as 1Gi or 512Mi"
            )

    @property
    def requirement(self) -> str:
        """What the image installs: this edgecnn version with the onnxruntime for the device, and
        uvloop (a server image: the faster event loop is worth its 14 MiB)."""
        return f"edgecnn[{'gpu' if self.gpu else 'cpu'},uvloop]=={__version__}"


@dataclass(frozen=True)
class KServeFiles:
    out: Path
    dockerfile: Path
    manifest: Path
    model: Path
    command: tuple[str, ...]  # what the container runs


def serve_command(model_file: str, name: str, gpu: bool, threads: int) -> tuple[str, ...]:
    """The container's command: `edgecnn serve` on every interface at KServe's port, with as many
    threads as the container's CPU limit allows (more would only queue for the quota)."""
    return (
        "edgecnn",
        "serve",
        model_file,
        "--host",
        "0.0.0.0",
        "--port",
        str(PORT),
        "--name",
        name,
        "--device",
        "cuda" if gpu else "cpu",
        "--threads",
        str(threads),
    )


def deploy_kserve(config: KServeConfig) -> KServeFiles:
    """Write OUT/Dockerfile, OUT/model/FILE (with the export's verification set beside it) and
    OUT/inferenceservice.yaml (the folder swapped in at once)."""
    chosen = choose_model(config.model_dir, config.variant)
    name = config.name or chosen.name.lower().replace("_", "-")
    if not DNS_LABEL.match(name):
        raise EdgecnnError(
            f"--name {name}: a KServe name must be lower-case letters, digits and '-', "
            "start with a letter and be at most 63 characters"
        )
    if not config.image or any(c.isspace() for c in config.image):
        raise EdgecnnError(
            f"--image {config.image!r}: expected an image reference such as registry.example.com/team/{name}:1"
        )
    out = Path(config.out) if config.out is not None else Path(config.model_dir) / "kserve"
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise EdgecnnError(
            f"--out {out} exists and is not an earlier `edgecnn deploy kserve` folder; choose a new folder"
        )
    model_file = f"/models/{name}/{chosen.path.name}"
    command = serve_command(model_file, name, config.gpu, threads=max(1, math.ceil(_cpus(_double(config.cpu)))))
    with atomic_path(out) as tmp:
        (tmp / "model").mkdir(parents=True)
        shutil.copyfile(chosen.path, tmp / "model" / chosen.path.name)
        verification = Path(config.model_dir) / VERIFY_FILE
        if verification.is_file():  # beside the file, so the container checks the model before it serves
            shutil.copyfile(verification, tmp / "model" / VERIFY_FILE)
        (tmp / "Dockerfile").write_text(dockerfile(config, name, command))
        (tmp / MANIFEST).write_text(to_yaml(inference_service(config, name)))
    return KServeFiles(out, out / "Dockerfile", out / MANIFEST, out / "model" / chosen.path.name, command)


def dockerfile(config: KServeConfig, name: str, command: tuple[str, ...]) -> str:
    return f"""# Written by `edgecnn deploy kserve`. Build and push from this folder:
#   docker build -t {config.image} . && docker push {config.image}
# --build-arg EDGECNN=... installs another edgecnn requirement (e.g. a VCS URL with the same extra).
FROM python:{config.python}-slim
ARG EDGECNN="{config.requirement}"
RUN pip install --no-cache-dir "$EDGECNN" \\
 && useradd --create-home --uid {UID} edgecnn
COPY --chown={UID}:{UID} model/ /models/{name}/
USER {UID}
EXPOSE {PORT}
CMD {json.dumps(list(command))}
"""


def inference_service(config: KServeConfig, name: str) -> dict:
    """The InferenceService: one custom predictor container, probes on the v2 health endpoints."""
    limits = {"cpu": str(_double(config.cpu)), "memory": config.memory}
    if config.gpu:
        limits["nvidia.com/gpu"] = "1"

    def probe(path, delay, failures=3):
        return {
            "httpGet": {"path": path, "port": PORT},
            "initialDelaySeconds": delay,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "edgecnn"}},
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": config.image,
                        "ports": [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}],
                        # serve loads and verifies the model before it listens: the other probes wait
                        # for this one, which gives that up to STARTUP_S (a large model on a small CPU limit)
                        "startupProbe": probe("/v2/health/live", 2, failures=STARTUP_S // 10),
                        "readinessProbe": probe("/v2/health/ready", 2),
                        "livenessProbe": probe("/v2/health/live", 10),
                        "resources": {"requests": {"cpu": config.cpu, "memory": config.memory}, "limits": limits},
                        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "allowPrivilegeEscalation": False},
                    }
                ],
            }
        },
    }


def quantity(text: str, cpu: bool = False) -> float | None:
    """A Kubernetes quantity's value, or None where Kubernetes would not read it (`cpu`: only the ways
    a CPU count is written: 2, 0.5, 500m, 1e3)."""
    match = QUANTITY.fullmatch(text)
    if match is None:
        return None
    suffix = match["suffix"] or ""
    if suffix[:1] in ("e", "E"):
        return float(match["number"] + suffix)
    if cpu and suffix not in ("", "m"):
        return None
    return float(match["number"]) * _SUFFIXES[suffix]


def _cpus(value) -> float:
    """A Kubernetes CPU quantity as a number of CPUs: 2 -> 2.0, "1500m" -> 1.5."""
    return quantity(str(value), cpu=True)


def _double(quantity: str):
    """Twice a CPU quantity ("1" -> 2, "500m" -> "1000m"), for the limit."""
    if quantity.endswith("m") and quantity[:-1].isdigit():
        return f"{2 * int(quantity[:-1])}m"
    try:
        value = 2 * float(quantity)
    except ValueError:
        raise EdgecnnError(f"--cpu {quantity}: expected a Kubernetes CPU quantity such as 1, 2 or 500m") from None
    return int(value) if value.is_integer() else value


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; scalars JSON-quoted (valid YAML)."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                text = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {text[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {json.dumps(item)}")
    return "\n".join(lines) + ("\n" if indent == 0 else "")
