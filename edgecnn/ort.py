"""Importing onnxruntime: one place that says which extra to install and warns about two builds.

Every module that needs onnxruntime imports it through `import_onnxruntime` (this module imports
nothing of edgecnn's but its errors, so `metadata`, `runtime` and `providers` can all use it).
"""

from __future__ import annotations

import warnings

from edgecnn.errors import MissingDependency

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
