"""`train` and `export` import TensorFlow without its INFO chatter; real problems still show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgecnn.tfimport import hidden

ROOT = Path(__file__).resolve().parents[1]
CUDART = "I0000 00:00:1795581650.289872    6183 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"
OLD_FORMAT = (
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers\n"
)
CUINIT = "E0000 00:00:1795581807.604185    9631 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
FATAL = "F0000 00:00:1795581807.604185    9631 check.cc:1] Check failed: x\n"


def test_info_lines_and_the_absl_preamble_are_hidden_at_every_level_above_zero():
    for level in (1, 2, 3):
        assert hidden(CUDART, level) and hidden(OLD_FORMAT, level)
        assert hidden("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n", level)
    assert not hidden(CUDART, 0)


def test_errors_show_below_level_3_fatal_lines_and_other_text_always_show():
    assert not hidden(CUINIT, 2) and hidden(CUINIT, 3)
    assert not hidden(FATAL, 3)
    assert not hidden("Traceback (most recent call last):\n", 3)
    assert not hidden("UserWarning: something the user should read\n", 3)


def test_importing_tensorflow_prints_no_info_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = (
        "import sys\nfrom edgecnn.tfimport import import_tensorflow\ntf = import_tensorflow()\n"
        "print('imported', tf.__version__)\nprint('after the import', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 2.")
    assert done.stderr == "after the import\n", done.stderr
