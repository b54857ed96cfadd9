"""disk_space measures real directories in a temporary tree."""

from __future__ import annotations

import os


def test_missing_path_is_measured_on_its_nearest_parent(tmp_path, disk_space):
    result = disk_space.measure(str(tmp_path / "not" / "yet" / "there"))
    assert result["existing_path"] == str(tmp_path)
    assert result["used_bytes"] == 0
    stats = os.statvfs(tmp_path)
    assert abs(result["free_bytes"] - stats.f_bavail * stats.f_frsize) < 64 * 1024 * 1024


def test_used_bytes_count_what_the_cache_holds(tmp_path, disk_space):
    cache = tmp_path / "cache" / "models--tiny"
    cache.mkdir(parents=True)
    (cache / "weights.bin").write_bytes(os.urandom(1024 * 1024))
    (cache / "config.json").write_text("{}")
    result = disk_space.measure(str(tmp_path / "cache"))
    assert result["existing_path"] == str(tmp_path / "cache")
    assert result["used_bytes"] >= 1024 * 1024
    assert result["usable_bytes"] == result["free_bytes"] + result["used_bytes"]
