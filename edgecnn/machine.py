"""What machine this is: CPU model and SIMD flags, cores, memory, GPUs, peak memory.

Used by `profile` (machine info in every report) and `quantize` (reduce_range without VNNI).
Device path: standard library only.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",  # x86
    "asimd",
    "asimdhp",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",  # Arm
)


# -- memory ---------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory: VmHWM (since the last reset) on Linux, else the lifetime peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    except (ImportError, OSError):
        return None


def peak_rss_method() -> str:
    if Path("/proc/self/clear_refs").exists() and Path("/proc/self/status").exists():
        return "VmHWM, reset per batch size via /proc/self/clear_refs"
    return "ru_maxrss (process lifetime peak, not reset per batch size)"


def available_cpus() -> int:
    """Logical CPUs this process may use: its affinity mask (hyper-threads counted), capped by the
    cgroup CPU quota where that is smaller (a container given 2 CPUs of a 64-core host)."""
    try:
        mask = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        mask = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(mask, math.ceil(quota))) if quota else mask


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads not counted), capped by the
    cgroup CPU quota where that is smaller."""
    try:
        mask = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        mask = os.cpu_count() or 1
    cores = mask
    try:
        ids = set()
        physical = core = None
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    ids.add((physical, core))
                    physical = core = None
        if core is not None:
            ids.add((physical, core))
        if ids:
            threads_per_core = max(1, (os.cpu_count() or 1) // len(ids))
            cores = max(1, min(len(ids), mask // threads_per_core or 1))
    except OSError:
        pass
    quota = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def cgroup_cpu_limit(
    root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
) -> float | None:
    """The CPUs this process's cgroup quota allows (quota / period), the smallest along its path
    and the mount's root, for cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`); None when there
    is no quota or nothing can be read."""
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    places = []  # (folder of the hierarchy, this process's path in it)
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: 0::/path
            places += [(root, path), (root / "unified", path)]
        elif "cpu" in controllers.split(","):  # v1: N:cpu,cpuacct:/path
            places += [(root / "cpu", path), (root / "cpu,cpuacct", path), (root / controllers, path)]
    if not places:
        places = [(root, "/")]
    limits = []
    for base, path in places:
        folder = base / path.strip("/")
        for level in [folder, *folder.parents]:
            limit = _quota_in(level)
            if limit:
                limits.append(limit)
            if level == base:
                break
    return min(limits) if limits else None


def _quota_in(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


# -- machine --------------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model and SIMD flags, cores, GPUs, onnxruntime and Python versions, OS."""
    from edgecnn.ort import import_onnxruntime

    ort = import_onnxruntime()
    cpu_model, flags = cpuinfo()
    return {
        "cpu_model": cpu_model,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "physical_cores": physical_cores(),
        "logical_cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "gpus": gpu_names(),
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "arch": platform.machine(),
        "peak_rss_method": peak_rss_method(),
    }


def cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_names() -> list[str]:
    """NVIDIA GPU names from nvidia-smi; empty when there is none (never fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def cpu_flags() -> set[str]:
    """The CPU feature flags (empty where unreadable)."""
    return cpuinfo()[1]


def has_vnni(flags: set[str] | None = None) -> bool:
    """True on CPUs with 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
