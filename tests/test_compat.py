"""What edgecnn claims about the platforms it runs on: the Pythons, the uvicorn internals it relies on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import uvicorn.protocols.http.httptools_impl as httptools_impl

from edgecnn.serve.admission import UVICORN_TESTED, check_uvicorn
from edgecnn.errors import EdgecnnError

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_requires_python_claims_only_the_pythons_that_have_task_uncancel():
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    import asyncio

    assert hasattr(asyncio.Task, "uncancel")  # what admission.wait_or_disconnect calls


def test_uvicorn_is_pinned_to_the_versions_the_start_up_check_names():
    pins = [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"uvicorn\b", d)]
    assert pins == [f"uvicorn{UVICORN_TESTED}"]


def test_this_uvicorn_has_what_the_guarded_protocol_overrides():
    check_uvicorn()  # raises if not


def test_a_uvicorn_whose_protocol_changed_is_refused_in_one_line_naming_what_is_missing(monkeypatch):
    class Changed:  # a future HttpToolsProtocol without the hooks edgecnn overrides
        def connection_made(self, transport):
            self.transport, self.loop, self.connections = transport, None, set()

    monkeypatch.setattr(httptools_impl, "HttpToolsProtocol", Changed)
    with pytest.raises(EdgecnnError) as info:
        check_uvicorn()
    message = str(info.value)
    assert "\n" not in message and message.startswith("uvicorn ")
    assert "HttpToolsProtocol.on_response_complete" in message and "HttpToolsProtocol.cycle" in message
    assert message.endswith(f'install a tested version: pip install "uvicorn{UVICORN_TESTED}"')
    assert "HttpToolsProtocol.transport" not in message  # what it still has is not named
