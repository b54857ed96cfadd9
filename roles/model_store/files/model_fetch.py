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
    print(json.dumps({"snapshot": snapshot, "downloaded": downloaded}))


if __name__ == "__main__":
    main()
