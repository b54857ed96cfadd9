"""gpu_facts reads a sysfs tree laid out like the kernel's (built here per test case)."""

from __future__ import annotations


def _device(root, slot, vendor, pci_class, device):
    path = root / slot
    path.mkdir(parents=True)
    (path / "vendor").write_text(vendor + "\n")
    (path / "class").write_text(pci_class + "\n")
    (path / "device").write_text(device + "\n")


def test_hgx_board_with_gpus_and_nvswitches(tmp_path, gpu_facts):
    sysfs = tmp_path / "devices"
    for i in range(8):
        _device(sysfs, f"0000:{0x18 + i:02x}:00.0", "0x10de", "0x030200", "0x2330")
    for i in range(4):
        _device(sysfs, f"0000:{0x80 + i:02x}:00.0", "0x10de", "0x068000", "0x22a3")
    _device(sysfs, "0000:00:1f.0", "0x8086", "0x060100", "0xa1c1")  # Intel ISA bridge, not counted
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n"
        "GCC version:  gcc version 12.2.0\n"
    )
    facts = gpu_facts.scan(str(sysfs), str(version))
    assert facts["gpu_count"] == 8
    assert facts["gpus"][0] == {"pci_slot": "0000:18:00.0", "device_id": "2330", "name": "H100-SXM5-80GB"}
    assert facts["nvswitch_count"] == 4
    assert facts["driver_version"] == "550.54.15"


def test_proprietary_module_version_and_vga_class(tmp_path, gpu_facts):
    sysfs = tmp_path / "devices"
    _device(sysfs, "0000:01:00.0", "0x10de", "0x030000", "0x9999")
    _device(sysfs, "0000:01:00.1", "0x10de", "0x040300", "0x10fa")  # HDMI audio function, not a GPU
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.01  Wed Oct 30 2024\n")
    facts = gpu_facts.scan(str(sysfs), str(version))
    assert facts["gpu_count"] == 1
    assert facts["gpus"][0]["name"] == "9999"
    assert facts["nvswitch_count"] == 0
    assert facts["driver_version"] == "535.216.01"


def test_host_without_gpu_or_driver(tmp_path, gpu_facts):
    facts = gpu_facts.scan(str(tmp_path / "missing"), str(tmp_path / "no-version"))
    assert facts == {"gpu_count": 0, "gpus": [], "nvswitch_count": 0, "driver_version": None}
