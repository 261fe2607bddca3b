"""The live server's HTTP API exercised by schemathesis from the server's own /openapi.json: no
5xx for any request the schema allows, and every response matches the schema.

schemathesis' Python API drives Hypothesis here directly (one strategy per operation), rather than
through its pytest plugin, so the server is started once for all operations.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from conftest import make_linear_onnx
from test_serve import ServerProcess

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import checks  # noqa: E402

# Everything but "positive data acceptance": a request can match the schema and still be wrong for
# this model (a data list that does not fill its shape, another input name): that is a 400, which
# the schema lists. What must never happen is checked.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]

EXAMPLES = 30  # per operation in CI (tools/fuzz.py's counts are for the library-level fuzzers)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    srv = ServerProcess(make_linear_onnx(root / "tiny" / "model.onnx"), root, "--max-queue-delay-ms", "1")
    yield srv
    assert srv.stop() == 0, srv.stderr_path.read_text()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_gets_a_5xx_and_every_response_matches_the_schema(server, mode):
    """positive: requests the schema allows; negative: requests that break it (wrong types,
    missing fields, bad query values), which must be refused with a 4xx, never a 5xx."""
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    calls: dict[str, int] = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"

        @given(operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            calls[label] = calls.get(label, 0) + 1
            case.call_and_validate(checks=CHECKS + ([checks.negative_data_rejection] if mode == "negative" else []))

        try:
            check()
        except Unsatisfiable:  # negative: nothing to break in a GET without parameters
            assert mode == "negative" and operation.method.upper() == "GET", label
    RUNS[mode] = calls
    print(mode, sum(calls.values()), "requests:", calls)
    assert calls.get("POST /v2/models/tiny/infer", 0) >= EXAMPLES // 2, calls
    assert mode == "negative" or all(calls.get(f"{op.method.upper()} {op.path}", 0) >= 1 for op in operations), calls


RUNS: dict[str, dict[str, int]] = {}  # requests sent per operation (docs/RELIABILITY.md)
