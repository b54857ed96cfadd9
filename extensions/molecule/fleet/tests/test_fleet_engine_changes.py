"""Bad engine settings on a serving fleet (issue #18): site.yml refuses what the model's config.json
rules out before it touches anything, and when a new vLLM does not start it puts back the container
that was serving, names vLLM's own error and reports the rollback; traffic through the load balancer
sees no failed request meanwhile, and the failures a client of the host itself sees are reported.

One rollback runs end to end here (a mistyped model path, with the default settings: each rollback
costs a failed vLLM start and a restart of the old one on the 2-core test machine). vLLM's messages
for the other bad settings (max model length, quantization, ...) are checked on logs recorded from the
pinned vLLM in tests/unit/test_vllm_failure_hint.py; the role passes them on the same way."""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from loadgen import LoadGenerator  # noqa: E402
from test_fleet import API_KEY, GPUS, LOAD_PAUSE, MODEL, address, drained_hosts, lb_url, node, playbook, print_recap  # noqa: E402

HOST = GPUS[0]


def vllm_container():
    return json.loads(node(HOST).check_output("docker inspect vllm-server"))[0]


def site_vllm_under_load(*extra):
    """site.yml's vLLM plays on HOST with EXTRA options while load runs through the load balancer and
    straight to HOST; returns (exit code, output, load through the LB, load straight to HOST)."""
    through_lb = LoadGenerator(lb_url(), API_KEY, MODEL, workers=2, pause=LOAD_PAUSE)
    # One request every half second straight to the host's nginx: how long that host did not serve.
    direct = LoadGenerator("https://%s" % address(HOST)[0], API_KEY, MODEL, workers=1, pause=0.5)
    through_lb.start()
    direct.start()
    try:
        rc, out = playbook("site.yml", "--tags", "vllm", "--limit", HOST, *extra)
    finally:
        through_lb.stop()
        direct.stop()
    print(through_lb.report())
    print(direct.report("straight to %s (one request per 0.5 s)" % HOST).split(";")[0])
    return rc, out, through_lb, direct


def test_settings_the_model_rules_out_fail_before_the_container_is_touched():
    before = vllm_container()
    rc, out, through_lb, direct = site_vllm_under_load(
        "-e", "vllm_max_model_len=100000", "-e", "vllm_quantization=awq")
    assert rc != 0, out[-3000:]
    assert "nothing was changed on %s" % HOST in out, out[-3000:]
    assert "vllm_max_model_len=100000 is above the model's maximum length 2048" in out
    assert "vllm_quantization=awq needs a checkpoint quantized with it" in out
    assert "Mark this host on its load balancers as drained" not in out
    after = vllm_container()
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert through_lb.failures == [] and direct.failures == []


def test_a_new_vllm_that_does_not_start_is_rolled_back_while_the_fleet_serves():
    before = vllm_container()
    # Not refused by the settings check: the path has no config.json to check against.
    rc, out, through_lb, direct = site_vllm_under_load("-e", "vllm_model=/opt/models/nope")
    print_recap(out)
    assert rc != 0, out[-3000:]
    assert "vLLM said: huggingface_hub.errors.HFValidationError: Repo id must be in the form" in out, out[-3000:]
    assert "ROLLED BACK on %s" % HOST in out and "serves again" in out, out[-3000:]
    after = vllm_container()
    # The very container that served before: same id, image and command line, running again.
    assert after["Id"] == before["Id"] and after["Name"] == "/vllm-server"
    assert (after["Config"]["Image"], after["Config"]["Cmd"]) == (before["Config"]["Image"], before["Config"]["Cmd"])
    assert after["State"]["Running"]
    assert "vllm-server-previous" not in node(HOST).check_output("docker ps -a --format '{{.Names}}'")
    assert HOST not in drained_hosts(), "the host must be back in the edge"
    assert through_lb.failures == [], through_lb.report()
    # The host's own clients saw it down for the rollback window (counted and printed above); it serves now.
    status, complete, _backend, _body = direct.request(False)
    assert status == 200 and complete
