"""Debian's Chromium, headless, driven by Playwright: for the tests of pages people look at.

No browser is downloaded (never `playwright install`): Playwright drives /usr/bin/chromium,
which `make install-dev` installs from Debian's packages when it runs as root. Where Chromium
or Playwright is missing, the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("EDGECNN_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch_chromium(tmp_path_factory):
    """Yield a headless Chromium (a Playwright Browser) with an empty profile, or skip saying why."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[dev]'")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium at /usr/bin/chromium: as root, apt-get install chromium (make install-dev does it)")
    with sync_playwright() as playwright:
        # Playwright gives every launch a new empty --user-data-dir of its own
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=list(CHROMIUM_FLAGS))
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A page that records console errors, page errors and every URL it asked for."""

    def __init__(self, page):
        self.page, self.errors, self.requests = page, [], []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
