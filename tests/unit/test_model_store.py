"""The model store's pieces that need no host: model_files checks a Hugging Face cache folder laid out as
huggingface_hub 2.4 writes it (blobs named by the hub's checksum, snapshot links, refs, the saved tree
listing) and the model_ref filter reads the inventory's model entries. The fleet scenario runs both roles
against the fixture hub."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
from ansible.errors import AnsibleFilterError

COMMIT = "c0ffee" * 6 + "abcd"


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_folder(tmp_path, files):
    """A model folder with FILES {name: bytes}; names ending .safetensors are LFS files."""
    folder = tmp_path / "hub" / "models--org--tiny"
    listing = {}
    for name, data in files.items():
        entry = {"size": len(data), "blob_id": git_blob_id(data)}
        if name.endswith(".safetensors"):
            entry.update(lfs_sha256=hashlib.sha256(data).hexdigest(), lfs_size=len(data))
        listing[name] = entry
        blob = folder / "blobs" / entry.get("lfs_sha256", entry["blob_id"])
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "trees").mkdir()
    (folder / "trees" / (COMMIT + ".json")).write_text(json.dumps({"format_version": 1, "files": listing}))
    return folder


FILES = {"config.json": b'{"model_type": "llama"}', "tokenizer/vocab.txt": b"a\nb\n",
         "model.safetensors": os.urandom(300_000)}


def test_an_intact_copy_passes(tmp_path, model_files):
    folder = cache_folder(tmp_path, FILES)
    commit, listing, bad, missing = model_files.check(str(folder), "main")
    assert (commit, sorted(listing), bad, missing) == (COMMIT, sorted(FILES), [], [])


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_changed_byte_is_found_in_lfs_and_git_files_and_removed_with_its_blob(tmp_path, model_files, name):
    folder = cache_folder(tmp_path, FILES)
    target = folder / "snapshots" / COMMIT / name
    blob = target.resolve()
    data = bytearray(blob.read_bytes())
    data[5] ^= 1
    blob.write_bytes(bytes(data))
    assert model_files.check(str(folder), "main")[2:] == ([name], [])
    model_files.remove(str(folder), COMMIT, name)
    assert not target.exists() and not blob.exists()
    assert model_files.check(str(folder), "main")[2:] == ([], [name])


def test_a_missing_file_and_a_missing_listing_are_reported(tmp_path, model_files):
    folder = cache_folder(tmp_path, FILES)
    (folder / "snapshots" / COMMIT / "tokenizer" / "vocab.txt").unlink()
    assert model_files.check(str(folder), "main")[2:] == ([], ["tokenizer/vocab.txt"])
    assert model_files.check(str(folder), "v2") == ("", {}, [], [])
    assert model_files.check(str(tmp_path / "nothing"), "main") == ("", {}, [], [])


def test_a_commit_as_revision_needs_no_ref(tmp_path, model_files):
    folder = cache_folder(tmp_path, FILES)
    (folder / "refs" / "main").unlink()
    assert model_files.check(str(folder), COMMIT)[0] == COMMIT


@pytest.mark.parametrize("entry, expected", [
    ("org/name", ("org/name", "main", "models--org--name")),
    ("meta-llama/Llama-3.1-8B-Instruct@v1.0",
     ("meta-llama/Llama-3.1-8B-Instruct", "v1.0", "models--meta-llama--Llama-3.1-8B-Instruct")),
    ({"repo": "org/name", "revision": COMMIT}, ("org/name", COMMIT, "models--org--name")),
])
def test_model_entries(model_filters, entry, expected):
    ref = model_filters.model_ref(entry)
    assert (ref["repo"], ref["revision"], ref["folder"]) == expected


@pytest.mark.parametrize("entry", ["name", "/opt/models/tiny", "org/name@", "org/name@../x", {"revision": "main"}])
def test_model_entries_refused_name_the_entry(model_filters, entry):
    with pytest.raises(AnsibleFilterError, match="use a Hugging Face id"):
        model_filters.model_ref(entry)
    assert model_filters.model_ref_problems([entry], "model_store_models")[0].startswith("model_store_models: model")


def test_the_store_fetches_only_hub_models_once(instance_filters):
    hostvars = {
        "a": {"vllm_model": "org/one"},
        "b": {"vllm_instances": [{"name": "x", "model": "org/two", "port": 8000},
                                 {"name": "y", "model": "/opt/models/local", "port": 8001},
                                 {"name": "z", "model": "org/one", "port": 8002}]},
    }
    assert instance_filters.fleet_hub_models(["a", "b"], hostvars) == ["org/one", "org/two"]
    assert instance_filters.fleet_hub_models(["b"], hostvars) == ["org/one", "org/two"]


IMPORT = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "model_store", "files", "model_import.py")


def run_import(tmp_path, source):
    cache = tmp_path / "hub"
    out = subprocess.run([sys.executable, IMPORT, "--cache", str(cache), "--repo", "local/tiny", "--source", str(source),
                          "--log", str(tmp_path / "import.log")], check=True, capture_output=True, text=True).stdout
    return cache / "models--local--tiny", json.loads(out)


def test_a_directory_is_imported_with_a_manifest_that_model_files_checks(tmp_path, model_files):
    source = tmp_path / "nfs" / "tiny"
    for name, data in FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    (source / ".cache").mkdir()
    (source / ".cache" / "lock").write_text("not part of the model")
    folder, first = run_import(tmp_path, source)
    assert sorted(first["downloaded"]) == sorted(FILES)
    commit, listing, bad, missing = model_files.check(str(folder), "main")
    assert sorted(listing) == sorted(FILES) and bad == [] and missing == []
    assert all(listing[name]["lfs_sha256"] == hashlib.sha256(data).hexdigest() for name, data in FILES.items())
    assert pathlib.Path(first["snapshot"]).name == commit
    # Again: nothing copied, the same revision, not even the manifest rewritten (rsync would copy it to the hosts).
    written = {p: p.stat().st_mtime_ns for p in (folder / "refs" / "main", folder / "trees" / (commit + ".json"))}
    again = run_import(tmp_path, source)[1]
    assert again == {"snapshot": first["snapshot"], "downloaded": [], "linked": []}
    assert {p: p.stat().st_mtime_ns for p in written} == written
    # A changed file: a new revision, only that file copied, the old revision gone.
    (source / "config.json").write_bytes(b'{"model_type": "mistral"}')
    changed = run_import(tmp_path, source)[1]
    assert changed["downloaded"] == ["config.json"] and changed["snapshot"] != first["snapshot"]
    assert [p.name for p in (folder / "snapshots").iterdir()] == [pathlib.Path(changed["snapshot"]).name]
    assert model_files.check(str(folder), "main")[2:] == ([], [])
    # A damaged copy on the store is found against the manifest, not against the source.
    weights = folder / "snapshots" / pathlib.Path(changed["snapshot"]).name / "model.safetensors"
    with open(os.path.realpath(weights), "r+b") as blob:
        blob.seek(100)
        byte = blob.read(1)[0]
        blob.seek(100)
        blob.write(bytes([byte ^ 0xFF]))
    assert model_files.check(str(folder), "main")[2] == ["model.safetensors"]


def test_an_import_without_its_directory_fails_naming_it(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_import(tmp_path, tmp_path / "not-mounted")
    assert "not-mounted: no such directory (the source of local/tiny)" in failed.value.stderr
