"""How `edgecnn serve` listens, batches and guards itself (`ServeConfig`), and what a started server
says about itself (`ServeInfo`). Plain dataclasses: importing this loads neither onnxruntime nor
the HTTP stack, so the CLI can show the defaults in --help cheaply."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgecnn.serve.batching import BatchConfig
from edgecnn.errors import EdgecnnError, SettingError, check_at_least, check_one_of
from edgecnn.runtime import RunnerConfig

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
SERVE_MAX_PIXELS = 16_000_000
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # used with fullmatch: no trailing newline
_TOKEN = re.compile(r"[!-~]+")  # visible ASCII: what an Authorization header carries unchanged
MODEL_CONTROL = ("none", "explicit")  # Triton's --model-control-mode words (poll is --watch)
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class ServeConfig:
    """How `serve` listens, batches and guards itself."""

    host: str = "127.0.0.1"  # loopback unless the user names another host
    port: int = 8000  # 0: any free port
    name: Optional[str] = None  # the model's name in URLs; None: the model file's folder name
    # How to run the model, as for predict and profile. Idle onnxruntime threads do not spin here by
    # default: the event loop needs the same cores (docs/PERFORMANCE.md, serve and batching).
    runner: RunnerConfig = RunnerConfig(allow_spinning=False)
    max_batch_size: int = 32  # rows per model run; 1 turns batching off
    max_queue_delay_ms: float = 2.0
    max_queue: int = 256  # waiting requests; more get 503 + Retry-After
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies get 413
    max_pixels: int = SERVE_MAX_PIXELS  # larger images (decompression bombs) get 413
    decode_threads: int = 2  # threads decoding images for /classify
    default_top_k: int = 5
    shutdown_timeout_s: float = 30.0  # longest wait for in-flight requests on SIGTERM
    # After SIGTERM, /ready and new inference requests answer 503 for this long while the listener
    # stays open, so a load balancer sees the server leave before connections are refused; within
    # shutdown_timeout_s. SIGINT (Ctrl-C) stops at once.
    drain_delay_s: float = 1.0
    log_level: str = "warning"
    # admission control (edgecnn.serve.admission; docs/RELIABILITY.md has the worst-case memory formula)
    max_request_rows: int = 256  # rows in one /infer request; more get 413 (Triton: max_batch_size)
    max_connections: int = 256  # open connections; the next is answered 503 and closed
    max_header_bytes: int = 16 * 1024  # request line and headers; more get 431
    header_timeout_s: float = 10.0  # from connect (or the first byte) to the end of the headers; 408
    body_timeout_s: float = 30.0  # from the end of the headers to the end of the body; 408
    max_inflight_bytes: int = 256 * 1024 * 1024  # bodies, decompressed bodies and tensors held at once; 503
    allowed_hosts: tuple[str, ...] = ()  # Host header values accepted besides the bound address; "*": any
    ui: bool = True  # GET / answers the try-it page (edgecnn/serve/page.html); False: 404
    # models that change while serving (edgecnn.serve.repository; README "Long-running devices")
    verify: bool = True  # run each model's verification set before serving it (start-up and updates)
    watch: bool = False  # poll the model files; verified updates are swapped in, bad ones refused
    watch_interval_s: float = 2.0
    model_control: str = "none"  # "explicit": Triton's repository extension (load / unload) is on
    control_token: Optional[str] = None  # load/unload need "Authorization: Bearer TOKEN"; None: loopback callers only
    explicit_runner: frozenset = frozenset()  # RunnerConfig fields the user set: they beat a tuned configuration
    # max_batch_size / max_queue_delay_ms when the user set them: they beat `tune --serve`'s settings
    explicit_batching: frozenset = frozenset()

    def __post_init__(self):
        for setting, low in (
            ("port", 0),
            ("max_body_bytes", 1),
            ("max_pixels", 1),
            ("decode_threads", 1),
            ("shutdown_timeout_s", 0),
            ("drain_delay_s", 0),
            ("max_request_rows", 1),
            ("max_connections", 1),
            ("max_header_bytes", 1024),
            ("header_timeout_s", 0.001),
            ("body_timeout_s", 0.001),
            ("max_inflight_bytes", self.max_body_bytes),
            ("watch_interval_s", 0.05),
        ):
            check_at_least(setting, getattr(self, setting), low)
        if self.port > 65535:
            raise SettingError("port", self.port, "expected 65535 or less (0 picks a free port)")
        check_one_of("log_level", self.log_level, _LOG_LEVELS)
        check_one_of("model_control", self.model_control, MODEL_CONTROL)
        if self.watch and self.model_control == "explicit":
            raise SettingError(
                "model_control", self.model_control, "explicit control and watching exclude each other (as in Triton)"
            )
        if self.control_token is not None and len(self.control_token) < 16:
            raise SettingError("control_token", "<hidden>", "expected 16 characters or more")
        if self.control_token is not None and not _TOKEN.fullmatch(self.control_token):
            raise SettingError(  # headers carry ASCII only, and lose outer spaces: such a token never matches
                "control_token", "<hidden>", "expected visible ASCII characters only (no spaces, no accents)"
            )
        self.batch_config()

    def batch_config(self) -> BatchConfig:
        return BatchConfig(self.max_batch_size, self.max_queue_delay_ms, self.max_queue)


@dataclass(frozen=True)
class ServeInfo:
    """What a started server says about itself."""

    url: str
    model_name: str  # the names of every model served, ", "-separated
    provider: str
    max_batch_size: int
    startup_seconds: float
    http_stack: str  # e.g. "httptools + uvloop", or "h11 + asyncio" without uvicorn[standard]


def default_model_name(model_path) -> str:
    """``models/NAME/model.int8.onnx`` -> ``NAME`` (the file's stem when it has no folder)."""
    path = Path(model_path).resolve()
    return path.parent.name or path.stem


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise EdgecnnError(
            f"model name {name!r} cannot be used in URLs; pass --name with letters, digits, '.', '_' or '-'"
        )
    return name
