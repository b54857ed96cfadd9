# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch one model revision into the model store's Hugging Face cache with huggingface_hub (HF_ENDPOINT,
HF_TOKEN_PATH from the environment). Only files the cache lacks are downloaded; progress goes to --log.
Prints one JSON line: the snapshot's path and the files downloaded by this run."""

import argparse
import json
import os
import sys

from huggingface_hub import snapshot_download


def blobs(cache, repo):
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"), "blobs")
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def readable(folder):
    """Let every user read FOLDER's files: rsync's daemon reads them as nobody, and huggingface_hub writes
    some 0600 (its saved file listings)."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                wanted = mode | 0o444 | (0o111 if name in dirs else 0)
                if wanted != mode:
                    os.chmod(path, wanted)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    with open(args.log, "a") as log:
        # huggingface_hub's progress bars write to stderr: bytes, rate and time left, for `tail -f`.
        os.dup2(log.fileno(), sys.stderr.fileno())
    print("fetching %s@%s" % (args.repo, args.revision), file=sys.stderr, flush=True)
    before = blobs(args.cache, args.repo)
    snapshot = snapshot_download(args.repo, revision=args.revision, cache_dir=args.cache)
    downloaded = sorted(blobs(args.cache, args.repo) - before)
    readable(os.path.join(args.cache, "models--" + args.repo.replace("/", "--")))
    print(json.dumps({"snapshot": snapshot, "downloaded": downloaded}))


if __name__ == "__main__":
    main()
