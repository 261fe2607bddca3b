"""Import TensorFlow without its start-up chatter, for `train` and `export` only.

TensorFlow 2.17+ logs through absl before its own log-level setting applies, so even with
``TF_CPP_MIN_LOG_LEVEL=3`` ``import tensorflow`` prints lines such as
``I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.``
(tensorflow/tensorflow#100442). `import_tensorflow` sets the variables before the first import
and, during that import only, reads what the C++ side writes to stderr and writes back every line
that is not a C++ log line below the chosen level (``TF_CPP_MIN_LOG_LEVEL``, default 3: only FATAL
lines stay); anything else written there stays, and Python warnings are untouched. Set
``TF_CPP_MIN_LOG_LEVEL=0`` to see everything. The device path never calls this (it never imports TensorFlow).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

from edgecnn.errors import require

# TensorFlow's scale: 0 all, 1 no INFO, 2 no WARNING either, 3 no ERROR either. 3, as training has always
# used: on a machine without a GPU, TensorFlow logs "failed call to cuInit" as an ERROR at level 2.
DEFAULT_LEVEL = "3"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# absl / glog: "I0000 00:00:1795581650.289872    6183 cudart_stub.cc:31] ..."; TF's own older format:
# "2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ..."
_CPP_LOG = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:[\d.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )\S+:\d+\]")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def import_tensorflow():
    """Import and return the `tensorflow` module quietly (a one-line `MissingDependency` without it)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # reproducible numerics, as training has always used
    with _filtered_stderr(_level()):
        tf = require("tensorflow", "train")
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(("info", "warning", "error", "fatal")[min(_level(), 3)])
    return tf


def _level() -> int:
    value = os.environ.get("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
    return int(value) if value.isdigit() else int(DEFAULT_LEVEL)


def hidden(line: str, level: int) -> bool:
    """Whether a stderr line written during the import is a C++ log line below `level` (or absl's preamble)."""
    if line.rstrip("\n") == _ABSL_PREAMBLE:
        return True
    match = _CPP_LOG.match(line)
    return bool(match) and _SEVERITY[match.group(1) or match.group(2)] < level


@contextlib.contextmanager
def _filtered_stderr(level: int) -> Iterator[None]:
    """Capture file descriptor 2 (where C++ writes) and write back the lines that are not `hidden`."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not hidden(line, level))
            if kept:
                os.write(2, kept.encode("utf-8"))
