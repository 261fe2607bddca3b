"""Atomic file writes: a crash leaves the previous file intact, never half a file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgecnn.errors import EdgecnnError


def cache_home() -> Path:
    """edgecnn's folder of things it can make again: $XDG_CACHE_HOME/edgecnn, else ~/.cache/edgecnn."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecnn"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    Works for files and for directories (a directory target is swapped as a whole).
    On an exception the temporary is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = _free_name_beside(path)
    try:
        yield tmp
        if tmp.is_dir():
            _fsync_tree(tmp)
        try:
            if tmp.is_dir() and path.is_dir():
                swap_paths(tmp, path)  # `path` is the new folder, `tmp` the old one (removed below)
            else:
                os.replace(tmp, path)
        except OSError as exc:  # a folder in the way of a file, an immutable file
            raise EdgecnnError(f"cannot write {path}: {exc.strerror or exc}; choose a path you can write to") from None
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def swap_paths(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Exchange two paths in one step (Linux renameat2 RENAME_EXCHANGE): no moment without `b`.

    Elsewhere (or on a file system without it) two renames, `b` aside then `a` in its place.
    """
    a, b = Path(a), Path(b)
    if _rename_exchange(a, b):
        return
    old = b.with_name(f".{b.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(b, old)
    os.replace(a, b)
    os.replace(old, a)


def replace_files_together(folder: str | os.PathLike, new: dict[str, Path], remove=()) -> None:
    """Give `folder` the files `new` (name -> a file on the same file system, moved in) and take
    away the names in `remove`, as one step: after a crash at any moment the folder holds either
    all of its old files or all of the new set, never a mix.

    The new set is built in a folder beside `folder` (every other entry hard-linked, so nothing is
    copied), flushed, and exchanged with `folder` in one rename (`swap_paths`); the old set is then
    removed. Entries that hold a source of `new` (a scratch folder inside `folder`) are left out.
    """
    folder = Path(folder).resolve()
    sources = [Path(src).resolve() for src in new.values()]
    staging = _free_name_beside(folder.with_name(f"{folder.name}.new"))
    try:
        staging.mkdir()
        for entry in folder.iterdir():
            if entry.name in new or entry.name in remove or any(entry == s or entry in s.parents for s in sources):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
            elif entry.is_symlink():
                os.symlink(os.readlink(entry), staging / entry.name)
            else:
                _link_or_copy(entry, staging / entry.name)
        for name, src in new.items():
            os.replace(src, staging / name)
        _fsync_tree(staging)
        swap_paths(staging, folder)  # `folder` is the new set, `staging` the old one
        _fsync_dir(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links (FAT on a USB stick)
        shutil.copy2(src, dst)


def _rename_exchange(a: Path, b: Path) -> bool:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk before it is renamed into place."""
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))


@contextlib.contextmanager
def scratch_in(folder: str | os.PathLike, prefix: str, why: str) -> Iterator[Path]:
    """A temporary folder inside `folder` (removed after; on the same file system, so its files can be
    renamed into place); a one-line error when `folder` cannot be written, saying `why` it must be."""
    try:
        scratch = tempfile.TemporaryDirectory(prefix=prefix, dir=folder, ignore_cleanup_errors=True)
    except OSError as exc:
        raise EdgecnnError(f"cannot write into {folder}: {exc.strerror or exc}; {why}") from None
    with scratch as name:
        yield Path(name)


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Fail early, before long work, when `path` (a file; with `folder`, a folder replaced whole by
    `atomic_path`) could not be written there (its parent folder is created)."""
    if Path(path).is_dir() and not folder:
        raise EdgecnnError(f"cannot write {path}: it is a folder; give a file name")
    if folder and os.path.ismount(path):
        raise EdgecnnError(
            f"cannot write {path}: a mount point cannot be replaced as a whole; give a folder inside it, such as {Path(path) / 'model'}"
        )
    _free_name_beside(Path(path))
    return Path(path)


def _free_name_beside(path: Path) -> Path:
    """Create `path`'s folder and return an unused temporary name in it; a one-line error if we can't write there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EdgecnnError(f"cannot write {path}: {exc.strerror or exc}; choose a folder you can write to") from None
    os.close(fd)
    os.unlink(name)
    return Path(name)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=jsonable) + "\n")


def jsonable(obj):
    """`json.dumps`' `default=`: NumPy scalars and arrays as numbers and lists, paths as strings."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
