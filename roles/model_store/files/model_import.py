# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Import a model from a directory (an NFS mount, a disk) into the model store's Hugging Face cache under an
id of the hub's form (org/name), as if fetched from the hub: blobs named by their sha256, a snapshot of links,
refs/main, and a manifest in the hub listing's format (trees/<commit>.json: each file's size and sha256) that
model_files and the GPU hosts check against. The commit is a digest of the manifest, so a changed file gives
a new revision. A source file whose size and modification time are those recorded in the manifest is not
hashed again. Prints one JSON line: the snapshot's path, the files copied and the files linked into a new snapshot by this run."""

import argparse
import hashlib
import json
import os
import shutil
import sys

CHUNK = 8 << 20


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def previous_listing(folder):
    """The manifest of the revision refs/main points at, {} when there is none."""
    try:
        with open(os.path.join(folder, "refs", "main")) as ref:
            commit = ref.read().strip()
        with open(os.path.join(folder, "trees", commit + ".json")) as tree:
            return json.load(tree)["files"]
    except (OSError, ValueError, KeyError):
        return {}


def source_files(source):
    """Every regular file under SOURCE (hidden ones and links left out), as sorted relative names."""
    names = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = os.path.join(root, name)
            if not name.startswith(".") and os.path.isfile(path) and not os.path.islink(path):
                names.append(os.path.relpath(path, source))
    return sorted(names)


def write_atomically(path, text):
    """Write TEXT to PATH unless it holds it already (an unchanged file keeps its time: rsync copies nothing)."""
    try:
        with open(path) as stream:
            if stream.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as stream:
        stream.write(text)
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    log = open(args.log, "a")
    folder = os.path.join(args.cache, "models--" + args.repo.replace("/", "--"))
    if not os.path.isdir(args.source):
        sys.exit("%s: no such directory (the source of %s)" % (args.source, args.repo))
    names = source_files(args.source)
    if not names:
        sys.exit("%s: no files (the source of %s)" % (args.source, args.repo))
    print("importing %s from %s (%d files)" % (args.repo, args.source, len(names)), file=log, flush=True)
    before = previous_listing(folder)
    listing, copied, linked = {}, [], []
    for name in names:
        path = os.path.join(args.source, name)
        stat = os.stat(path)
        known = before.get(name, {})
        if known.get("size") == stat.st_size and known.get("source_mtime_ns") == stat.st_mtime_ns:
            digest = known["lfs_sha256"]
        else:
            print("hashing %s (%d bytes)" % (name, stat.st_size), file=log, flush=True)
            digest = sha256(path)
        listing[name] = {"size": stat.st_size, "lfs_sha256": digest, "source_mtime_ns": stat.st_mtime_ns}
        blob = os.path.join(folder, "blobs", digest)
        if not os.path.isfile(blob) or os.path.getsize(blob) != stat.st_size:
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            print("copying %s" % name, file=log, flush=True)
            shutil.copyfile(path, blob + ".incomplete")
            os.chmod(blob + ".incomplete", 0o644)
            os.replace(blob + ".incomplete", blob)
            copied.append(name)
    manifest = "".join("%s %s %d\n" % (name, listing[name]["lfs_sha256"], listing[name]["size"]) for name in names)
    commit = hashlib.sha1(manifest.encode()).hexdigest()
    snapshot = os.path.join(folder, "snapshots", commit)
    for name in names:
        link = os.path.join(snapshot, name)
        target = os.path.relpath(os.path.join(folder, "blobs", listing[name]["lfs_sha256"]), os.path.dirname(link))
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
        linked.append(name)
    write_atomically(os.path.join(folder, "trees", commit + ".json"), json.dumps({"files": listing}, indent=1))
    write_atomically(os.path.join(folder, "refs", "main"), commit)
    # The directory is the model: earlier revisions and the blobs only they used go.
    for old in os.listdir(os.path.join(folder, "snapshots")):
        if old != commit:
            shutil.rmtree(os.path.join(folder, "snapshots", old))
    for old in os.listdir(os.path.join(folder, "trees")):
        if old != commit + ".json":
            os.unlink(os.path.join(folder, "trees", old))
    used = {entry["lfs_sha256"] for entry in listing.values()}
    for blob in os.listdir(os.path.join(folder, "blobs")):
        if blob not in used:
            os.unlink(os.path.join(folder, "blobs", blob))
    for root, dirs, _files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    print("imported %s as %s" % (args.repo, commit), file=log, flush=True)
    print(json.dumps({"snapshot": snapshot, "downloaded": copied, "linked": linked}))


if __name__ == "__main__":
    main()
