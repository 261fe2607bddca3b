"""Which installed distributions the device path really imports.

Runs, in this interpreter, what a device does: `edgecnn predict` on a folder of images,
`edgecnn profile` end to end with `--plot`, and `edgecnn serve` answering `/`, `/classify` and a v2 `/infer`
(then SIGTERM, as a supervisor would stop it); then maps `sys.modules` to the distributions
that provide them. tests/test_lean_install.py compares that with what `edgecnn[cpu]` installs;
tools/install_size.py runs it in a fresh venv.

    python tools/device_imports.py MODEL.onnx IMAGE_FOLDER        # prints one JSON object
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import signal
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np


def _cli(*args: str) -> None:
    """Run `edgecnn ARGS` in this interpreter; a command that fails ends the measurement (it would
    not have walked the device path)."""
    import typer

    from edgecnn.cli import app
    from edgecnn.cli.common import EXIT_PARTIAL

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        # returns the exit code of a command that exits; EXIT_PARTIAL from predict: some images unreadable
        code = typer.main.get_command(app).main(list(args), prog_name="edgecnn", standalone_mode=False)
    if code not in (None, 0, EXIT_PARTIAL):
        raise SystemExit(f"edgecnn {args[0]} exited {code}: {err.getvalue().strip()}")


def _post(url: str, body: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    return urllib.request.urlopen(request, timeout=30).read()


def _requests(url: str, image: Path, failures: list) -> None:
    try:
        urllib.request.urlopen(f"{url}/", timeout=30).read()
        _post(f"{url}/v2/models/m/classify", image.read_bytes(), "image/png")
        meta = json.loads(urllib.request.urlopen(f"{url}/v2/models/m", timeout=30).read())
        tensor = meta["inputs"][0]
        shape = [1, *tensor["shape"][1:]]
        data = [0] * int(np.prod(shape))
        body = {"inputs": [{"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"], "data": data}]}
        _post(f"{url}/v2/models/m/infer", json.dumps(body).encode(), "application/json")
    except Exception as exc:  # reported by _serve after the server stopped
        failures.append(exc)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def _serve(model: Path, image: Path) -> None:
    from edgecnn.serve.config import ServeConfig
    from edgecnn.serve.server import serve

    failures: list = []

    def ready(info) -> None:
        threading.Thread(target=_requests, args=(info.url, image, failures), daemon=True).start()

    serve(model, ServeConfig(port=0, name="m", drain_delay_s=0.0), on_ready=ready)
    if failures:
        raise SystemExit(f"a request to the server failed: {failures[0]}")


def imported_distributions() -> list[str]:
    """The distributions (lower-case names) that provide a module imported in this interpreter."""
    providers = importlib.metadata.packages_distributions()
    names = {d for module in list(sys.modules) for d in providers.get(module.partition(".")[0], [])}
    return sorted(n.lower().replace("_", "-") for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an .onnx model with edgecnn metadata")
    parser.add_argument("images", type=Path, help="a folder of images the model can classify")
    args = parser.parse_args()
    image = next(p for p in sorted(args.images.rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    _cli("predict", str(args.model), str(args.images), "--format", "json")
    with tempfile.TemporaryDirectory() as folder:
        plot = str(Path(folder) / "profile.svg")
        _cli(
            "profile",
            str(args.model),
            "--batch-sizes",
            "1",
            "--iterations",
            "3",
            "--images",
            str(args.images),
            "--plot",
            plot,
        )
    _serve(args.model, image)
    print(json.dumps({"python": sys.executable, "imported": imported_distributions()}))


if __name__ == "__main__":
    main()
