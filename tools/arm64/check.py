"""`make test-arm64`: edgecnn's device path on 64-bit ARM Debian, emulated. Functional only.

Builds once, and caches under ~/.cache/edgecnn-arm64, a Debian bookworm arm64 root (debootstrap),
runs it through qemu-user-static registered with binfmt_misc and chroot, installs `edgecnn[cpu]`
from this checkout inside (a wheel of it, into a venv kept in the root: later runs reinstall only
edgecnn), and checks the device path there on a model trained and exported here:

    verify --variant all   every variant file passes on the device
    predict                the host's label for every image, for every variant
    profile                runs (model only, end to end, operator profile) and writes its JSON
    serve                  /classify answers with the host's label; SIGTERM exits 0
    tune                   completes with no failed candidate and writes deploy.json

Emulated, the CPU is not an ARM core's speed: nothing this prints is a measurement.
Needs Linux, root (debootstrap, mounts, chroot), binfmt_misc, Debian's debootstrap and
qemu-user-static (installed with apt-get when missing), and on the first run the network
(Debian's mirror, PyPI). Everything it mounts lives in a private mount namespace, so nothing stays
mounted after it, however it ends.

Usage (as root; `make test-arm64` passes the venv's edgecnn):
    .venv/bin/python tools/arm64/check.py [--edgecnn .venv/bin/edgecnn] [--cache DIR] [--rebuild]
Exit codes: 0 every check passed, 1 a check failed, 2 this machine cannot run the check (one line
says what is missing and how to get it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv")  # bookworm: Python 3.11
RECIPE = f"debootstrap --arch=arm64 --variant=minbase --include={','.join(PACKAGES)} {SUITE}\n"
MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/edgecnn-venv"  # inside the root
WORK = "/mnt/edgecnn-check"  # inside the root: the model, images and logs of this run
QEMU_CPU = "cortex-a76"
CPUINFO = HERE / "cpuinfo-cortex-a76"  # one processor's block; repeated for each CPU of this machine
HOST_CA = "/etc/ssl/certs/edgecnn-host-ca.crt"  # inside the root: this machine's CA bundle, for pip
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
VARIANTS = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
IMAGES_PER_CLASS = 5
TRAIN_EPOCHS = 8
NAMESPACE_FLAG = "EDGECNN_ARM64_PRIVATE_MOUNTS"
STEP_TIMEOUT_S = 900


class Unavailable(Exception):
    """This machine cannot run the check; the message says what is missing and how to get it."""


class StepFailed(Exception):
    """A check failed; the message is one line, `tail` the output that shows why."""

    def __init__(self, message: str, tail: str = ""):
        super().__init__(message)
        self.tail = tail


# ---- the machine: root, tools, binfmt_misc ---------------------------------------------------------


def preflight() -> None:
    """Raise Unavailable unless this machine can build and run an arm64 root."""
    if not sys.platform.startswith("linux"):
        raise Unavailable("needs Linux (binfmt_misc, chroot); run it on a Linux machine or VM")
    if os.geteuid() != 0:
        raise Unavailable("needs root (debootstrap, mount, chroot): run `sudo make test-arm64`, or CI as root")
    missing = [t for t in ("chroot", "mount", "umount", "unshare") if shutil.which(t) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not found: apt-get install coreutils mount util-linux")
    _install_debian_tools()
    _binfmt_ready()
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise Unavailable(
            f"cannot make a private mount namespace ({_last_line(probe.stderr)}): "
            "run as root with CAP_SYS_ADMIN (a container: --privileged)"
        )


def _install_debian_tools() -> None:
    needed = {"debootstrap": shutil.which("debootstrap"), "qemu-user-static": BINFMT_CONF.is_file()}
    needed["debian-archive-keyring"] = KEYRING.is_file()
    missing = [name for name, there in needed.items() if not there]
    if not missing:
        return
    how = f"apt-get install {' '.join(missing)}"
    if shutil.which("apt-get") is None:
        raise Unavailable(f"needs Debian's {', '.join(missing)} ({how} on Debian or Ubuntu)")
    print(f"installing {', '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed ({_last_line(done.stderr)}): {how} by hand")


def _binfmt_ready() -> None:
    """binfmt_misc mounted and qemu-aarch64 registered and enabled (from qemu-user-static's file)."""
    if not (BINFMT / "register").exists():
        done = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True
        )
        if done.returncode != 0 or not (BINFMT / "register").exists():
            raise Unavailable(
                "binfmt_misc is not available: `modprobe binfmt_misc && mount -t binfmt_misc binfmt_misc "
                f"{BINFMT}` as root (a container: run it --privileged)"
            )
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        line = next(ln for ln in BINFMT_CONF.read_text().splitlines() if ln.startswith(":"))
        try:
            (BINFMT / "register").write_text(line)
        except OSError as exc:
            raise Unavailable(
                f"could not register qemu-aarch64 with binfmt_misc ({exc.strerror}): "
                "`update-binfmts --enable qemu-aarch64` or `systemctl restart systemd-binfmt`"
            ) from None
    if entry.read_text().splitlines()[0] != "enabled":
        raise Unavailable(f"qemu-aarch64 is registered but disabled: `echo 1 > {entry}` as root")


def _binfmt_interpreter() -> tuple[Path, bool]:
    """The registered interpreter and whether binfmt_misc holds it open (flag F: no copy in the root)."""
    fields = dict(line.split(" ", 1) for line in (BINFMT / "qemu-aarch64").read_text().splitlines() if " " in line)
    return Path(fields["interpreter"]), "F" in fields.get("flags:", "")


def enter_private_mount_namespace() -> None:
    """Run this script again in a private mount namespace: its mounts vanish with it, however it ends."""
    if os.environ.get(NAMESPACE_FLAG) == "1":
        return
    env = {**os.environ, NAMESPACE_FLAG: "1"}
    sys.stdout.flush()
    os.execvpe(
        "unshare", ["unshare", "--mount", "--propagation", "private", sys.executable, __file__, *sys.argv[1:]], env
    )


# ---- the cached root ----------------------------------------------------------------------------------


def build_root(root: Path, mirror: str, rebuild: bool) -> str:
    """Debootstrap the arm64 root into `root` unless a complete one of this recipe is there."""
    stamp = root / ".edgecnn-root"
    if not rebuild and stamp.is_file() and stamp.read_text() == RECIPE:
        return f"Debian {SUITE} arm64, cached in {root}"
    partial = root.with_name(root.name + ".partial")
    for path in (partial, root):
        _remove_tree(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    log = root.parent / "debootstrap.log"
    print(f"building the Debian {SUITE} arm64 root (debootstrap under qemu; once; log: {log})", flush=True)
    cmd = ["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
    cmd += [f"--keyring={KEYRING}", SUITE, str(partial), mirror]
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=3600)
    if done.returncode != 0:
        raise StepFailed(f"debootstrap exited {done.returncode} (log: {log})", _tail(log.read_text()))
    (partial / ".edgecnn-root").write_text(RECIPE)
    partial.rename(root)
    return f"Debian {SUITE} arm64 built with debootstrap from {mirror}, cached in {root}"


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    inside = [m for m in _mount_points() if m == path or path in m.parents]
    if inside:
        raise StepFailed(f"{inside[0]} is mounted; unmount it (umount -R {inside[0]}) and run again")
    shutil.rmtree(path)


def _mount_points() -> list[Path]:
    with open("/proc/self/mountinfo") as fh:
        return [Path(line.split()[4].replace("\\040", " ")) for line in fh]


def prepare_root(root: Path, cpus: int) -> Path:
    """What the root needs from this machine on every run; returns the ARM cpuinfo to bind over /proc/cpuinfo."""
    interpreter, fixed = _binfmt_interpreter()
    if not fixed:  # without flag F the kernel opens the interpreter inside the chroot: copy it there
        target = root / interpreter.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interpreter.resolve(), target)
    for name in ("resolv.conf", "hosts"):  # pip reaches PyPI from inside
        host = Path("/etc") / name
        if host.exists():
            (root / "etc" / name).unlink(missing_ok=True)  # a link there would write through to this machine
            shutil.copyfile(host, root / "etc" / name)
    bundle = _host_ca_bundle()
    if bundle:  # pip trusts what this machine trusts (a proxy's CA included)
        (root / HOST_CA.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle, root / HOST_CA.lstrip("/"))
    # onnxruntime's cpuinfo aborts on the host's x86 /proc/cpuinfo: the device sees an ARM one,
    # one block per CPU of this machine (as /sys/devices/system/cpu lists them)
    block = CPUINFO.read_text().strip("\n")
    cpuinfo = root.parent / "cpuinfo"  # outside the root: bound over its /proc/cpuinfo
    cpuinfo.write_text(
        "\n\n".join(re.sub(r"^processor\t: 0", f"processor\t: {i}", block) for i in range(cpus)) + "\n\n"
    )
    return cpuinfo


def _host_ca_bundle() -> str | None:
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@contextmanager
def mounted(root: Path, cpuinfo: Path, work: Path):
    """/proc (with the ARM cpuinfo over /proc/cpuinfo), /sys, /dev and this run's folder (at WORK)
    inside the root; unmounted after."""
    mounts = (
        (["-t", "proc", "proc"], "proc"),
        (["--bind", str(cpuinfo)], "proc/cpuinfo"),
        (["-t", "sysfs", "-o", "ro", "sysfs"], "sys"),
        (["--rbind", "/dev"], "dev"),
        (["--bind", str(work)], WORK.lstrip("/")),
    )
    (root / WORK.lstrip("/")).mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    try:
        for args, where in mounts:
            target = root / where
            result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
            if result.returncode != 0:
                raise StepFailed(f"mount {' '.join(args)} {target}: {_last_line(result.stderr)}")
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if subprocess.run(["umount", "-R", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-R", "--lazy", str(target)], capture_output=True)


# ---- running inside -------------------------------------------------------------------------------------


class Device:
    """Commands inside the root, as the device: chroot + qemu-aarch64 (binfmt_misc) as a Cortex-A76."""

    def __init__(self, root: Path, logs: Path):
        self.root = root
        self.logs = logs
        self.chroot = shutil.which("chroot")  # found on this machine's PATH, not the device's
        self.env = {
            "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "QEMU_CPU": QEMU_CPU,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_DEFAULT_TIMEOUT": "120",
            "PIP_PROGRESS_BAR": "off",
        }
        if (root / HOST_CA.lstrip("/")).is_file():
            self.env["PIP_CERT"] = HOST_CA
        for key in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
            if key in os.environ:
                self.env[key] = os.environ[key]
        if os.environ.get("PIP_INDEX_URL", "").startswith(("http://", "https://")):
            self.env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]

    def run(self, log: str, *args: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run `args` inside; output to logs/<log>.log; StepFailed on a non-zero exit or timeout."""
        return _run([self.chroot, str(self.root), *args], self.logs / f"{log}.log", self.env, timeout)

    def popen(self, log: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [self.chroot, str(self.root), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def host_path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


def _run(cmd: list[str], log: Path, env: dict | None, timeout: float, cwd: Path | None = None):
    """Run cmd in its own process group (killed with it: tune's workers on a timeout or Ctrl-C);
    output to `log`; StepFailed on a non-zero exit or no answer within `timeout` seconds."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        log.write_text(f"$ {_show(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}")
        raise StepFailed(f"{_show(cmd)}: no answer within {timeout:.0f} s (log: {log})", _tail(err or out)) from None
    finally:
        _kill_group(proc)
    log.write_text(f"$ {_show(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}")
    if proc.returncode != 0:
        raise StepFailed(f"{_show(cmd)} exited {proc.returncode} (log: {log})", _tail(err or out))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    """End proc and whatever it left running in its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _show(cmd: list[str]) -> str:
    return " ".join(cmd[2:] if Path(cmd[0]).name == "chroot" else cmd)


# ---- the checks -----------------------------------------------------------------------------------------


def host_model(edgecnn: str, work: Path, logs: Path) -> str:
    """Train the CNN on the built-in digits, export FP32 + INT8 + FP16, pick labelled images."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    _run(
        [edgecnn, "train", "--out", str(work / "digits"), "--epochs", str(TRAIN_EPOCHS)],
        logs / "train.log",
        env,
        900,
        work,
    )
    _run([edgecnn, "export", str(work / "digits"), "--quantize", "int8,fp16"], logs / "export.log", env, 900, work)
    _run([edgecnn, "datasets", "digits", str(work / "all-digits")], logs / "datasets.log", env, 300, work)
    for folder in sorted(p for p in (work / "all-digits").iterdir() if p.is_dir()):
        (work / "images" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:IMAGES_PER_CLASS]:
            shutil.copyfile(image, work / "images" / folder.name / image.name)
    shutil.rmtree(work / "all-digits")
    missing = [f for f in VARIANTS.values() if not (work / "digits" / f).is_file()]
    if missing:
        raise StepFailed(f"export wrote no {', '.join(missing)}")
    return f"digits CNN trained ({TRAIN_EPOCHS} epochs) and exported to {', '.join(VARIANTS)} on this machine"


def host_labels(edgecnn: str, work: Path, logs: Path) -> dict[str, dict[str, str]]:
    """variant -> image (relative to images/) -> label, from predict on this machine's CPU."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    labels = {}
    for variant, name in VARIANTS.items():
        cmd = [edgecnn, "predict", str(work / "digits" / name), str(work / "images"), "--device", "cpu"]
        done = _run([*cmd, "--format", "json", "--top-k", "1"], logs / f"host-predict-{variant}.log", env, 300, work)
        labels[variant] = _labels(done.stdout, work / "images")
    return labels


def _labels(jsonl: str, images: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in jsonl.splitlines() if line.startswith("{")]
    return {str(Path(r["path"]).relative_to(images)): r["label"] for r in rows if r.get("type") == "prediction"}


def wheel_of_checkout(work: Path, logs: Path) -> Path:
    """A wheel of this checkout (pure Python), built here: the device installs exactly this code."""
    src = work / "src"
    shutil.copytree(CHECKOUT / "edgecnn", src / "edgecnn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(CHECKOUT / name, src / name)
    out = work / "wheel"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        logs / "wheel.log",
        None,
        600,
    )
    shutil.rmtree(src)
    (wheel,) = out.glob("edgecnn-*.whl")
    return wheel


def install(device: Device, wheel: Path) -> str:
    """edgecnn[cpu] in the root's venv: dependencies when they changed, edgecnn itself every run."""
    if not device.host_path(f"{VENV}/bin/python").exists():
        device.run("venv", "/usr/bin/python3", "-m", "venv", VENV)
    inside = f"{WORK}/wheel/{wheel.name}"
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        requires = "".join(ln + "\n" for ln in zf.read(meta).decode().splitlines() if ln.startswith("Requires-Dist"))
    stamp = device.host_path(f"{VENV}/.edgecnn-requires")
    deps = "kept"
    if not stamp.is_file() or stamp.read_text() != requires:
        device.run("pip-deps", f"{VENV}/bin/pip", "install", f"{inside}[cpu]", timeout=1800)
        stamp.write_text(requires)
        deps = "installed"
    device.run("pip-edgecnn", f"{VENV}/bin/pip", "install", "--no-deps", "--force-reinstall", inside)
    arch = device.run(
        "arch",
        f"{VENV}/bin/python",
        "-c",
        "import platform, onnxruntime; print(platform.machine(), onnxruntime.__version__)",
    ).stdout.split()
    if arch[0] != "aarch64":
        raise StepFailed(f"the root's Python runs as {arch[0]}, not aarch64")
    return f"edgecnn[cpu] from this checkout ({wheel.name}; dependencies {deps}), onnxruntime {arch[1]} on aarch64"


def check_verify(device: Device) -> str:
    done = device.run("verify", "edgecnn", "verify", f"{WORK}/digits", "--variant", "all", "--json")
    results = json.loads(done.stdout[done.stdout.index("[") :])
    checked = sorted(Path(r["model"]).name for r in results)
    if checked != sorted(VARIANTS.values()):
        raise StepFailed(f"verify --variant all checked {checked}, expected {sorted(VARIANTS.values())}")
    failed = [f"{Path(r['model']).name} ({r['drop_pp']:+.2f} pp)" for r in results if not r["passed"]]
    if failed:
        raise StepFailed(f"outside the accuracy budget: {', '.join(failed)}")
    return "; ".join(f"{Path(r['model']).name} {r['accuracy']:.1%} vs Keras {r['keras_accuracy']:.1%}" for r in results)


def check_predict(device: Device, host: dict[str, dict[str, str]]) -> str:
    for variant, name in VARIANTS.items():
        cmd = ["edgecnn", "predict", f"{WORK}/digits/{name}", f"{WORK}/images", "--device", "cpu"]
        done = device.run(f"predict-{variant}", *cmd, "--format", "json", "--top-k", "1")
        here = _labels(done.stdout, Path(WORK) / "images")
        if set(here) != set(host[variant]):
            raise StepFailed(f"{name}: predicted {len(here)} images, the host {len(host[variant])}")
        differ = [
            f"{img}: {here[img]} (host {host[variant][img]})" for img in sorted(here) if here[img] != host[variant][img]
        ]
        if differ:
            raise StepFailed(
                f"{name}: {len(differ)} of {len(here)} labels differ from the host's: {'; '.join(differ[:5])}"
            )
    count = len(host["fp32"])
    return f"the host's label for all {count} images, with each of {', '.join(VARIANTS.values())}"


def check_profile(device: Device) -> str:
    models = [f"{WORK}/digits/{name}" for name in VARIANTS.values()]
    out = f"{WORK}/profile.json"
    cmd = ["edgecnn", "profile", *models, "--batch-sizes", "1,8", "--iterations", "3", "--warmup", "1"]
    device.run("profile", *cmd, "--images", f"{WORK}/images", "--op-profile", "--json", out)
    report = json.loads(device.host_path(out).read_text())
    for prof in report["models"]:
        for mode in ("model_only", "end_to_end"):
            if sorted(s["batch_size"] for s in prof[mode]) != [1, 8]:
                raise StepFailed(f"{prof['model']}: {mode} has batch sizes {[s['batch_size'] for s in prof[mode]]}")
        if not prof["op_profile"]:
            raise StepFailed(f"{prof['model']}: no operator profile")
    if len(report["models"]) != len(models):
        raise StepFailed(f"profile.json has {len(report['models'])} models, expected {len(models)}")
    return f"{len(models)} models, batch 1 and 8, model only + end to end + operators (not timed: emulated)"


def check_serve(device: Device, host: dict[str, dict[str, str]], logs: Path) -> str:
    image = sorted(host["int8"])[0]
    proc = device.popen("serve", "edgecnn", "serve", f"{WORK}/digits/model.int8.onnx", "--port", "0", "--device", "cpu")
    lines: list[str] = []
    found: list[str] = []
    ready_or_gone = threading.Event()

    def read():  # the first line names the URL (--port 0: a free port); then keep the log
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r" at (http://\S+/v2/models/\S+) ", line)
            if match and not found:
                found.append(match.group(1))
                ready_or_gone.set()
        ready_or_gone.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready_or_gone.wait(STEP_TIMEOUT_S)
        if not found:
            state = "no answer" if proc.poll() is None else f"exited {proc.returncode}"
            raise StepFailed(f"serve never said it was ready ({state})", _tail("".join(lines)))
        body = device.host_path(f"{WORK}/images/{image}").read_bytes()
        request = urllib.request.Request(
            f"{found[0]}/classify?top_k=1", data=body, headers={"content-type": "image/png"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        label = answer["predictions"][0]["label"]
        if label != host["int8"][image]:
            raise StepFailed(f"/classify answered {label} for {image}, the host's predict {host['int8'][image]}")
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise StepFailed("serve still ran 120 s after SIGTERM", _tail("".join(lines))) from None
        if code != 0:
            raise StepFailed(f"serve exited {code} on SIGTERM", _tail("".join(lines)))
    finally:
        _kill_group(proc)
        reader.join(timeout=10)
        (logs / "serve.log").write_text("".join(lines))
    return f"/classify answered {label} for {image} (the host's label); exit 0 on SIGTERM"


def check_tune(device: Device) -> str:
    done = device.run("tune", "edgecnn", "tune", f"{WORK}/digits", "--json", "--no-progress")
    result = json.loads(done.stdout[done.stdout.index("{") :])
    if not device.host_path(f"{WORK}/digits/deploy.json").is_file():
        raise StepFailed("tune wrote no deploy.json")
    failed: dict[str, list[str]] = {}  # why -> candidates
    for c in result["candidates"]:
        if c["status"] == "failed":
            failed.setdefault(c["why"], []).append(c["name"])
    if failed:
        count = sum(len(names) for names in failed.values())
        why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in failed.items())
        raise StepFailed(f"{count} of {len(result['candidates'])} candidates failed ({why})")
    unexplained = [c["name"] for c in result["candidates"] if c["status"] == "skipped" and not c["why"]]
    if unexplained:
        raise StepFailed(f"skipped without a reason: {', '.join(unexplained)}")
    counts: dict[str, int] = {}
    for c in result["candidates"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{len(result['candidates'])} candidates ({summary}), none failed; chose {result['chosen']['name']}"


# ---- the run -------------------------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.passed: list[str] = []
        self.failed: list[str] = []

    def step(self, name: str, fn, *args):
        """Run one step; print PASS or FAIL with one line (and the output's tail on failure)."""
        try:
            detail = fn(*args)
        except StepFailed as exc:
            self.failed.append(name)
            print(f"FAIL  {name:<8} {exc}", flush=True)
            for line in exc.tail.splitlines():
                print(f"      | {line}")
            return None
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            self.failed.append(name)
            print(f"FAIL  {name:<8} {type(exc).__name__}: {exc}", flush=True)
            return None
        self.passed.append(name)
        print(f"PASS  {name:<8} {detail}", flush=True)
        return detail if detail is not None else True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--edgecnn",
        default=str(Path(sys.executable).parent / "edgecnn"),
        help="this machine's edgecnn, for train, export and the reference labels; default: beside this Python",
    )
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgecnn-arm64"
    parser.add_argument("--cache", type=Path, default=cache, help=f"where the arm64 root is kept; default {cache}")
    parser.add_argument(
        "--mirror",
        default=os.environ.get("EDGECNN_ARM64_MIRROR", MIRROR),
        help=f"Debian mirror for debootstrap; default $EDGECNN_ARM64_MIRROR or {MIRROR}",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="build the root again (and its venv) even if one is cached"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        preflight()
    except Unavailable as exc:
        print(f"make test-arm64: cannot run here: {exc}", file=sys.stderr)
        return 2
    if not Path(args.edgecnn).exists():
        print(f"make test-arm64: {args.edgecnn} not found: run `make install-dev` or pass --edgecnn", file=sys.stderr)
        return 2
    # the steps run with the work folder as their working directory: a relative path (make's) must not depend on it
    args.edgecnn = str(Path(args.edgecnn).absolute())
    enter_private_mount_namespace()
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: the steps' process groups are killed and the mounts undone
    signal.signal(signal.SIGTERM, _stop)

    print(f"arm64: the device path in Debian {SUITE} arm64 under qemu-user ({QEMU_CPU}); functional only", flush=True)
    cache_dir = args.cache.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "lock", "w") as lock:
        if not _try_lock(lock):
            print(f"waiting for the other make test-arm64 using {cache_dir}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _checks(args, cache_dir, started)


def _stop(signum, frame):
    print(f"arm64: stopped by {signal.Signals(signum).name}; ending the steps' processes and unmounting", flush=True)
    sys.exit(128 + signum)


def _try_lock(fh) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _checks(args, cache_dir: Path, started: float) -> int:
    report = Report()
    root = cache_dir / f"{SUITE}-arm64"
    work = cache_dir / "run"  # this run's model, images, wheel and logs; bound at WORK inside the root
    _remove_tree(work)
    logs = work / "logs"
    logs.mkdir(parents=True)
    host: dict = {}

    def model():
        detail = host_model(args.edgecnn, work, logs)
        host.update(host_labels(args.edgecnn, work, logs))
        host["wheel"] = wheel_of_checkout(work, logs)
        return detail

    model_done = _in_background(model)  # this machine trains while debootstrap works under emulation
    root_ok = report.step("root", build_root, root, args.mirror, args.rebuild)
    if report.step("model", model_done) is None or root_ok is None:
        return _summary(report, started)
    cpuinfo = prepare_root(root, os.cpu_count() or 1)
    device = Device(root, logs)
    try:
        with mounted(root, cpuinfo, work):
            if report.step("install", install, device, host["wheel"]) is not None:
                report.step("verify", check_verify, device)
                report.step("predict", check_predict, device, host)
                report.step("profile", check_profile, device)
                report.step("serve", check_serve, device, host, logs)
                report.step("tune", check_tune, device)
    except StepFailed as exc:
        report.failed.append("mounts")
        print(f"FAIL  mounts   {exc}")
    if report.failed:
        print(f"      logs: {logs}")
    return _summary(report, started)


def _in_background(fn):
    """Start fn in a thread; the returned function waits for it and returns (or raises) what fn did."""
    outcome: dict = {}

    def target():
        try:
            outcome["detail"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result():
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["detail"]

    return result


def _summary(report: Report, started: float) -> int:
    total = len(report.passed) + len(report.failed)
    took = f"{time.monotonic() - started:.0f} s wall"
    if report.failed:
        print(f"arm64: FAILED {len(report.failed)} of {total} steps ({', '.join(report.failed)}); {took}")
        return 1
    print(f"arm64: all {total} steps passed (emulated: functional only, nothing here is a speed number); {took}")
    return 0


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no message"])[-1]


if __name__ == "__main__":
    sys.exit(main())
