"""Machine information: what every profile report says about the device it ran on."""

from __future__ import annotations

import shutil

from edgecnn.machine import has_vnni, machine_info, peak_rss_mb


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
