"""Benchmarks and checks for edgecnn (tools/README.md lists them); none runs in the test suite.

Each tool is a module of this package, run from the repository root as `python -m tools.NAME`
(for example `.venv/bin/python -m tools.loadtest MODEL`), so tools import one another
(`from tools.loadtest import start_server`) and the test helpers (`from tests.conftest import
make_linear_onnx`) as packages, and no file edits `sys.path`. Two are plain scripts run by path:
`device_imports.py` (run inside a fresh venv, where the checkout's `edgecnn` must not shadow the
installed one) and `arm64/check.py` (`make test-arm64`); neither imports another tool.
"""
