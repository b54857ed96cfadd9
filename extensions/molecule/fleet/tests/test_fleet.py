"""The fleet behind its edge (nginx and vllm-router): routing, the OpenAI SDK on one base URL, client
addresses, metrics access, an unreachable host, and rolling updates under load (one that fails and stops,
one that succeeds)."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request

import httpx2
import openai
import pytest
import testinfra

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import put, request  # noqa: E402
from loadgen import LoadGenerator  # noqa: E402
from playbooks import run_playbook  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SECRETS = HERE.parent.joinpath("secrets").read_text().split()
API_KEY = SECRETS[1]
SCOPED_KEY, EXPIRED_KEY = SECRETS[2:4]  # group_vars/gpu_servers/fleet.yml: team-b (MODEL_B only), retired
METERED_KEY = SECRETS[5]  # the key metered (4 requests per minute); SECRETS[4] is the counter store's password
GPUS = ["fleet-gpu01", "fleet-gpu02", "fleet-gpu03"]
LB = "fleet-lb01"
MODEL = "tiny-llama"
MODEL_B = "tiny-llama-b"
# Who serves what (host_vars/fleet-gpu03.yml): two models, one on two hosts, one on one.
SERVED = {"fleet-gpu01": MODEL, "fleet-gpu02": MODEL, "fleet-gpu03": MODEL_B}
A_HOSTS = [gpu for gpu in GPUS if SERVED[gpu] == MODEL]
IMAGE = "gpufleet-test/vllm-cpu:0.32.0"
NEW_IMAGE = "gpufleet-test/vllm-cpu:0.32.0-r2"
# The fixture hub (tests/fixtures/hub, on this Docker host) and the model it serves to the model store.
HUB = "http://127.0.0.1:18480"
HUB_MODEL = "gpufleet-test/tiny-llama"
HUB_FILES = pathlib.Path(os.environ.get("GPUFLEET_CACHE", "/var/cache/gpufleet"), "hub")
# fleet-gpu03's model comes from a directory on the store (group_vars/model_store), not from the hub.
LOCAL_MODEL, LOCAL_SOURCE = "local/tiny-llama-b", "/mnt/models/tiny-llama-b"
COPIES = {gpu: "/data/vllm-models/hub/models--" + (HUB_MODEL if SERVED[gpu] == MODEL else LOCAL_MODEL).replace("/", "--")
          for gpu in GPUS}
# Seconds each client of the load through the load balancer waits between its requests while a test
# changes the fleet. Requests are in flight all the time, and CPU is left for the vLLM that starts on the
# same two cores: measured, a vLLM start took 17-23 s under this load and 57 s under clients sending back
# to back (which took what the cores serve, about 9 requests per second).
LOAD_PAUSE = 0.5


def node(name):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, os.environ["MOLECULE_INVENTORY_FILE"]))


def address(container):
    networks = json.loads(
        subprocess.check_output(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container], text=True)
    )
    network = next(iter(networks.values()))
    return network["IPAddress"], network["Gateway"]


def playbook(name, *extra):
    return run_playbook(name, SECRETS, *extra)


def lb_url():
    return "https://%s" % address(LB)[0]


def openai_client(api_key=API_KEY):
    """The official SDK on the edge's one base URL (its certificate is self-signed)."""
    return openai.OpenAI(base_url=lb_url() + "/v1", api_key=api_key, max_retries=0, timeout=120,
                         http_client=httpx2.Client(verify=False))


def edge_local(url):
    """GET URL on the edge host (vllm-router and its metrics listen on 127.0.0.1 there only), as text."""
    script = "import urllib.request; print(urllib.request.urlopen(%r).read().decode())" % url
    return node(LB).check_output("python3 -c %s" % shlex.quote(script))


def router_get(path):
    """GET PATH from vllm-router on the edge, parsed."""
    return json.loads(edge_local("http://127.0.0.1:8010" + path))


def router_workers():
    """vllm-router's workers: {url: healthy}."""
    return {w["url"]: w["is_healthy"] for w in router_get("/workers")["workers"]}


def worker_url(gpu):
    return "http://127.0.0.1:8011/b/%s/server/%s" % (gpu, SERVED[gpu])


def drained_hosts():
    """The hosts the edge holds out (rolling_update.yml's drain)."""
    return node(LB).check_output("ls /etc/gpufleet/router/drained").split()


def print_recap(out):
    """The playbook's slowest tasks (profile_tasks) into the verify log."""
    print(out[out.rfind("TASKS RECAP"):].split("\n\n")[0])


def load_balanced_requests(gpu, since, until):
    """Lines of GPU's nginx access log for requests the load balancer passed on (their client is the load
    generator's address, as the backends log it) that ended between SINCE and UNTIL (epoch seconds)."""
    client = address(LB)[1]
    lines = node(gpu).check_output("cat /var/log/nginx/access.log").splitlines()
    found = []
    for line in lines:
        stamp = re.match(re.escape(client) + r" \[([^]]+)\]", line)
        if stamp:
            ended = datetime.datetime.strptime(stamp.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp()
            if since <= ended <= until:
                found.append(line)
    return found


def vllm_started(gpu):
    """When GPU's vllm-server container started (epoch seconds)."""
    started = node(gpu).check_output("docker inspect -f '{{.State.StartedAt}}' vllm-server")
    return datetime.datetime.fromisoformat(started[:19] + "+00:00").timestamp()


def vllm_image(gpu):
    return node(gpu).check_output("docker inspect -f '{{.Config.Image}}' vllm-server")


def test_the_edge_routes_to_every_instance_of_the_fleet_and_its_config_is_valid():
    listed = json.loads(node(LB).file("/etc/gpufleet/router/workers.json").content_string)
    assert sorted(w["url"] for w in listed) == [worker_url(gpu) for gpu in GPUS]
    assert {w["host"]: w["model"] for w in listed} == SERVED
    assert router_workers() == {worker_url(gpu): True for gpu in GPUS}
    assert drained_hosts() == []
    assert node(LB).run("nginx -t").rc == 0
    assert node(LB).service("nginx").is_running
    assert node(LB).service("gpufleet-router").is_running


def test_requests_are_spread_over_every_backend():
    # Different prompts: each request is a new routing key, and the router spreads new keys over the hosts.
    before = {gpu: len(load_balanced_requests(gpu, 0, 2e9)) for gpu in A_HOSTS}
    load = LoadGenerator(lb_url(), API_KEY, MODEL, workers=4, vary=True)
    load.start()
    time.sleep(8)
    load.stop()
    print(load.report())
    assert load.ok > 0 and not load.failures, load.report()
    served = {gpu: len(load_balanced_requests(gpu, 0, 2e9)) - before[gpu] for gpu in A_HOSTS}
    assert all(served.values()), served


def router_served():
    """vllm-router's requests sent per worker so far (its Prometheus counter)."""
    served = {}
    for line in edge_local("http://127.0.0.1:8012/metrics").splitlines():
        found = re.match(r'vllm_router_processed_requests_total\{worker="([^"]+)"\} (\S+)', line)
        if found:
            served[found.group(1)] = float(found.group(2))
    return served


def test_each_conversation_stays_on_one_host_and_conversations_spread():
    # Runs right after the spread test, whose conversations are balanced over both hosts (router_session_ttl keeps
    # them counted): eight new ones then go to both. Without the edge's routing key (X-Session-ID from the first
    # user message) a conversation's turns would each pick a host anew.
    client = openai_client()
    hosts = {}
    for conversation in range(8):
        messages = [{"role": "system", "content": "You answer questions about GPU fleets."},
                    {"role": "user", "content": "Conversation %d of the stickiness test %s: what is a KV cache?"
                     % (conversation, time.time())}]
        for turn in range(3):
            before = router_served()
            answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
            after = router_served()
            went = [worker for worker, count in after.items() if count > before.get(worker, 0)]
            assert len(went) == 1, (before, after)
            hosts.setdefault(conversation, set()).add(went[0])
            messages += [{"role": "assistant", "content": answer.choices[0].message.content or "-"},
                         {"role": "user", "content": "And turn %d?" % (turn + 2)}]
    print(hosts)
    assert all(len(workers) == 1 for workers in hosts.values()), hosts
    assert set().union(*hosts.values()) == {worker_url(gpu) for gpu in A_HOSTS}, hosts


def test_the_edge_answers_for_the_whole_fleet_in_openai_shape():
    client = openai_client()
    assert sorted(m.id for m in client.models.list().data) == [MODEL, MODEL_B]
    for model in (MODEL, MODEL_B):
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.model == model and answer.choices[0].message.content is not None
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
        assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop"), chunks[-1:]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert missing.value.body["code"] == "model_not_found", missing.value.body
    assert MODEL in missing.value.body["message"] and MODEL_B in missing.value.body["message"], missing.value.body
    with pytest.raises(openai.AuthenticationError):
        openai_client("sk-wrong").models.list()


def test_a_key_limited_to_a_model_gets_only_that_model_fleet_wide_and_an_expired_key_none():
    scoped = openai_client(SCOPED_KEY)
    assert [m.id for m in scoped.models.list().data] == [MODEL_B]
    answer = scoped.chat.completions.create(model=MODEL_B, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert answer.model == MODEL_B
    for stream in (False, True):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            scoped.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=stream)
        assert refused.value.body["code"] == "model_not_allowed" and MODEL in refused.value.body["message"]
    with pytest.raises(openai.AuthenticationError) as expired:
        openai_client(EXPIRED_KEY).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert expired.value.body["code"] == "api_key_expired", expired.value.body


def test_stopped_hosts_get_no_requests_their_model_goes_to_the_others_or_answers_503():
    gone, other = A_HOSTS
    [only_b] = [gpu for gpu in GPUS if SERVED[gpu] == MODEL_B]
    load = LoadGenerator(lb_url(), API_KEY, MODEL, workers=4, vary=True)
    load.start()
    try:
        time.sleep(2)
        # nginx stops gracefully: requests on the host finish, new connections are refused.
        for gpu in (gone, only_b):
            node(gpu).check_output("systemctl stop nginx")
        stopped = time.time()
        serving = router_workers()
        while {worker_url(gone), worker_url(only_b)} & set(serving) and time.time() < stopped + 10:
            serving = router_workers()
        out_after = time.time() - stopped
        time.sleep(2)
        with pytest.raises(openai.APIStatusError) as unavailable:
            openai_client().chat.completions.create(
                model=MODEL_B, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        time.sleep(3)
        during = time.time()
    finally:
        for gpu in (gone, only_b):
            node(gpu).check_output("systemctl start nginx")
        load.stop()
    print(load.report())
    print("out of the router %.2f s after their nginx stopped" % out_after)
    # Out within 2 s (the bound): the router role's watch probes /ready every 0.5 s and takes a worker
    # out of vllm-router at its first failed probe.
    assert serving == {worker_url(other): True}, serving
    assert out_after <= 2, "out of the router %.1f s after their nginx stopped" % out_after
    assert unavailable.value.status_code == 503 and unavailable.value.response.headers["retry-after"], unavailable.value
    assert unavailable.value.body["type"] == "service_unavailable", unavailable.value.body
    assert load_balanced_requests(other, stopped, during), "the other host must take the model's requests"
    # The log has whole seconds: a margin of one at each end (nginx starts again right after `during`).
    assert not load_balanced_requests(gone, stopped + 1, during - 1)
    assert not load.failures, load.report()
    deadline = time.time() + 30
    everyone = {worker_url(gpu): True for gpu in GPUS}
    while router_workers() != everyone and time.time() < deadline:
        time.sleep(1)
    assert router_workers() == everyone, "back in service once they answer /ready again"


def test_a_keys_limits_hold_across_two_edge_hosts_and_a_store_restart():
    """metered may start 4 requests a minute, counted in fleet-lb01's counter store by every wrapper. Two edge
    hosts, each with its own nginx and its own per-host limits, draw from that one budget: the fleet edge
    (fleet-lb01, routed to gpu01 or gpu02) and gpu03's own HTTPS endpoint."""
    edge = openai_client(METERED_KEY)
    direct = openai.OpenAI(base_url="https://%s/v1" % address("fleet-gpu03")[0], api_key=METERED_KEY, max_retries=0,
                           timeout=120, http_client=httpx2.Client(verify=False))
    hi = [{"role": "user", "content": "hi"}]
    left = []
    for sdk, model in ((edge, MODEL), (direct, MODEL_B), (edge, MODEL)):
        raw = sdk.chat.completions.with_raw_response.create(model=model, messages=hi, max_tokens=2)
        assert raw.headers["x-ratelimit-limit-requests"] == "4"
        left.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert left == [3, 2, 1]
    # The store restarts (its append-only file keeps the counters) and goes on counting.
    node(LB).check_output("systemctl restart redis-server")
    raw = direct.chat.completions.with_raw_response.create(model=MODEL_B, messages=hi, max_tokens=2)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    for sdk, model in ((edge, MODEL), (direct, MODEL_B)):
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model=model, messages=hi, max_tokens=2)
        # Through the edge too, the wrapper's answer arrives as it wrote it: OpenAI's headers and body.
        headers = refused.value.response.headers
        assert refused.value.body["code"] == "rate_limit_exceeded", refused.value.body
        assert "4 requests per minute" in refused.value.body["message"]
        assert 1 <= int(headers["retry-after"]) <= 15 and headers["x-ratelimit-remaining-requests"] == "0"
    # Without the password the store answers nothing.
    anonymous = node(LB).run("redis-cli -h 127.0.0.1 get x")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr


def hub_downloads():
    """{repo: {file: times its content was sent}} since the fixture hub started (prepare)."""
    return json.loads(urllib.request.urlopen(HUB + "/_fixture/downloads", timeout=10).read())


def weights_digest(gpu):
    return node(gpu).check_output("sha256sum %s/snapshots/*/model.safetensors | cut -d' ' -f1" % COPIES[gpu])


def recap_changes(out):
    """{host: changed count} from the play recap."""
    return {host: int(changed) for host, changed in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", out, re.M)}


def test_each_model_comes_from_the_hub_once_for_the_whole_fleet_and_vllm_runs_offline():
    # Two GPU hosts serve the hub model; only the store (fleet-lb01) asked the hub, and it fetched every file
    # once, through converge and the check-mode run. The third host's model came from the store's directory.
    repo = HUB_FILES / HUB_MODEL
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert hub_downloads() == {HUB_MODEL: {name: 1 for name in files}}
    clients = {line.split()[0] for line in (HUB_FILES / "hub.log").read_text().splitlines()} - {"127.0.0.1"}
    assert clients == {address(LB)[0]}, clients
    token = node(LB).file("/etc/gpufleet/model-store/hf_token")
    assert token.mode == 0o600 and token.user == "root", "the hub token must be a 0600 file on the store"
    hub_weights = subprocess.check_output(["sha256sum", str(repo / "model.safetensors")], text=True).split()[0]
    for gpu in GPUS:
        # The same weights by both ways; each host holds only the model it serves.
        assert weights_digest(gpu) == hub_weights, gpu
        assert node(gpu).check_output("ls /data/vllm-models/hub") == COPIES[gpu].rsplit("/", 1)[1], gpu
        env = json.loads(node(gpu).check_output("docker inspect -f '{{json .Config.Env}}' vllm-server"))
        assert "HF_HUB_OFFLINE=1" in env, (gpu, env)
        assert node(gpu).check_output("docker inspect -f '{{.State.Running}}' vllm-server") == "true"


def test_a_model_from_a_directory_is_imported_with_a_manifest_and_served_by_its_id():
    store = "/srv/gpufleet-models/hub/models--" + LOCAL_MODEL.replace("/", "--")
    commit = node(LB).file(store + "/refs/main").content_string.strip()
    manifest = json.loads(node(LB).file("%s/trees/%s.json" % (store, commit)).content_string)["files"]
    # Every file but hidden ones (a download tool's .cache/, the fixture's completion mark).
    sources = node(LB).check_output("cd %s && find . -type f ! -path '*/.*' -printf '%%P\\n' | sort" % LOCAL_SOURCE).split()
    assert sorted(manifest) == sources
    for name in ("config.json", "model.safetensors"):
        digest = node(LB).check_output("sha256sum %s/%s | cut -d' ' -f1" % (LOCAL_SOURCE, name))
        assert manifest[name]["lfs_sha256"] == digest, name
    # The host's copy is the store's revision, and vLLM serves it offline by its id.
    assert node("fleet-gpu03").file(COPIES["fleet-gpu03"] + "/refs/main").content_string.strip() == commit
    args = node("fleet-gpu03").check_output("docker inspect -f '{{json .Args}}' vllm-server")
    assert LOCAL_MODEL in json.loads(args), args
    answer = openai_client().chat.completions.create(model=MODEL_B, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=2)
    assert answer.model == MODEL_B and answer.usage.completion_tokens > 0


def test_the_images_are_built_or_pulled_once_on_the_store_and_loaded_on_every_host():
    # The wrapper's is built there; vLLM's the store has (here from its fixture archive; pulled on a real one).
    for image, container in (("gpufleet/vllm-wrapper:0.1.0", "vllm-wrapper"), (IMAGE, "vllm-server")):
        archive = re.sub(r"[^A-Za-z0-9._-]", "_", image) + ".tar"
        built = node(LB).check_output("docker image inspect -f '{{.Id}}' %s" % image)
        assert node(LB).file("/srv/gpufleet-models/images/" + archive).is_file, image
        for gpu in GPUS:
            assert node(gpu).check_output("docker image inspect -f '{{.Id}}' %s" % image) == built, (gpu, image)
            # Nothing built on the GPU host, no copied archive left behind.
            assert not node(gpu).file("/var/tmp/" + archive).exists, (gpu, image)
            assert node(gpu).check_output("docker inspect -f '{{.Image}}' %s" % container) == built, (gpu, image)
        assert not node(gpu).file("/opt/gpufleet/wrapper-build").exists, gpu


def test_offline_gpu_hosts_reach_only_their_network_and_get_packages_through_the_store():
    store, gateway = address(LB)
    probe = "python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)' %s %s"
    for gpu in GPUS:
        # Not the Docker host (the fixture hub), not Debian's mirror, not PyPI (prepare.yml cut them off).
        for host, port in ((gateway, 18480), ("deb.debian.org", 80), ("pypi.org", 443)):
            assert node(gpu).run(probe % (host, port)).rc != 0, (gpu, host, port)
        conf = node(gpu).file("/etc/apt/apt.conf.d/80gpufleet-proxy").content_string
        assert 'Acquire::http::Proxy "http://%s:3142";' % store in conf, conf
        # apt still works: through the store's apt-cacher-ng, which logs the host as its client.
        update = node(gpu).run("apt-get update")
        assert update.rc == 0, update.stdout + update.stderr
    log = node(LB).check_output("cat /var/log/apt-cacher-ng/apt-cacher.log")
    for gpu in GPUS:
        assert address(gpu)[0] in log, gpu
    # The store needs no proxy itself.
    assert not node(LB).file("/etc/apt/apt.conf.d/80gpufleet-proxy").exists


def test_a_damaged_model_file_is_copied_again_from_the_store_and_a_rerun_copies_nothing():
    gpu, downloads = GPUS[1], hub_downloads()
    good = weights_digest(gpu)
    # One byte of the weights changed in place, the size kept (a bad disk, not a missing file).
    node(gpu).check_output("printf X | dd of=$(realpath %s/snapshots/*/model.safetensors) bs=1 seek=4096 "
                           "conv=notrunc status=none" % COPIES[gpu])
    assert weights_digest(gpu) != good
    rc, out = playbook("models.yml")
    assert rc == 0, out[-3000:]
    assert recap_changes(out)[gpu] > 0 and weights_digest(gpu) == good, out[-3000:]
    assert all(changed == 0 for host, changed in recap_changes(out).items() if host != gpu), out[-3000:]
    # From the store: the hub sent nothing more.
    assert hub_downloads() == downloads
    for extra in ([], ["--check"]):
        rc, out = playbook("models.yml", *extra)
        assert rc == 0 and set(recap_changes(out).values()) == {0}, out[-3000:]


def test_backends_count_the_real_client_not_the_load_balancer():
    load = LoadGenerator(lb_url(), API_KEY, MODEL, workers=1)
    for _attempt in range(3):
        load.request(False)
    client = address(LB)[1]  # this test runs on the Docker host: the network's gateway
    # The last chat request each host logged (vllm-router's own health checks and render calls come from the edge).
    lines = [node(gpu).check_output("grep 'POST /v1/chat/completions HTTP' /var/log/nginx/access.log | tail -n 1 || true")
             for gpu in GPUS]
    assert any(line.startswith(client + " ") for line in lines), lines
    assert not any(line.startswith(address(LB)[0] + " ") for line in lines), lines


def test_hosts_without_a_gpu_run_the_node_exporter_and_no_dcgm_exporter():
    # The GPU-less path of the exporters role (the fullstack host is a simulated GPU host).
    for gpu in GPUS:
        host = node(gpu)
        fact = json.loads(host.file("/etc/ansible/facts.d/gpufleet_exporters.fact").content_string)
        assert fact == {"node": True, "dcgm": False}, (gpu, fact)
        names = host.check_output("docker ps -a --format '{{.Names}}'").split()
        assert "vllm-server" in names and "dcgm-exporter" not in names, (gpu, names)
        assert host.service("prometheus-node-exporter").is_running


def test_host_metrics_are_not_reachable_from_other_hosts():
    gpu = GPUS[0]
    url = "https://%s/metrics/vllm" % gpu  # the name in the host's self-signed certificate
    cert, copy = "/etc/nginx/tls/%s.crt" % gpu, "/tmp/%s.crt" % gpu
    put(node(LB), copy, node(gpu).file(cert).content_string)
    assert request(node(LB), url, connect_to=address(gpu)[0], ca_file=copy)[0] == 403
    status, local = request(node(gpu), url, connect_to="127.0.0.1", ca_file=cert)
    assert status == 200 and "vllm:num_requests_running" in local


def playbook_with_unreachable_host(name):
    """Run playbooks/NAME on the scenario's hosts plus `fleet-gone`, a GPU host whose name does not
    resolve: SSH fails at once (UNREACHABLE), and no address is known for it, so the load balancer
    must leave it out (an address of its own, such as 127.0.0.1, would loop back to the LB)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as extra:
        extra.write(
            "gpu_servers:\n  hosts:\n    fleet-gone:\n"
            "      ansible_connection: ssh\n      ansible_host: fleet-gone.invalid\n"
        )
    try:
        return playbook(name, "-i", extra.name)
    finally:
        os.unlink(extra.name)


def test_an_unreachable_host_does_not_stop_the_others():
    rc, out = playbook_with_unreachable_host("health_check.yml")
    assert rc != 0
    assert re.search(r"fleet-gone.*UNREACHABLE", out), out[-3000:]
    for gpu in GPUS:
        assert re.search(r"%s\s+OK\s" % gpu, out), out[-3000:]
    assert "Unhealthy: fleet-gone" in out


def test_site_yml_again_changes_nothing_and_goes_on_when_a_host_is_unreachable():
    # site.yml on the converged fleet (the tests before this one change nothing; those that change
    # the fleet come after it and in test_fleet_engine_changes.py): also the scenario's idempotence check,
    # which Molecule's own step would repeat at the cost of one more site.yml run (CI budget).
    rc, out = playbook_with_unreachable_host("site.yml")
    assert rc != 0, out[-3000:]
    assert re.search(r"fleet-gone\s+: ok=0 .*unreachable=1", out), out[-3000:]
    for host in GPUS + [LB]:
        assert re.search(r"%s\s+: ok=[1-9]\d* +changed=0 +unreachable=0 +failed=0" % host, out), out[-3000:]
    deployed = len(GPUS) + 1  # and the load balancer
    assert "NOT deployed (failed or unreachable, see above): fleet-gone. Deployed: %d of %d host(s)." % (
        deployed, deployed + 1) in out, out[-3000:]
    listed = json.loads(node(LB).file("/etc/gpufleet/router/workers.json").content_string)
    assert sorted(w["host"] for w in listed) == GPUS, listed


def test_a_failing_rollout_stops_at_the_first_host_and_the_fleet_keeps_serving():
    before = {gpu: node(gpu).check_output("docker ps -q --no-trunc -f name=vllm-server") for gpu in GPUS}
    load = LoadGenerator(lb_url(), API_KEY, MODEL, pause=LOAD_PAUSE)
    load.start()
    try:
        # With the image from the store, the store's pull would fail before any host left the edge; pulled on the
        # host, the first host fails its upgrade.
        rc, out = playbook("rolling_update.yml", "-e", "vllm_image=gpufleet-test/vllm-cpu:no-such-tag",
                           "-e", "vllm_image_from_store=false")
    finally:
        load.stop()
    print(load.report())
    assert rc != 0, out
    assert "fleet-gpu01" in out and "no-such-tag" in out
    assert drained_hosts() == [GPUS[0]], "the failed host must stay out of the edge"
    assert router_workers() == {worker_url(gpu): True for gpu in GPUS[1:]}
    for gpu in GPUS[1:]:
        assert node(gpu).check_output("docker ps -q --no-trunc -f name=vllm-server") == before[gpu]
    assert not load.failures, load.report()
    assert load.ok > 0


def test_rolling_update_under_load_has_zero_failed_requests():
    # A really different image (a new ID), as a release would be: on the model store, which ships it to the
    # hosts before any of them leaves the edge (an offline fleet). The hosts of the model under load: the only
    # host of the other model would leave it without a backend while it restarts (503 with Retry-After).
    node(LB).check_output("printf 'FROM %s\\nLABEL org.gpufleet.test-release=r2\\n' | docker build -q -t %s -", IMAGE, NEW_IMAGE)
    # Every request its own conversation: the edge keeps a conversation on one host, so one prompt repeated would
    # load one host only and leave the other's drain nothing to prove.
    load = LoadGenerator(lb_url(), API_KEY, MODEL, pause=LOAD_PAUSE, vary=True)
    load.start()
    try:
        rc, out = playbook("rolling_update.yml", "-e", "vllm_image=" + NEW_IMAGE, "--limit", ",".join(A_HOSTS + [LB]))
    finally:
        load.stop()
    report = load.report()
    print(report)
    print_recap(out)
    pathlib.Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp"), "rolling-update-report.txt").write_text(report)
    assert rc == 0, out[-4000:]
    for gpu in A_HOSTS:
        assert vllm_image(gpu) == NEW_IMAGE
        # Out of the load balancer while its vLLM was replaced: from before the old one stopped (the drain
        # comes 20 s or more before the new container starts) until after the new one was ready (17 s or more
        # after its start). Without the drain the load balancer's retries can hide the restart from clients.
        started = vllm_started(gpu)
        passed_on = load_balanced_requests(gpu, started - 5, started + 12)
        assert passed_on == [], "%s got load-balanced requests while its vLLM was replaced: %s" % (gpu, passed_on[:5])
    assert drained_hosts() == []
    assert router_workers() == {worker_url(gpu): True for gpu in GPUS}
    assert not load.failures, report
    # Traffic ran through the whole rollout, not only around it.
    assert load.ok >= 30, report
