"""The wrapper source archive: same content, same bytes."""

from __future__ import annotations

import io
import os
import tarfile


def make_tree(root):
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (root / "pkg" / "stale.pyc").write_bytes(b"\0")
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o750)


def test_bytes_do_not_depend_on_times_or_order(tmp_path, source_archive):
    make_tree(tmp_path)
    first, count = source_archive.pack(str(tmp_path), ["pkg", "Dockerfile", "run.sh"])
    os.utime(tmp_path / "Dockerfile", (1, 1))
    second = source_archive.pack(str(tmp_path), ["run.sh", "Dockerfile", "pkg"])[0]
    assert first == second
    assert count == 3


def test_content_changes_the_bytes_and_caches_are_left_out(tmp_path, source_archive):
    make_tree(tmp_path)
    before = source_archive.pack(str(tmp_path), ["pkg", "Dockerfile"])[0]
    (tmp_path / "pkg" / "__init__.py").write_text("x = 2\n")
    after = source_archive.pack(str(tmp_path), ["pkg", "Dockerfile"])[0]
    assert before != after
    names = tarfile.open(fileobj=io.BytesIO(after)).getnames()
    assert names == ["Dockerfile", "pkg", "pkg/__init__.py"]


def test_modes_keep_only_the_executable_bit(tmp_path, source_archive):
    make_tree(tmp_path)
    data = source_archive.pack(str(tmp_path), ["run.sh", "Dockerfile"])[0]
    modes = {m.name: m.mode for m in tarfile.open(fileobj=io.BytesIO(data)).getmembers()}
    assert modes == {"Dockerfile": 0o644, "run.sh": 0o755}
