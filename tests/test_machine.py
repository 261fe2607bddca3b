"""Machine information: what every profile report says about the device it ran on."""

from __future__ import annotations

import os
import shutil

from edgecnn.machine import cgroup_cpu_limit, has_vnni, machine_info, peak_rss_mb


def test_peak_memory_and_machine_info_are_read():
    assert peak_rss_mb() > 1
    info = machine_info()
    assert info["logical_cores"] >= 1 and isinstance(info["cpu_flags"], list)
    assert isinstance(info["gpus"], list)  # empty without nvidia-smi, never an error


def test_machine_info_without_nvidia_smi_has_no_gpus(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert machine_info()["gpus"] == []


def test_vnni_is_detected_from_any_of_its_flags():
    assert has_vnni({"avx2", "avx512_vnni"})
    assert has_vnni({"avx_vnni"})
    assert not has_vnni({"avx2", "fma"})


def _cgroup(tmp_path, files: dict[str, str], proc: str):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc)
    return tmp_path, tmp_path / "proc_cgroup"


def test_a_cgroup_v2_quota_is_read_from_cpu_max_along_the_process_path(tmp_path):
    root, proc = _cgroup(
        tmp_path, {"cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "150000 100000\n"}, "0::/kubepods/pod1\n"
    )
    assert cgroup_cpu_limit(root, proc) == 1.5


def test_the_smallest_quota_on_the_path_wins_and_max_means_none(tmp_path):
    root, proc = _cgroup(tmp_path, {"a/cpu.max": "200000 100000\n", "a/b/cpu.max": "max 100000\n"}, "0::/a/b\n")
    assert cgroup_cpu_limit(root, proc) == 2.0
    root, proc = _cgroup(tmp_path / "free", {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_a_cgroup_v1_quota_is_read_from_cfs_quota_and_period(tmp_path):
    files = {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path, files, "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n")
    assert cgroup_cpu_limit(root, proc) == 0.5
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path / "v1free", unlimited, "3:cpu:/\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_nothing_readable_means_no_quota(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing_proc") is None


def test_threads_follow_a_quota_smaller_than_the_affinity_mask(monkeypatch):
    from edgecnn import machine

    mask = len(os.sched_getaffinity(0))
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: 0.5)  # a container limited to half a CPU
    assert machine.available_cpus() == 1 and machine.physical_cores() == 1
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: mask + 8.0)  # a quota above the mask changes nothing
    assert machine.available_cpus() == mask
