"""Time to put one model on 1, 3 and 5 hosts (issue #17), two ways side by side in one run:

- hub: every host downloads the model from the hub by itself (what each host's vLLM does without a store);
- store: the model store fetches it once, then the hosts copy it from the store with rsync, at most
  model_sync_parallel of them at once: the model_store and model_sync roles' tools and command lines
  (huggingface_hub 2.4.0, rsync's daemon and the roles' rsync options).

Hosts are containers of one image on one Docker network; the hub is the fixture hub (tests/fixtures/hub) on
the Docker host, throttled to --rate per host address, as each host's link to the internet would be. The
store's copies run over the Docker bridge. Each case starts with empty caches on fresh containers; container
start-up is not timed. Prints times, the ratio and the bytes the hub sent, with the command and date.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[3]
CACHE = pathlib.Path(os.environ.get("GPUFLEET_CACHE", "/var/cache/gpufleet"))
IMAGE = "gpufleet-bench/models:hf-2.4.0"
NETWORK = "gpufleet-bench-models"
REPO = "gpufleet-bench/model"
# The model_sync role's rsync options (roles/model_sync/vars/main.yml), without the progress output.
RSYNC = ["rsync", "--archive", "--partial-dir=.rsync-partial", "--itemize-changes", "--stats"]
FETCH = ("import sys; from huggingface_hub import snapshot_download; "
         "snapshot_download(sys.argv[1], cache_dir='/data/hub')")
DOCKERFILE = """FROM gpufleet-base:bookworm
COPY ca.crt /usr/local/share/ca-certificates/extra.crt
RUN apt-get update && apt-get install -y --no-install-recommends rsync python3-venv ca-certificates \\
    && update-ca-certificates && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/hf && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/hf/bin/pip install -q \\
    huggingface_hub==2.4.0
"""
RSYNCD = """uid = root
gid = root
use chroot = yes
read only = yes
[gpufleet-models]
    path = /data
    exclude = .locks/
"""


def run(*argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout


def build_image():
    context = CACHE / "bench-models" / "image"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "ca.crt").write_bytes(pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
    run("docker", "build", "-q", "-t", IMAGE, str(context))


def make_model(size_mb, shards):
    """A model of SHARDS safetensors files (random bytes) and a config, SIZE_MB in all; kept between runs."""
    folder = CACHE / "bench-models" / ("model-%dmb-%d" % (size_mb, shards))
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(shards):
            with open(folder / ("model-%05d-of-%05d.safetensors" % (index + 1, shards)), "wb") as out:
                for _mib in range(size_mb // shards):
                    out.write(os.urandom(1 << 20))
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def hub_bytes(port):
    return json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_fixture/bytes" % port, timeout=10).read())["bytes"]


def start(names):
    for name in names:
        run("docker", "run", "-d", "--rm", "--name", name, "--network", NETWORK, "--entrypoint", "sleep",
            IMAGE, "infinity")


def remove(names):
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)


def in_parallel(commands, workers):
    """Run each argv of COMMANDS, WORKERS at a time; returns the seconds until the last one ended."""
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        runs = pool.map(lambda argv: subprocess.run(argv, capture_output=True, text=True, check=False), commands)
        for result in runs:
            if result.returncode != 0:
                raise RuntimeError("%s failed: %s" % (shlex.join(result.args), result.stderr[-2000:]))
    return time.monotonic() - began


def fetch_argv(container, endpoint):
    return ["docker", "exec", "-e", "HF_ENDPOINT=" + endpoint, "-e", "HF_HUB_DISABLE_PROGRESS_BARS=1",
            container, "/opt/hf/bin/python", "-c", FETCH, REPO]


def case_hub(hosts, endpoint, port):
    names = ["bench-host%d" % i for i in range(1, hosts + 1)]
    start(names)
    try:
        before = hub_bytes(port)
        seconds = in_parallel([fetch_argv(name, endpoint) for name in names], hosts)
        return seconds, hub_bytes(port) - before
    finally:
        remove(names)


def case_store(hosts, endpoint, port, parallel):
    names = ["bench-host%d" % i for i in range(1, hosts + 1)]
    start(["bench-store"] + names)
    try:
        run("docker", "exec", "bench-store", "sh", "-c",
            "mkdir -p /data/hub && cat > /etc/rsyncd.conf <<'EOF'\n"
            + RSYNCD + "EOF\nrsync --daemon")
        store = run("docker", "inspect", "-f", "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % NETWORK,
                    "bench-store").strip()
        folder = "models--" + REPO.replace("/", "--")
        source = "rsync://%s/gpufleet-models/hub/%s/" % (store, folder)
        before = hub_bytes(port)
        fetched = in_parallel([fetch_argv("bench-store", endpoint)], 1)
        copies = in_parallel([["docker", "exec", name, "sh", "-c", "mkdir -p /data/hub && "
                               + shlex.join(RSYNC + [source, "/data/hub/%s/" % folder])] for name in names], parallel)
        return fetched + copies, hub_bytes(port) - before, fetched, copies
    finally:
        remove(["bench-store"] + names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--hosts", default="1,3,5", help="host counts (default 1,3,5)")
    parser.add_argument("--size-mb", type=int, default=512, help="model size in MiB (default 512)")
    parser.add_argument("--shards", type=int, default=4, help="safetensors files (default 4)")
    parser.add_argument("--rate-mb", type=float, default=50,
                        help="the hub's rate per host address, MiB/s (default 50, a 400 Mbit/s share of the internet)")
    parser.add_argument("--parallel", type=int, default=4, help="model_sync_parallel (default 4)")
    parser.add_argument("--port", type=int, default=18490)
    args = parser.parse_args()
    command = "tests/bench/models/run.sh " + shlex.join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    build_image()
    model = make_model(args.size_mb, args.shards)
    subprocess.run(["docker", "network", "create", NETWORK], capture_output=True, check=False)
    gateway = run("docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", NETWORK).strip()
    endpoint = "http://%s:%d" % (gateway, args.port)
    hub = subprocess.Popen([sys.executable, str(ROOT / "tests/fixtures/hub/hub.py"), "--port", str(args.port),
                            "--rate", str(int(args.rate_mb * (1 << 20))), "--repo", "%s=%s" % (REPO, model)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        for _attempt in range(100):
            try:
                hub_bytes(args.port)
                break
            except OSError:
                time.sleep(0.2)
        for hosts in [int(n) for n in args.hosts.split(",")]:
            hub_s, hub_sent = case_hub(hosts, endpoint, args.port)
            store_s, store_sent, fetched, copies = case_store(hosts, endpoint, args.port, args.parallel)
            rows.append((hosts, hub_s, hub_sent, store_s, fetched, copies, store_sent))
            print("%d host(s): hub %.1f s, store %.1f s" % (hosts, hub_s, store_s), file=sys.stderr, flush=True)
    finally:
        hub.terminate()
        subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True, check=False)
    mib = 1 << 20
    print("# Model distribution: every host from the hub vs. once from the hub and then from the store\n")
    settings = (command, stamp, args.size_mb, args.shards, args.rate_mb, args.parallel)
    print("`%s`, %s. Model: %d MiB in %d safetensors files; hub (fixture) at %.0f MiB/s per host address; "
          "copies from the store %d hosts at a time.\n" % settings)
    print("| hosts | every host from the hub | hub sent | store: fetch once + copies | hub sent | time store/hub |")
    print("|---|---|---|---|---|---|")
    for hosts, hub_s, hub_sent, store_s, fetched, copies, store_sent in rows:
        print("| %d | %.1f s | %d MiB | %.1f s (%.1f + %.1f) | %d MiB | %.2f |" % (
            hosts, hub_s, hub_sent // mib, store_s, fetched, copies, store_sent // mib, store_s / hub_s))


if __name__ == "__main__":
    main()
