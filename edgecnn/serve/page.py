"""The try-it page `edgecnn serve` answers at ``GET /`` (``--no-ui`` turns it off).

One static file, ``edgecnn/serve/page.html`` (package data, a few KB, no external assets), with the
model's name, classes and input size filled in once at start-up: the same page for every
client. It posts the chosen image to the existing ``/v2/models/{name}/classify`` endpoint as
the body with the file's content type, so it gets exactly the limits and errors every client
gets, and shows the top-k labels, the server's time (its ``Server-Timing`` header) and the
round trip. A Content-Security-Policy built from the page's own script and style lets it run
nothing else and reach nothing but this server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources

PLACEHOLDER = "__EDGECNN_MODEL__"


@dataclass(frozen=True)
class Page:
    body: bytes
    headers: dict


def page(name: str, meta, provider: str, top_k: int) -> Page:
    """The page for model `name` with `meta` (its `ModelMetadata`) running on `provider`."""
    template = resources.files("edgecnn.serve").joinpath("page.html").read_text(encoding="utf-8")
    (h, w), classes = meta.image_size, list(meta.class_names)
    info = {
        "name": name,
        "classes": classes,
        "height": h,
        "width": w,
        "channels": meta.channels,
        "variant": meta.variant,
        "provider": provider,
        "top_k": max(1, min(top_k, len(classes))),
    }
    # JSON inside <script>: no "</script>" or "<!--" can close or confuse the data block
    data = json.dumps(info).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    html = template.replace(PLACEHOLDER, data)
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    policy = (
        "default-src 'none'; " + f"script-src {_hashes(scripts)}; style-src {_hashes(styles)}; "
        "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Page(html.encode("utf-8"), headers)


def _hashes(blocks: list[str]) -> str:
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)
