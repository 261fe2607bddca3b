"""A device install carries no plotting library: the device path imports neither TensorFlow nor matplotlib
(`profile --plot` draws SVG in plain Python)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import make_image_folder, make_linear_onnx

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf2onnx", "matplotlib")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_linear_onnx(tmp_path_factory.mktemp("lean") / "tiny" / "model.onnx")


def test_the_cli_and_the_serving_path_import_neither_tensorflow_nor_matplotlib(model_path):
    code = (
        "import sys, edgecnn.cli, edgecnn.predict, edgecnn.profile, edgecnn.serve.server, edgecnn.report\n"
        "from edgecnn.runtime import Runner\nfrom edgecnn.serve.server import create_app, warm_up\n"
        f"r = Runner({str(model_path)!r}); warm_up(r); create_app(r)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_profile_plot_writes_its_svg_where_matplotlib_cannot_be_imported(model_path, tmp_path):
    plot = tmp_path / "p.svg"
    code = (
        "import sys\nsys.modules['matplotlib'] = None  # as on a device installed with edgecnn[cpu]\n"
        "from edgecnn.cli import app\n"
        f"sys.argv = ['edgecnn', 'profile', {str(model_path)!r}, '--plot', {str(plot)!r}, '--batch-sizes', '1',"
        " '--iterations', '3']\n"
        "app()\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert f"wrote {plot}" in done.stdout
    assert ElementTree.parse(plot).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_without_uvloop_serve_says_it_runs_on_asyncio_and_which_extra_is_faster():
    code = (
        "import sys\nsys.modules['uvloop'] = None  # as on a device installed with edgecnn[cpu]\n"
        "from edgecnn.serve.server import _http_stack\nprint(_http_stack())\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'httptools + asyncio (faster: pip install "edgecnn[uvloop]")'


def test_the_device_dependencies_leave_out_plotting_and_the_optional_event_loop():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert base == {"numpy", "pillow", "typer", "starlette", "uvicorn", "httptools"}
    assert project["optional-dependencies"]["cpu"] == ["onnxruntime>=1.24.1"]
    assert any(d.startswith("uvloop") for d in project["optional-dependencies"]["uvloop"])
    drawing = {
        extra for extra, deps in project["optional-dependencies"].items() if any("matplotlib" in d for d in deps)
    }
    assert drawing <= {"train", "dev"}  # training's PNGs; `profile --plot` needs no plotting extra on a device


# Hard requirements of packages the device path imports, which it never imports itself; each
# names the imported package that requires it. Nothing else may sit in a device install unused.
REQUIRED_BUT_NOT_IMPORTED = {
    "protobuf": "onnxruntime",  # for onnxruntime's tools and quantization, not inference
    "packaging": "onnxruntime",
    "flatbuffers": "onnxruntime",
    "h11": "uvicorn",  # uvicorn's pure-Python parser; serve runs on httptools
    "idna": "anyio",
    "shellingham": "typer",  # detects the shell for --install-completion
    "pygments": "rich",  # rich's syntax highlighting; edgecnn prints no code
    "markdown-it-py": "rich",  # rich's Markdown; edgecnn's help is not Markdown
    "mdurl": "markdown-it-py",
}


def _requires(distribution: str, extras=()) -> set[str]:
    """The names `distribution` requires with `extras` (markers evaluated here)."""
    from importlib.metadata import distribution as dist
    from packaging.requirements import Requirement

    names = set()
    for text in dist(distribution).requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            names.add(req.name.lower().replace("_", "-"))
    return names


def _closure(distribution: str, extras=()) -> set[str]:
    """Every distribution pip installs for `distribution[extras]` (as installed in this environment)."""
    seen, todo = set(), list(_requires(distribution, extras))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _requires(name)
    return seen


def test_every_package_of_the_cpu_install_is_imported_by_the_device_path_or_required_by_one_that_is(tmp_path):
    model = make_linear_onnx(
        tmp_path / "tiny" / "model.onnx", image_size=(16, 16), channels=3, classes=("circle", "square")
    )
    images = make_image_folder(tmp_path / "images", per_class=3)
    done = subprocess.run(
        [sys.executable, "tools/device_imports.py", str(model), str(images)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    imported = set(json.loads(done.stdout)["imported"])
    assert {
        "edgecnn",
        "onnxruntime",
        "numpy",
        "pillow",
        "uvicorn",
        "starlette",
        "httptools",
        "typer",
        "rich",
    } <= imported

    installed = _closure("edgecnn", extras=("cpu",))
    unused = installed - imported
    assert unused <= set(REQUIRED_BUT_NOT_IMPORTED), f"installed by edgecnn[cpu] but never imported: {unused}"
    for name in unused:  # required by an imported package, or by one that is in turn (mdurl -> markdown-it-py -> rich)
        requirer = REQUIRED_BUT_NOT_IMPORTED[name]
        assert name in _requires(requirer), f"{name}: not a requirement of {requirer}"
        chain = [name, requirer]
        while chain[-1] not in imported:
            assert chain[-1] in REQUIRED_BUT_NOT_IMPORTED, f"{name}: required by {' <- '.join(chain)}, none imported"
            chain.append(REQUIRED_BUT_NOT_IMPORTED[chain[-1]])
    assert not installed & {"matplotlib", "tensorflow", "onnx"}
