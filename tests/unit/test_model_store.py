"""The model store's pieces that need no host: model_files checks a Hugging Face cache folder laid out as
huggingface_hub 2.4 writes it (blobs named by the hub's checksum, snapshot links, refs, the saved tree
listing) and the model_ref filter reads the inventory's model entries. The fleet scenario runs both roles
against the fixture hub."""

from __future__ import annotations

import hashlib
import json
import os

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
