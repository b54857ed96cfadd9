"""The nvidia_driver role on a host without a GPU: everything but the kernel module, reboot and nvidia-smi."""

import pytest

testinfra_hosts = ["ansible://all"]

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
        assert "Pin: version 550.163.01*" in prefs.content_string
        assert host.package("nvidia-smi").version.startswith("550.163.01-")
        assert "1001" in host.check_output("apt-cache policy nvidia-smi")
    else:
        assert not prefs.exists


def test_driver_packages_held(host, driver_packages):
    held = host.check_output("apt-mark showhold").split()
    for name in driver_packages + ["nvidia-persistenced"]:
        assert name in held, name


def test_unattended_upgrades_blacklist(host):
    config = host.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist")
    for entry in ("nvidia-", "libnvidia-", "libcuda1"):
        assert f'"{entry}"' in config


def test_nouveau_blacklisted_for_the_initramfs(host):
    blacklist = host.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf")
    assert blacklist.mode == 0o644
    assert "blacklist nouveau" in blacklist.content_string
    assert "options nouveau modeset=0" in blacklist.content_string
    # initramfs-tools copies /etc/modprobe.d into every initramfs it builds
    assert host.exists("update-initramfs")


def test_persistenced_enabled(host):
    assert host.service("nvidia-persistenced").is_enabled


def test_no_fabric_manager_without_nvswitch(host):
    assert not host.package("nvidia-fabricmanager-" + "535").is_installed
    assert not host.file("/etc/apt/sources.list.d/gpufleet-nvidia-cuda.sources").exists


def test_no_reboot_happened(host):
    # prepare wrote this to the /run tmpfs; a reboot would have removed it
    assert host.file("/run/molecule-booted").exists
