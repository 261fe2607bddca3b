"""onnxruntime's optimized graph of a model, kept per model file and machine, so a CPU session opens from it.

Opening a CPU session is mostly onnxruntime rewriting the graph (fusions, constant folding, for
float models the blocked NCHWc layout of this CPU's vector width) and copying the weights into
fresh memory. Every process that opens the model pays it again: `predict`, a restarted `serve`,
each Ray actor of `predict --ray`. For ResNet50 FP32 in a fresh process that is 0.2 s.

So the first CPU session of a model file writes the graph onnxruntime made
(`optimized_model_filepath`) into the cache, its weights in a file beside it, and later sessions
open that graph with the optimizations already done, the weights memory-mapped from the page
cache instead of parsed and copied: ResNet50 FP32 opens in under 0.01 s, its first run a little
slower (the pages come in as it reads them), then the same speed and bit-for-bit the same answers
(`tools/bench_session_open.py`, docs/PERFORMANCE.md).

An entry is for one model file as it is now (its real path, size, inode, modification and change
times), one onnxruntime version, one CPU (the machine and its feature flags: the graph holds this
CPU's layout, as onnxruntime warns) and one optimization level. Anything else is a miss, never a
wrong graph. Only CPU-only sessions use it (another provider compiles its own), and only for
models from MIN_MODEL_BYTES (smaller ones open in milliseconds anyway) to MAX_MODEL_BYTES. Entries are replaced, never rewritten in place: a session still
mapping an old weights file keeps reading the old bytes.

`EDGECNN_SESSION_CACHE=off` turns it off; `EDGECNN_SESSION_CACHE=DIR` keeps it in DIR instead of
~/.cache/edgecnn/sessions. At most MAX_ENTRIES entries and MAX_BYTES in all are kept, the least
recently opened go first.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from pathlib import Path
from typing import Callable

from edgecnn.files import cache_home
from edgecnn.machine import cpuinfo

ENV = "EDGECNN_SESSION_CACHE"
OFF_WORDS = ("off", "0", "no", "false")
MAX_ENTRIES = 16
MAX_BYTES = 2 << 30
MAX_MODEL_BYTES = 1 << 30
MIN_MODEL_BYTES = 1 << 20  # smaller models open in milliseconds either way
INLINE_BYTES = 1024  # smaller weights stay in the graph file
STALE_SECONDS = 600  # a writer's lock older than this was left by a process that died
FORMAT = 1  # bump when what an entry holds changes

# what Runner.session_cache says
HIT, WRITTEN, OFF = "hit", "written", "off"
MISSED = "miss (another process is writing it)"
NOT_WRITTEN = "miss (onnxruntime wrote no graph)"


def cache_dir() -> Path | None:
    """Where entries are kept; None when EDGECNN_SESSION_CACHE turns the cache off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF_WORDS:
        return None
    return Path(value).expanduser() if value else cache_home() / "sessions"


def entry_path(folder: Path, model: Path, level: str, ort_version: str) -> Path | None:
    """The entry for `model` opened at optimization `level` by this onnxruntime on this CPU;
    None when the model is not cached (unreadable, under MIN_MODEL_BYTES, over MAX_MODEL_BYTES)."""
    try:
        real = model.resolve()
        st = real.stat()
    except OSError:
        return None
    if not MIN_MODEL_BYTES <= st.st_size <= MAX_MODEL_BYTES:
        return None
    cpu, flags = cpuinfo()
    key = "\n".join(
        map(
            str,
            (
                FORMAT,
                real,
                st.st_size,
                st.st_ino,
                st.st_mtime_ns,
                st.st_ctime_ns,
                level,
                ort_version,
                platform.machine(),
                cpu,
                " ".join(sorted(flags)),
            ),
        )
    )
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def open_cached(create: Callable[[Path, object], object], model: Path, opts, ort, level: str) -> tuple[object, str]:
    """(session, what the cache did): `create(path, opts)` makes an onnxruntime session.

    A hit opens the entry with the graph optimizations off (they are done in it); a miss opens
    `model` as usual and writes the graph onnxruntime made as the entry, unless another process
    is writing it. A damaged entry is removed and the model opened as usual. `opts` is used once.
    """
    folder = cache_dir()
    entry = None if folder is None else entry_path(folder, model, level, ort.__version__)
    if entry is None:
        return create(model, opts), OFF
    if entry.is_file():
        disabled = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        wanted, opts.graph_optimization_level = opts.graph_optimization_level, disabled
        try:
            session = create(entry, opts)
        except Exception:  # a damaged or foreign entry: the model itself decides what is wrong
            _drop(entry)
            opts.graph_optimization_level = wanted
        else:
            _touch(entry)
            return session, HIT
    lock = entry.with_suffix(".lock")
    refused = _take(lock)
    if refused:
        return create(model, opts), refused
    token = f"{os.getpid():x}{time.time_ns():x}"
    partial = entry.with_suffix(f".{token}.part")
    weights = entry.with_suffix(f".{token}.weights")  # a new file each time: never one a session maps
    written = False
    try:
        opts.optimized_model_filepath = str(partial)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights.name)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(INLINE_BYTES)
        )
        session = create(model, opts)
        if partial.is_file():
            os.replace(partial, entry)
            written = True
            for old in _files_of(entry)[1:]:  # a replaced entry's weights (unlinked: still readable where mapped)
                if old != weights:
                    _remove(old)
            _evict(folder)
    finally:
        _remove(partial)
        if not written:
            _remove(weights)
        _remove(lock)
    return session, WRITTEN if written else NOT_WRITTEN


def _take(lock: Path) -> str | None:
    """Become the one writer of an entry (a lock file made with O_EXCL); else why not."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_SECONDS:
            _remove(lock)
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return None
    except FileExistsError:
        return MISSED
    except OSError as exc:
        return f"miss (cannot write {lock.parent}: {exc.strerror or exc})"


def _evict(folder: Path) -> None:
    """Keep the MAX_ENTRIES most recently opened entries, at most MAX_BYTES in all; remove the
    weights of writers that died before their graph was in place."""
    try:
        graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        kept, total = 0, 0
        for graph in graphs:
            size = sum(p.stat().st_size for p in _files_of(graph))
            if kept < MAX_ENTRIES and total + size <= MAX_BYTES:
                kept, total = kept + 1, total + size
            else:
                _drop(graph)
        for weights in folder.glob("*.weights"):
            key = weights.name.split(".", 1)[0]
            if not (folder / f"{key}.onnx").exists() and time.time() - weights.stat().st_mtime > STALE_SECONDS:
                _remove(weights)
    except OSError:  # another process removed a file meanwhile: its next write tidies again
        return


def _files_of(graph: Path) -> list[Path]:
    """An entry's files: its graph and every weights file of its key."""
    return [graph, *graph.parent.glob(f"{graph.stem}.*.weights")]


def _drop(graph: Path) -> None:
    """Remove an entry (unlinked, a weights file stays readable to the sessions mapping it)."""
    for path in _files_of(graph):
        _remove(path)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
