"""The nvidia_driver role on Debian 13 without a GPU and on the simulated GPU host (Debian 12, two H100 on
its PCI bus, tests/fixtures/simulated-gpu): everything up to loading the kernel module, which a container
cannot do, so the simulated host stops at "reboot needed" (nvidia_driver_reboot is false there)."""

import pytest

testinfra_hosts = ["ansible://all"]

SIMULATED_GPU_HOST = "bookworm"

BRANCH = {"bookworm": "535", "trixie": "550"}
# The role's defaults: headless, open kernel modules except on Debian 12 (see the role's README).
KERNEL_PACKAGE = {"bookworm": "nvidia-kernel-dkms", "trixie": "nvidia-open-kernel-dkms"}
USERSPACE_PACKAGES = ["nvidia-smi", "libcuda1", "libnvidia-cfg1"]


@pytest.fixture(scope="module")
def codename(host):
    return host.system_info.codename


def test_non_free_components_added_next_to_the_hosts_sources(host, codename):
    sources = host.file("/etc/apt/sources.list.d/gpufleet-debian-non-free.sources").content_string
    assert "Components: contrib non-free non-free-firmware" in sources
    assert f"Suites: {codename} {codename}-updates" in sources
    assert f"Suites: {codename}-security" in sources
    # the host's own main source is untouched
    assert f"{codename} main" in host.file("/etc/apt/sources.list").content_string
    host.run_expect([0], "apt-get update -qq")


@pytest.fixture(scope="module")
def driver_packages(codename):
    return [KERNEL_PACKAGE[codename]] + USERSPACE_PACKAGES


def test_driver_packages_installed_from_debian_non_free(host, codename, driver_packages):
    for name in driver_packages + ["nvidia-persistenced", "initramfs-tools"]:
        assert host.package(name).is_installed, name
    version = host.package("nvidia-smi").version
    assert version.startswith(BRANCH[codename] + "."), version
    policy = host.check_output("apt-cache policy nvidia-smi")
    assert "non-free" in policy
    # the other kernel module and the X driver are not installed with the headless set
    other = set(KERNEL_PACKAGE.values()) - {KERNEL_PACKAGE[codename]}
    assert not host.package(other.pop()).is_installed
    assert not host.package("xserver-xorg-video-nvidia").is_installed


def test_dkms_has_the_module_but_builds_no_module_without_headers(host):
    status = host.check_output("dkms status")
    assert "nvidia" in status
    assert "installed" not in status  # no headers for this kernel in a container
    assert not host.package("linux-headers-amd64").is_installed


def test_version_pinned_where_asked(host, codename):
    prefs = host.file("/etc/apt/preferences.d/gpufleet-nvidia-driver")
    if codename == "trixie":
        # the upstream version, any revision: a rebuild of the same driver still matches
        assert "Pin: version 550.163.01-*" in prefs.content_string
        assert host.package("nvidia-smi").version.startswith("550.163.01-")
        assert "1001" in host.check_output("apt-cache policy nvidia-smi")
    else:
        assert not prefs.exists


def test_every_package_of_the_driver_stack_held(host, driver_packages):
    held = host.check_output("apt-mark showhold").split()
    for name in driver_packages + ["nvidia-persistenced"]:
        assert name in held, name
    # the libraries and firmware that came in as dependencies too (libnvidia-ml1, firmware-nvidia-gsp, ...)
    installed = host.check_output("dpkg-query -W -f '${Package}\\n'").split()
    stack = [name for name in installed if name.startswith(("nvidia-", "libnvidia-", "firmware-nvidia-"))]
    assert len(stack) > len(driver_packages)
    assert sorted(set(stack) - set(held)) == []


def test_unattended_upgrades_blacklist_keeps_kernel_and_driver_together(host):
    config = host.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist")
    for entry in ("nvidia-", "libnvidia-", "libcuda1", "firmware-nvidia-"):
        assert f'"{entry}"' in config
    # the containers run a kernel that is not Debian's: the architecture's flavour, amd64
    for kernel_meta in ("linux-image-amd64$", "linux-headers-amd64$"):
        assert f'"{kernel_meta}"' in config


def test_nouveau_blacklisted_for_the_initramfs(host):
    blacklist = host.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf")
    assert blacklist.mode == 0o644
    assert "blacklist nouveau" in blacklist.content_string
    assert "options nouveau modeset=0" in blacklist.content_string
    # initramfs-tools copies /etc/modprobe.d into every initramfs it builds
    assert host.exists("update-initramfs")


def test_persistenced_enabled_with_persistence_mode_but_not_started_without_a_loaded_driver(host):
    service = host.service("nvidia-persistenced")
    assert service.is_enabled
    assert not service.is_running
    dropin = host.file("/etc/systemd/system/nvidia-persistenced.service.d/gpufleet.conf")
    assert dropin.mode == 0o644
    exec_start = host.check_output("systemctl show -p ExecStart nvidia-persistenced")
    assert "--persistence-mode" in exec_start
    assert "--no-persistence-mode" not in exec_start
    assert "--user nvpd" in exec_start


def test_no_fabric_manager_without_nvswitch(host):
    assert not host.package("nvidia-fabricmanager-" + "535").is_installed
    assert not host.file("/etc/apt/sources.list.d/gpufleet-nvidia-cuda.sources").exists


def test_no_reboot_happened(host):
    # prepare wrote this to the /run tmpfs; a reboot would have removed it
    assert host.file("/run/molecule-booted").exists


def test_gpu_facts_finds_the_simulated_gpus_through_sysfs(host, codename):
    facts = host.ansible("gpufleet.vllm.gpu_facts", check=False)
    if codename == SIMULATED_GPU_HOST:
        assert facts["gpu_count"] == 2
        assert [gpu["name"] for gpu in facts["gpus"]] == ["H100-SXM5-80GB"] * 2
        assert facts["nvswitch_count"] == 0
    else:
        assert facts["gpu_count"] == 0
    assert facts["driver_version"] is None
    # the same scan as the host fact the roles read
    assert facts["ansible_facts"]["gpufleet_gpu"] == {key: facts[key] for key in ("gpu_count", "gpus", "nvswitch_count", "driver_version")}


def test_simulated_nvidia_smi_reports_no_driver_until_one_is_loaded(host, codename):
    if codename != SIMULATED_GPU_HOST:
        pytest.skip("only the simulated GPU host has the nvidia-smi fixture")
    result = host.run("nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    assert result.rc == 9
    assert "couldn't communicate with the NVIDIA driver" in result.stdout
    # the state file stands for a loaded module (README of the fixture)
    version = host.package("nvidia-smi").version.split("-")[0]
    smi = f"SIMULATED_GPU_STATE=$(mktemp -d) && echo {version} > $SIMULATED_GPU_STATE/driver-version && nvidia-smi"
    lines = host.check_output(f"export {smi} --query-gpu=index,pci.bus_id,driver_version --format=csv,noheader")
    assert lines.splitlines() == [f"0, 00000000:18:00.0, {version}", f"1, 00000000:2A:00.0, {version}"]
