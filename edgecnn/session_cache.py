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
wrong graph: the file is opened by its real path, checked again after onnxruntime read it, and a
file changed in the last STEADY_SECONDS is not cached yet (two rewrites within one tick of the
file system clock would look the same). Only CPU-only sessions use it (another provider compiles
its own), and only for models from MIN_MODEL_BYTES (smaller ones open in milliseconds anyway) to
MAX_MODEL_BYTES, without external data of their own, optimized at a level above "disable".

One process writes an entry at a time (an flock on `<key>.lock`, let go by the kernel when a
writer dies); the others open the model as usual meanwhile. Entries are replaced, never rewritten
in place, and only the writer removes weights files: a session still mapping an old weights file
keeps reading the old bytes (on a local file system; on NFS a removed file can vanish under it,
so keep EDGECNN_SESSION_CACHE on a local disk). Writing an entry never stops a session: a full
disk or a failed write is a miss, and the model opens as usual.

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

from edgecnn.errors import first_line

try:
    import fcntl
except ImportError:  # not a POSIX system: no flock, no cache
    fcntl = None
from edgecnn.files import cache_home
from edgecnn.machine import cpuinfo

ENV = "EDGECNN_SESSION_CACHE"
OFF_WORDS = ("off", "0", "no", "false")
MAX_ENTRIES = 16
MAX_BYTES = 2 << 30
MAX_MODEL_BYTES = 1 << 30
MIN_MODEL_BYTES = 1 << 20  # smaller models open in milliseconds either way
INLINE_BYTES = 1024  # smaller weights stay in the graph file
STEADY_SECONDS = 2.0  # a model file changed more recently is not cached yet
FORMAT = 2  # bump when what an entry holds changes (2: weights in a file beside the graph; 1 kept them inline)

# what Runner.session_cache says
HIT, WRITTEN, OFF = "hit", "written", "off"
MISSED = "miss (another process is writing it)"


def cache_dir() -> Path | None:
    """Where entries are kept; None when EDGECNN_SESSION_CACHE turns the cache off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF_WORDS:
        return None
    return Path(value).expanduser() if value else cache_home() / "sessions"


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def entry_path(folder: Path, model: Path, level: str, ort_version: str, identity: tuple | None = None) -> Path:
    """The entry for the model file at `model` (a real path) as `identity` (its `_identity`, read
    now if not given) opened at optimization `level` by this onnxruntime on this CPU."""
    cpu, flags = cpuinfo()
    identity = _identity(model) if identity is None else identity
    key = "\n".join(
        map(str, (FORMAT, model, *identity, level, ort_version, platform.machine(), cpu, " ".join(sorted(flags))))
    )
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def not_cached(model: Path, level: str, external_data: bool) -> str | None:
    """Why a session of `model` does not use the cache (a Runner.session_cache state), or None."""
    if cache_dir() is None:
        return OFF
    if fcntl is None:
        return "not cached (no file locks on this system)"
    if level == "disable":
        return "not cached (graph optimization disabled)"
    if external_data:
        return "not cached (the model keeps weights in other files)"
    try:
        size = model.stat().st_size
    except OSError:
        return "not cached (the model file cannot be read)"
    if size < MIN_MODEL_BYTES:
        return f"not cached (under {MIN_MODEL_BYTES >> 20} MiB: opens fast anyway)"
    if size > MAX_MODEL_BYTES:
        return f"not cached (over {MAX_MODEL_BYTES >> 30} GiB)"
    return None


def open_cached(
    create: Callable[[Path, object], object], model: Path, opts, ort, level: str, external_data: bool = False
) -> tuple[object, str]:
    """(session, what the cache did): `create(path, opts)` makes an onnxruntime session.

    A hit opens the entry with the graph optimizations off (they are done in it). A miss opens
    the model as usual and, as the one writer of the entry, writes the graph onnxruntime made; a
    write that fails is only a miss. A model error is raised by opening the model itself, never
    by the cache. `opts` is used once.
    """
    reason = not_cached(model, level, external_data)
    if reason:
        return create(model, opts), reason
    real = model.resolve()
    identity = _identity(real)  # one look: the key, the steady check and the check after the write
    entry = entry_path(cache_dir(), real, level, ort.__version__, identity)
    tried = entry.is_file()
    if tried:
        session = _open_entry(create, entry, opts, ort)
        if session is not None:
            return session, HIT
    if time.time() - identity[2] / 1e9 < STEADY_SECONDS:
        return create(real, opts), f"miss (the model file changed in the last {STEADY_SECONDS:g} s)"
    lock_path = entry.with_suffix(".lock")
    lock = _lock(lock_path)
    if isinstance(lock, str):
        return create(model, opts), lock
    try:
        if not tried and entry.is_file():  # another writer finished between the look and the lock
            session = _open_entry(create, entry, opts, ort)
            if session is not None:
                return session, HIT
        return _write(create, real, identity, entry, opts)
    finally:
        if not entry.is_file():
            _remove(lock_path)  # no entry to guard (a process that opened it meanwhile just misses)
        os.close(lock)


def _open_entry(create, entry: Path, opts, ort):
    """A session of the entry, or None where it does not open (damaged, or replaced while read:
    the writer then rewrites it)."""
    wanted = opts.graph_optimization_level
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = create(entry, opts)
    except Exception:  # noqa: BLE001 (onnxruntime raises its own types; the model decides below)
        opts.graph_optimization_level = wanted
        return None
    try:
        os.utime(entry)  # most recently opened: evicted last
    except OSError:
        pass
    return session


def _write(create, real: Path, before: tuple, entry: Path, opts) -> tuple[object, str]:
    """Open `real` as usual, writing its optimized graph as `entry` (the lock held); committed only
    if the file is still `before`, the identity the entry's key was made from."""
    token = f"{os.getpid():x}{time.time_ns():x}"
    partial = entry.with_suffix(f".{token}.part")
    weights = entry.with_suffix(f".{token}.weights")  # a new file each time: never one a session maps
    opts.optimized_model_filepath = str(partial)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights.name)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(INLINE_BYTES))
    try:
        session = create(real, opts)
    except Exception as exc:  # noqa: BLE001 (writing the graph failed, or the model is bad: try without writing)
        _remove(partial)
        _remove(weights)
        opts.optimized_model_filepath = ""
        session = create(real, opts)  # a bad model raises here, as without the cache
        return session, f"miss (cannot write the entry: {first_line(exc)})"
    committed = False
    try:
        if not partial.is_file():
            return session, "miss (onnxruntime wrote no graph)"
        if _identity(real) != before:
            return session, "miss (the model file changed while it was read)"
        size = partial.stat().st_size + (weights.stat().st_size if weights.exists() else 0)
        if size > MAX_BYTES:
            return session, f"miss (the entry, {size >> 20} MiB, is larger than the cache)"
        os.replace(partial, entry)
        committed = True
    except OSError as exc:
        return session, f"miss (cannot write the entry: {exc.strerror or exc})"
    finally:
        _remove(partial)
        if not committed:
            _remove(weights)
    for old in _weights_of(entry):  # a replaced entry's (unlinked: still mapped)
        if old != weights:
            _remove(old)
    _evict(entry.parent)
    return session, WRITTEN


def _lock(path: Path) -> int | str:
    """An open file descriptor holding the entry's write lock, or why there is none."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        return f"miss (cannot write {path.parent}: {exc.strerror or exc})"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return MISSED
    return fd


def _evict(folder: Path) -> None:
    """Keep the MAX_ENTRIES most recently opened entries, at most MAX_BYTES in all (the writer
    calls it, holding its own entry's lock; an entry being written by another has no graph yet)."""
    try:
        graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        kept, total = 0, 0
        for graph in graphs:
            files = [graph, *_weights_of(graph)]
            size = sum(p.stat().st_size for p in files)
            if kept < MAX_ENTRIES and total + size <= MAX_BYTES:
                kept, total = kept + 1, total + size
                continue
            fd = _lock(graph.with_suffix(".lock"))
            if isinstance(fd, str):  # its writer is at work: next time
                continue
            try:
                for path in [*files, graph.with_suffix(".lock")]:
                    _remove(path)
            finally:
                os.close(fd)
    except OSError:  # another process removed a file meanwhile: the next write tidies again
        return


def _weights_of(graph: Path) -> list[Path]:
    """The weights files of an entry's key, beside its graph."""
    return list(graph.parent.glob(f"{graph.stem}.*.weights"))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
