"""The try-it page of `edgecnn serve`, in Debian's Chromium against a live server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from browser import Watched, launch_chromium
from conftest import make_linear_onnx
from test_serve import ServerProcess, in_process

from edgecnn.predict import PredictConfig, predict
from edgecnn.runtime import Runner, RunnerConfig
from edgecnn.serve.config import ServeConfig
from edgecnn.serve.server import create_app

CLASSES = ("zero-ish", "one-ish", "<b>three</b>")  # a name with markup: the page must show it as text


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_linear_onnx(tmp_path_factory.mktemp("ui") / "tiny" / "model.onnx", classes=CLASSES, seed=3)


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    proc = ServerProcess(model_path, tmp_path_factory.mktemp("ui-logs"), "--max-body-bytes", "65536")
    yield proc
    assert proc.stop() == 0, proc.stderr_path.read_text()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from launch_chromium(tmp_path_factory)


@pytest.fixture
def page(browser, server):
    context = browser.new_context()
    watched = Watched(context.new_page())
    watched.page.goto(server.base + "/")
    yield watched
    context.close()


@pytest.fixture(scope="module")
def digit_files(digits_data) -> list[Path]:
    root = digits_data
    return [sorted((root / d).iterdir())[0] for d in ("3", "7", "9")]


def upload(page, path: Path | None = None, name: str = "", mime: str = "", data: bytes = b""):
    if path is not None:
        page.set_input_files("#file", str(path))
    else:
        page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.locator("#status").filter(has_not_text="classifying").wait_for()


def _addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x…", text)


# -- the page itself ----------------------------------------------------------------------------
def test_the_page_is_small_self_contained_and_the_same_for_every_client(server):
    first = httpx.get(server.base + "/")
    second = httpx.get(server.base + "/", headers={"User-Agent": "someone else", "Accept-Language": "de"})
    assert first.status_code == 200 and first.headers["content-type"] == "text/html; charset=utf-8"
    assert first.content == second.content
    assert len(first.content) < 8000
    html = first.text
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<script src" not in html
    policy = first.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe" not in policy
    assert first.headers["x-content-type-options"] == "nosniff"
    assert "&lt;b&gt;" not in html and "\\u003cb\\u003ethree" in html  # the class name travels as JSON data, escaped


def test_no_ui_turns_the_page_off_and_everything_else_stays(model_path):
    runner = Runner(model_path, RunnerConfig(device="cpu"))

    async def scenario(http):
        return (await http.get("/")).status_code, (await http.get("/v2/models/tiny")).status_code

    assert asyncio.run(in_process(create_app(runner, ServeConfig(ui=False)), scenario)) == (404, 200)
    assert asyncio.run(in_process(create_app(runner, ServeConfig()), scenario)) == (200, 200)


def test_the_page_adds_no_way_to_write_anything(server):
    assert httpx.post(server.base + "/", content=b"x").status_code == 405
    assert httpx.put(server.base + "/", content=b"x").status_code == 405


# -- in the browser -----------------------------------------------------------------------------
def test_the_page_shows_the_model_name_classes_and_input_size(page):
    assert page.page.locator("#name").inner_text() == "tiny"
    about = page.page.locator("#about").inner_text()
    assert "3 classes" in about and "<b>three</b>" in about and "8x8x1" in about
    assert page.errors == []


def test_an_uploaded_digit_gets_the_same_top_labels_as_edgecnn_predict(page, model_path, digit_files):
    for path in digit_files:
        upload(page.page, path)
        rows = page.page.locator("#results .row")
        shown = [
            (rows.nth(i).locator(".label").inner_text(), rows.nth(i).locator(".p").inner_text())
            for i in range(rows.count())
        ]
        expected = (
            predict(PredictConfig(model=model_path, inputs=(path,), top_k=3, runner=RunnerConfig(device="cpu")))
            .rows[0]
            .top
        )
        assert shown == [(label, f"{100 * p:.1f}%") for label, p in expected], path
        assert page.page.locator("#error").inner_text() == ""
        status = page.page.locator("#status").inner_text()
        assert status.startswith(f"{path.name}: server ") and " ms, round trip " in status
        assert page.page.locator("#preview").evaluate("img => img.naturalWidth") == 8
    assert page.errors == []
    assert all(url.startswith(page.page.url.rstrip("/")) or url.startswith("blob:") for url in page.requests), (
        page.requests
    )


def test_an_image_dropped_on_the_drop_zone_is_classified_too(page, model_path, digit_files):
    path = digit_files[1]
    transfer = page.page.evaluate_handle(
        "([bytes, name]) => { const t = new DataTransfer();"
        " t.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'})); return t; }",
        [list(path.read_bytes()), path.name],
    )
    page.page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.page.locator("#status").filter(has_text=f"{path.name}: server").wait_for()
    expected = (
        predict(PredictConfig(model=model_path, inputs=(path,), top_k=3, runner=RunnerConfig(device="cpu"))).rows[0].top
    )
    assert page.page.locator("#results .row .label").first.inner_text() == expected[0][0]
    assert page.errors == []


def test_the_server_says_where_the_page_is(server):
    assert f"try it in a browser: {server.base}/" in server.stdout_path.read_text()


def test_a_non_image_shows_the_servers_own_error(page, server):
    data = b"these are notes, not a picture\n"
    answer = httpx.post(
        server.base + "/v2/models/tiny/classify?top_k=3", content=data, headers={"content-type": "text/plain"}
    )
    assert answer.status_code >= 400
    upload(page.page, name="notes.txt", mime="text/plain", data=data)
    # the same message, up to the memory address PIL names in it
    assert _addresses(page.page.locator("#error").inner_text()) == _addresses(answer.json()["error"])
    assert page.page.locator("#status").inner_text().startswith(f"HTTP {answer.status_code} ")
    assert page.page.locator("#results .row").count() == 0


def test_a_body_over_the_limit_shows_the_servers_413_message(page):
    upload(page.page, name="big.png", mime="image/png", data=b"\x89PNG" + b"\0" * 70_000)
    assert page.page.locator("#status").inner_text().startswith("HTTP 413 ")
    assert "--max-body-bytes" in page.page.locator("#error").inner_text()


def test_without_chromium_the_browser_tests_skip_and_say_why(monkeypatch, tmp_path_factory):
    import browser as browser_module

    monkeypatch.setattr(browser_module, "chromium_path", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="no Chromium at /usr/bin/chromium"):
        next(launch_chromium(tmp_path_factory))
