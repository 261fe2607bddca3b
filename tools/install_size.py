"""How big a device install of edgecnn is, and whether the device path uses all of it.

For each install asked for (default: `edgecnn[cpu]`), makes a fresh venv, upgrades its pip,
installs this checkout with those extras, measures site-packages (`du`, and each distribution
by its RECORD), then runs tools/device_imports.py in that venv (predict, profile, serve) and
marks which distributions the device path imported.

    python -m tools.install_size                      # edgecnn[cpu]
    python -m tools.install_size cpu cpu,openvino     # one venv per extras list
    python -m tools.install_size cpu --json out.json

Needs the network (or a package index) for pip; run it from the dev venv (it builds a tiny
model with onnx and a folder of PNGs for the device path).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_OWN = {"pip", "setuptools"}  # what `python -m venv` puts there before edgecnn
# ... and the top-level entries of site-packages they own, besides their packages and .dist-info
VENV_OWN_EXTRA = {"_distutils_hack", "pkg_resources", "distutils-precedence.pth"}


def _venv_own(entry: Path) -> bool:
    """pip-1.2.dist-info, setuptools/, _distutils_hack/, distutils-precedence.pth, ..."""
    return (
        entry.name in VENV_OWN_EXTRA
        or entry.name.partition("-")[0].partition(".")[0].lower() in VENV_OWN | VENV_OWN_EXTRA
    )


def _run(*args: str, **kwargs) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs).stdout


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _du_kib(path: Path) -> int:
    return int(_run("du", "-sk", str(path)).split()[0])


def _distribution_sizes(site: Path) -> dict[str, int]:
    """Bytes each installed distribution's files take, from its RECORD."""
    sizes = {}
    for record in site.glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-")[0].lower().replace("_", "-")
        total = 0
        with record.open(newline="") as f:
            for row in csv.reader(f):
                if len(row) >= 3 and row[2].isdigit():
                    total += int(row[2])
        sizes[name] = total
    return sizes


def _sample(folder: Path) -> tuple[Path, Path]:
    from tests.conftest import make_image_folder, make_linear_onnx

    model = make_linear_onnx(
        folder / "tiny" / "model.onnx", image_size=(16, 16), channels=3, classes=("circle", "square")
    )
    return model, make_image_folder(folder / "images", per_class=3)


def measure(extras: str, work: Path, model: Path, images: Path) -> dict:
    venv = work / f"venv-{extras.replace(',', '-')}"
    _run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    _run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")
    _run(python, "-m", "pip", "install", "-q", f"{ROOT}[{extras}]")
    site = _site_packages(venv)
    sizes = _distribution_sizes(site)
    imported = set(
        json.loads(_run(python, str(ROOT / "tools" / "device_imports.py"), str(model), str(images)))["imported"]
    )
    total_kib = _du_kib(site)
    own_kib = sum(_du_kib(p) for p in site.iterdir() if _venv_own(p))
    return {
        "install": f"edgecnn[{extras}]",
        "site_packages_mib": round(total_kib / 1024, 1),
        "without_pip_setuptools_mib": round((total_kib - own_kib) / 1024, 1),
        "distributions": {
            name: {"mib": round(size / 2**20, 2), "imported": name in imported}
            for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])
            if name not in VENV_OWN
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extras", nargs="*", default=["cpu"], help="extras lists, one venv each (default: cpu)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgecnn-size-") as tmp:
        work = Path(tmp)
        model, images = _sample(work)
        for extras in args.extras:
            result = measure(extras, work, model, images)
            results.append(result)
            print(
                f"{result['install']}: site-packages {result['site_packages_mib']} MiB, "
                f"{result['without_pip_setuptools_mib']} MiB without the venv's pip and setuptools"
            )
            for name, d in result["distributions"].items():
                print(f"  {name:28s} {d['mib']:8.2f} MiB  {'imported' if d['imported'] else 'NOT imported'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
