"""The models one `edgecnn serve` serves, and how they change while it runs.

`edgecnn serve ROOT`: ROOT is one .onnx file, one export folder, or a folder of export folders
(each served at /v2/models/FOLDER). The `Repository` maps each name to its `Service`, which
holds the `Version` answering now. A version is only served after the start-up check: loaded,
warmed up, and run on its folder's verification set with `edgecnn verify`'s budget
(`edgecnn.verify.verify_runner`, on the very configuration being served).

Updates (`--watch`, or Triton's repository extension with `--model-control explicit`):
the candidate is loaded and verified in a thread of its own (never on the event loop), then
swapped in between two requests: requests that started on the old version finish on it, its
batcher finishes its queue, and only then is its session freed. A candidate that cannot be read
or fails verification is refused: the old version keeps serving, the index shows the refusal
and its reason, /metrics counts it, the log gets one line. Files that changed while they were
being loaded (a copy still going on) are not judged: the next poll tries again.

Device path: onnxruntime and NumPy only.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgecnn.serve.admission import Budget, allowed_host_names
from edgecnn.errors import EdgecnnError, ModelError, first_line
from edgecnn.metadata import METADATA_FILE, VARIANT_FILES
from edgecnn.serve.metrics import Metrics
from edgecnn.serve.protocol import ProtocolError
from edgecnn.serve.config import ServeConfig, check_name, NAME_PATTERN, default_model_name
from edgecnn.serve.service import LOADING, UNAVAILABLE, Service, Version
from edgecnn.verify import VERIFY_FILE

log = logging.getLogger("edgecnn.serve")
_SIDE_FILES = (VERIFY_FILE, "deploy.json", "export_report.json")  # beside a single .onnx file, read with it
_NOT_READ = frozenset({".html", ".png", ".md", ".keras", ".csv", ".log"})  # reports and the Keras model: no reload


class Refused(EdgecnnError):
    """A version that could not be read or failed its verification; the one serving stays."""


class _Changed(Exception):
    """The files changed while they were loaded (still being copied): try again at the next poll."""


@dataclass(frozen=True)
class ModelSource:
    """Where one model's files are: an export folder, or one .onnx file."""

    name: str
    path: Path
    folder: bool

    @property
    def directory(self) -> Path:
        return self.path if self.folder else self.path.parent

    def fingerprint(self) -> Optional[tuple]:
        """(file, inode, size, mtime) of every file it is loaded from; None when the model is gone.
        An export's atomic folder swap or a copy changes it; reading the files does not."""
        try:
            files = (
                sorted(self.path.iterdir()) if self.folder else [self.path, *(self.directory / f for f in _SIDE_FILES)]
            )
        except (FileNotFoundError, NotADirectoryError):
            return None
        prints = []
        for file in files:
            try:
                st = file.stat()
            except FileNotFoundError:
                if file == self.path:
                    return None
                continue
            if stat.S_ISREG(st.st_mode) and file.suffix not in _NOT_READ:
                prints.append((file.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(prints) if prints or not self.folder else None


def is_export(folder: Path) -> bool:
    return any((folder / name).is_file() for name in VARIANT_FILES.values())


def discover(root: Path, name: Optional[str] = None) -> tuple[list[ModelSource], bool]:
    """The models under `root` and whether `root` is a repository (a folder of export folders).

    A .onnx file or an export folder is one model (named `name`, else after its folder)."""
    root = Path(root)
    if root.suffix == ".onnx" or root.is_file():
        return [ModelSource(check_name(name or default_model_name(root)), root, False)], False
    if not root.is_dir():
        raise ModelError(
            f"{root}: no such model file or folder; pass an .onnx file, an export folder or a folder of them"
        )
    if is_export(root):
        return [ModelSource(check_name(name or root.resolve().name), root, True)], False
    if name:
        raise EdgecnnError(f"--name {name}: {root} is a folder of models, each named after its folder; drop --name")
    return [
        ModelSource(sub.name, sub, True)
        for sub in sorted(root.iterdir())
        if sub.is_dir() and NAME_PATTERN.fullmatch(sub.name) and is_export(sub)
    ], True


def unnamed(root: Path) -> list[Path]:
    """Export folders under a repository `root` that are not served because their name cannot be a
    model's name (hidden folders, such as an export's staging folder, are not counted)."""
    return _subfolders(root, lambda sub: not NAME_PATTERN.fullmatch(sub.name) and is_export(sub))


def unexported(root: Path) -> list[Path]:
    """Trained model folders under a repository `root` with no exported .onnx yet (not served)."""
    return _subfolders(root, lambda sub: (sub / METADATA_FILE).is_file() and not is_export(sub))


def _subfolders(root: Path, keep) -> list[Path]:
    """The folders directly under `root`, hidden ones passed over, for which `keep(folder)`."""
    try:
        return [
            sub for sub in sorted(Path(root).iterdir()) if not sub.name.startswith(".") and sub.is_dir() and keep(sub)
        ]
    except OSError:
        return []


def _not_served_line(folder: Path) -> str:
    if not is_export(folder):
        return f"warning: {folder}: not served, a trained model with no exported .onnx; run edgecnn export {folder}"
    return (
        f"warning: {folder}: not served, {folder.name!r} cannot be a model name (letters, digits, _ . - only, "
        "starting with a letter or digit); rename the folder"
    )


# -- loading one version -------------------------------------------------------------------
def warm_up(runner) -> None:
    """One run on a zero image so the first request does not pay for lazy initialisation; it also
    checks that the model answers a probability vector per image, which is what serve reports."""
    out = np.asarray(runner.run(np.zeros(runner.metadata.input_shape(1), dtype=runner.numpy_input_dtype)))
    classes = len(runner.metadata.class_names)
    if (
        out.ndim != 2
        or out.shape[1] != classes
        or not np.isfinite(out).all()
        or out.min() < -1e-3
        or out.max() > 1 + 1e-3
        or abs(float(out.sum()) - 1) > 1e-2
    ):
        summary = (
            f"shape {list(out.shape)}"
            if out.ndim != 2 or out.shape[1] != classes
            else f"values {float(out.min()):.3g}..{float(out.max()):.3g} summing to {float(out.sum()):.3g}"
        )
        raise ModelError(
            f"{runner.path}: its output for a blank image is not a probability vector over its {classes} "
            f"classes ({summary}); serve reports outputs as probabilities: end the model with a softmax"
        )


@dataclass
class Loaded:
    runner: object
    verified: object  # VerifyResult, or None (no verification set, or --no-verify)
    fingerprint: Optional[tuple]
    note: str  # what tuned.resolve said (tuned configuration and serving settings used or not), "" if nothing
    config: ServeConfig  # the server's, with this model's tuned serving settings (tune --serve) applied


def load(source: ModelSource, config: ServeConfig) -> Loaded:
    """Open, warm up and verify `source` as `config` says (blocking: call it off the event loop).

    Raises `Refused` (one line: why) when it cannot be read or fails verification, `_Changed`
    when its files changed meanwhile."""
    from dataclasses import replace

    from edgecnn.runtime import Runner
    from edgecnn.tuned_config import apply_serving, resolve
    from edgecnn.verify import verify_runner

    before = source.fingerprint()
    try:
        resolved = resolve(source.path, config.runner, config.explicit_runner)
        batch, delay, runner_config = apply_serving(
            resolved,
            config.max_batch_size,
            config.max_queue_delay_ms,
            config.explicit_batching | config.explicit_runner,
        )
        config = replace(config, max_batch_size=batch, max_queue_delay_ms=delay)
        runner = Runner(resolved.path, runner_config)
        warm_up(runner)
        verified = verify_runner(runner) if config.verify else None
    except Exception as exc:  # unreadable, not a model, not a classifier, corrupt verification set, ...
        if source.fingerprint() != before:
            raise _Changed() from None
        raise Refused(first_line(exc)) from None
    if source.fingerprint() != before:
        raise _Changed()
    if verified is not None and not verified.passed:
        raise Refused(f"failed verification: {verified.line()}")
    note = "; ".join(n for n in (resolved.note, resolved.serving_note) if n)
    return Loaded(runner, verified, before, note, config)


def _no_check_line(source: ModelSource, config: ServeConfig) -> str:
    if not config.verify:
        return ""
    return (
        f"warning: {source.directory} has no verification set ({VERIFY_FILE}): serving {source.name} unchecked "
        "(edgecnn export writes one)"
    )


async def _in_thread(fn, *args):
    """fn(*args) in a daemon thread: a load still going at exit does not hold the process."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error):
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def work():
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed: the server stopped meanwhile
            pass

    threading.Thread(target=work, name="edgecnn-load", daemon=True).start()
    return await future


# -- the repository ------------------------------------------------------------------------
class Repository:
    """Every model the server serves, and what they share: the config, the metrics, the byte
    budget for requests in flight, the image decode pool, the hosts a request may name."""

    def __init__(self, config: ServeConfig, root: Optional[Path] = None, say: Callable[[str], None] = log.warning):
        self.config, self.root, self.say = config, Path(root) if root is not None else None, say
        self.metrics = Metrics()
        self.budget = Budget(config.max_inflight_bytes)
        self.decode_pool = ThreadPoolExecutor(max(1, config.decode_threads), thread_name_prefix="edgecnn-decode")
        self.hosts = allowed_host_names(config.host, config.allowed_hosts)
        self.models: dict[str, Service] = {}
        self.is_repository = False  # root is a folder of export folders
        self.stopping = False
        self.stop_requested: Optional[float] = None  # time.monotonic() of SIGTERM/SIGINT
        self._retiring: set[asyncio.Task] = set()
        self._watcher: Optional[asyncio.Task] = None
        self._lock: Optional[asyncio.Lock] = None  # one load at a time
        self._missing: dict[str, int] = {}  # polls in a row a model's files were not found
        self._not_served: set[Path] = set()  # folders not served (their name, no export yet), said once each
        self.abandoned = False

    # -- building it ---------------------------------------------------------------------
    @classmethod
    def of_runner(cls, runner, config: ServeConfig, name: str) -> "Repository":
        """One model, already open (in-process servers and tests): no files to watch."""
        repository = cls(config)
        service = repository._add(name, None)
        service.install(repository._version(service, 1, runner))
        return repository

    def _add(self, name: str, source: Optional[ModelSource]) -> Service:
        service = self.models.get(name)
        if service is None:
            service = self.models[name] = Service(name, self, source)
        service.source = source or service.source
        return service

    def _version(self, service: Service, number: int, runner, verified=None, fingerprint=None, config=None) -> Version:
        """config: this version's serving settings (its tuned ones), else the server's."""
        name = service.name
        return Version(
            number,
            runner,
            config or self.config,
            lambda report: self.metrics.batch(name, report),
            verified,
            fingerprint,
        )

    def open(self) -> list[str]:
        """Load, warm up and verify every model under `root` (start-up, before listening); an
        `EdgecnnError` naming the first that fails. Returns the lines to show (notes, warnings, checks)."""
        sources, self.is_repository = discover(self.root, self.config.name)
        if not sources and not (self.config.watch or self.config.model_control == "explicit"):
            if self.is_repository and unnamed(self.root):
                folders = ", ".join(repr(folder.name) for folder in unnamed(self.root)[:3])
                raise ModelError(
                    f"{self.root}: no export folder here has a name that can be a model name ({folders}: letters, "
                    "digits, _ . - only, starting with a letter or digit); rename them"
                )
            raise ModelError(
                f"{self.root}: no exported model in this folder or its subfolders; export one there with edgecnn export, "
                "or start with --watch to serve the models as they arrive"
            )
        lines = [_not_served_line(folder) for folder in self._new_not_served()]
        for source in sources:
            try:
                loaded = load(source, self.config)
            except _Changed:
                raise ModelError(f"{source.path}: its files changed while it was loaded; start again") from None
            except Refused as exc:
                raise ModelError(f"{source.name}: {exc}" if self.is_repository else str(exc)) from None
            service = self._add(source.name, source)
            service.install(
                self._version(service, 1, loaded.runner, loaded.verified, loaded.fingerprint, loaded.config)
            )
            lines += [line for line in (loaded.note, self._check_line(source, loaded)) if line]
        return lines

    def _new_not_served(self) -> list[Path]:
        """Folders that look like models but are not served (a name that cannot be a model's, not
        exported yet), each said once while it stays so."""
        if not self.is_repository:
            return []
        found = unnamed(self.root) + unexported(self.root)
        new = [folder for folder in found if folder not in self._not_served]
        self._not_served = set(found)
        return new

    def _check_line(self, source: ModelSource, loaded: Loaded) -> str:
        if loaded.verified is not None:
            return f"checked {source.name}: {loaded.verified.line()}"
        return _no_check_line(source, self.config)

    # -- requests ------------------------------------------------------------------------
    def service(self, name: str) -> Service:
        service = self.models.get(name)
        if service is None:
            known = ", ".join(repr(n) for n in self.models) or "none"
            raise ProtocolError(f"unknown model {name!r}: this server serves {known}", 404)
        return service

    @property
    def first(self) -> Service:
        return next(iter(self.models.values()))

    def shutdown_left(self) -> float:
        """Seconds left of --shutdown-timeout since the signal (all of it without one)."""
        elapsed = 0.0 if self.stop_requested is None else time.monotonic() - self.stop_requested
        return max(0.1, self.config.shutdown_timeout_s - elapsed)

    def queue_depths(self) -> dict[str, int]:
        return {name: s.current.batcher.depth for name, s in self.models.items() if s.current is not None}

    def index(self) -> list[dict]:
        """Triton's repository index: every model with its version and state (and refusals, with why)."""
        names = set(self.models)
        if self.root is not None and self.is_repository:
            try:
                names |= {source.name for source in discover(self.root)[0]}
            except (OSError, EdgecnnError):
                pass
        entries = []
        for name in sorted(names):
            if name in self.models:
                entries += self.models[name].index()
            else:
                entries.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": "not loaded"})
        return entries

    # -- the life of the server ----------------------------------------------------------
    async def start(self) -> None:
        self._lock = asyncio.Lock()
        for service in self.models.values():
            if service.current is not None:
                service.current.batcher.start()
        if self.config.watch and self.root is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="edgecnn-watch")

    async def stop(self, timeout: float) -> None:
        """No more updates; every version finishes its queue (at most `timeout` s)."""
        self.stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        batchers = [s.current.batcher for s in self.models.values() if s.current is not None]
        # as before several models: each batcher finishes its queue; requests still reading get 503
        tasks = [asyncio.ensure_future(b.stop(timeout)) for b in batchers] + list(self._retiring)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 1)
        self.abandoned = any(b.abandoned for b in batchers)
        self.decode_pool.shutdown(wait=not self.abandoned, cancel_futures=True)

    def _retire(self, version: Optional[Version]) -> None:
        if version is None:
            return
        task = asyncio.get_running_loop().create_task(version.retire(self.config.shutdown_timeout_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- updates -------------------------------------------------------------------------
    async def load(self, name: str) -> Service:
        """(Re)load model `name` from its files through the verify gate and swap it in; `Refused`
        (the old version keeps serving) or `ProtocolError` 404 for a model that is not there."""
        async with self._lock:
            source = self._source(name)
            if source is None:
                raise ProtocolError(f"no model {name!r} under {self.root}", 404)
            service = self._add(name, source)
            try:
                return await self._update(service, source)
            except _Changed:
                raise Refused(f"{source.path}: its files changed while they were loaded; load it again") from None

    def _source(self, name: str) -> Optional[ModelSource]:
        if self.root is None:
            return None
        sources = {s.name: s for s in discover(self.root, None if self.is_repository else self.config.name)[0]}
        return sources.get(name)

    async def _update(self, service: Service, source: ModelSource) -> Service:
        number = service.next_number()
        service.state = LOADING if service.current is None else service.state
        started = time.perf_counter()
        try:
            loaded = await _in_thread(load, source, self.config)
        except Refused as exc:
            self._refuse(service, number, str(exc), source.fingerprint())
            raise
        except _Changed:
            if service.current is None:
                service.state = UNAVAILABLE
            raise
        if self.stopping:
            raise Refused("the server is shutting down")
        if loaded.verified is None and self.config.verify and service.current and service.current.verified:
            # Taking the set away must not take the check away: an update is held to the version it replaces.
            reason = (
                f"{source.directory} has no verification set ({VERIFY_FILE}) and version {service.current.number} "
                "was verified; publish the update with the one its export wrote (or restart the server to serve it unchecked)"
            )
            self._refuse(service, number, reason, loaded.fingerprint)
            raise Refused(reason)
        old = service.install(
            self._version(service, number, loaded.runner, loaded.verified, loaded.fingerprint, loaded.config)
        )
        self._retire(old)
        check = loaded.verified.line() if loaded.verified is not None else _no_check_line(source, self.config)
        self.say(
            f"serving {service.name} version {number} (loaded and checked in {time.perf_counter() - started:.2f} s)"
            + (f"; {check}" if check else "")
        )
        return service

    def _refuse(self, service: Service, number: int, reason: str, fingerprint) -> None:
        service.refuse(number, reason, fingerprint)
        self.say(f"refused {service.name} version {number}: {reason}")

    async def unload(self, name: str) -> None:
        async with self._lock:
            service = self.service(name)
            self._retire(service.take_down("unloaded", "unloaded"))

    async def poll(self) -> None:
        """One look at the files: load what changed, take down what is gone."""
        try:
            sources, _ = discover(self.root, None if self.is_repository else self.config.name)
        except (OSError, EdgecnnError) as exc:
            sources = []
            if not self.is_repository:  # the one model's file or folder is gone
                sources = [s.source for s in self.models.values() if s.source is not None]
            else:
                log.debug("cannot list %s: %s", self.root, exc)
        for folder in self._new_not_served():
            self.say(_not_served_line(folder))
        by_name = {s.name: s for s in sources}
        for name, service in list(self.models.items()):
            if service.source is not None and name not in by_name:
                by_name[name] = service.source  # gone from the listing: its fingerprint says so below
        for name, source in by_name.items():
            if self.stopping:
                return
            fingerprint = source.fingerprint()
            service = self.models.get(name)
            if fingerprint is None:
                self._missing[name] = self._missing.get(name, 0) + 1
                if service is not None and service.current is not None and self._missing[name] >= 2:
                    reason = f"its files are gone ({source.path})"
                    self._retire(service.take_down(reason, "removed"))
                    self.say(f"{name} is unavailable: {reason}")
                continue
            self._missing.pop(name, None)
            current = service.current.fingerprint if service is not None and service.current is not None else None
            refused = service.refused_fingerprint if service is not None else None
            if fingerprint in (current, refused):
                continue
            async with self._lock:
                try:
                    await self._update(self._add(name, source), source)
                except (Refused, _Changed):
                    pass

    async def _watch(self) -> None:
        interval = self.config.watch_interval_s
        while not self.stopping:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or an odd file system: say it, keep serving and watching
                log.exception("watching %s failed: %s", self.root, first_line(exc))
