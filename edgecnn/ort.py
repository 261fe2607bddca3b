"""Importing onnxruntime: one place that says which extra to install and warns about two builds.

Every module that needs onnxruntime imports it through `import_onnxruntime` (this module imports
nothing of edgecnn's but its errors, so `metadata`, `runtime` and `providers` can all use it).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

from edgecnn.errors import MissingDependency

_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def installed_onnxruntime_distributions() -> list[str]:
    """The pip distributions that provide the `onnxruntime` module."""
    return list(_found_distributions())


@functools.lru_cache(maxsize=1)
def _found_distributions() -> tuple[str, ...]:
    """The `*.dist-info` folders on sys.path, read once a process: `importlib.metadata` took
    17-29 ms for the four names, on every session opened."""
    wanted = {name.replace("-", "_"): name for name in _ORT_DISTRIBUTIONS}
    found = set()
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for item in names:
            if item.endswith(".dist-info"):
                dist = item[: -len(".dist-info")].rsplit("-", 1)[0].replace("-", "_").replace(".", "_").lower()
                if dist in wanted:
                    found.add(wanted[dist])
    return tuple(name for name in _ORT_DISTRIBUTIONS if name in found)


def import_onnxruntime():
    """Import onnxruntime, or say which extra to install; warn when two builds are installed."""
    dists = installed_onnxruntime_distributions()
    if len(dists) > 1:
        warnings.warn(
            f"both {' and '.join(dists)} are installed; they provide the same module and only one works. "
            'Uninstall both, then install one: pip install "edgecnn[cpu]" or "edgecnn[gpu]"',
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
