"""HTML building blocks for `edgecnn report`: escaped tables, key-value tables, inline PNGs, the style.

Every value is escaped here, so class names and file names from a user's folders show as text.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape

import numpy as np

from edgecnn.charts import CHART_CSS

THUMBNAIL_SIDE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    scale = max(1, -(-THUMBNAIL_SIDE // max(img.width, img.height)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return escape(json.dumps(value, default=str))
    return escape(str(value))


def num(value, fmt: str) -> str:
    return "" if not isinstance(value, (int, float)) else format(value, fmt)


def pct(value) -> str:
    return num(value, ".2%")


def mb(value) -> str:
    return "" if not isinstance(value, (int, float)) else f"{value / 1e6:.2f}"


def table(header, rows, highlight=None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(
        f"<tr{' class=chosen' if highlight is not None and highlight(i) else ''}>"
        + "".join(f"<td>{cell(v)}</td>" for v in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def generic_table(items: list[dict], chosen=None) -> str:
    """A table of whatever keys the dicts have (in order of first appearance)."""
    keys: list[str] = []
    for item in items:
        keys += [k for k in item if k not in keys]
    rows = [[item.get(k) for k in keys] for item in items]

    def is_chosen(i):
        return isinstance(chosen, dict) and all(
            items[i].get(k) == v for k, v in chosen.items() if k in items[i] and not isinstance(v, (dict, list))
        )

    return table(keys, rows, is_chosen if chosen else None)


def key_values(rows) -> str:
    return (
        "<table class='kv'>"
        + "".join(f"<tr><th>{escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in rows if v not in (None, ""))
        + "</table>"
    )


def machine_table(machine: dict) -> str:
    flat = []
    for key, value in machine.items():
        if isinstance(value, dict):
            flat += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            flat.append((key, ", ".join(map(str, value)) if isinstance(value, list) else value))
    return key_values(flat)


CSS = (
    """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 40px;color:#222}
h1{margin:18px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:30px}
nav a{margin-right:10px}nav a.empty{color:#999}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}table.kv th,table.kv td,td:first-child{text-align:left}tr.chosen td{background:#e6f2e6;font-weight:600}
table.confusion td{min-width:26px;text-align:center}
.missing{color:#8a5a00;background:#fff6e0;padding:6px 10px;border-radius:4px}
.poor{color:#fff;background:#b3261e;padding:6px 10px;border-radius:4px}.learned{color:#1b5e20}code{background:#eee;padding:1px 4px}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}.thumb{margin:0;text-align:center;font-size:12px;width:110px}
.thumb img{image-rendering:pixelated;border:1px solid #ccc;max-width:100px}
"""
    + CHART_CSS
)  # the charts' own style (edgecnn.charts), as in `profile --plot`'s SVG file
