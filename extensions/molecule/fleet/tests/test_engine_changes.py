"""Bad engine settings on a serving fleet (issue #18): site.yml refuses what the model's config.json
rules out before it touches anything, and when a new vLLM does not start it puts back the container
that was serving, names vLLM's own error and reports the rollback; traffic through the load balancer
sees no failed request meanwhile, and the failures a client of the host itself sees are reported."""

from __future__ import annotations

import json
import time

import pytest
from loadgen import LoadGenerator
from test_fleet import API_KEY, GPUS, MODEL, address, backend_files, lb_url, node, playbook

HOST = GPUS[0]


class PacedLoad(LoadGenerator):
    """One request every half second straight to a host's nginx: how long that host did not serve."""

    def request(self, stream):
        time.sleep(0.5)
        return super().request(stream)


def vllm_container():
    return json.loads(node(HOST).check_output("docker inspect vllm-server"))[0]


def site_vllm_under_load(*extra):
    """site.yml's vLLM plays on HOST with EXTRA options while load runs through the load balancer and
    straight to HOST; returns (exit code, output, load through the LB, load straight to HOST)."""
    through_lb = LoadGenerator(lb_url(), API_KEY, MODEL, workers=2)
    direct = PacedLoad("https://%s" % address(HOST)[0], API_KEY, MODEL, workers=1)
    through_lb.start()
    direct.start()
    try:
        rc, out = playbook("site.yml", "--tags", "vllm", "--limit", HOST, *extra)
    finally:
        through_lb.stop()
        direct.stop()
    print(through_lb.report())
    print("straight to %s (one request per 0.5 s): %s" % (HOST, direct.report().split(";")[0]))
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


@pytest.mark.parametrize(
    "extra, said",
    [
        (["-e", "vllm_max_model_len=100000", "-e", "vllm_config_check=false"],
         "vLLM said: Value error, User-specified max_model_len (100000) is greater than the derived max_model_len"),
        (["-e", "vllm_quantization=awq", "-e", "vllm_config_check=false"],
         "vLLM said: Value error, Cannot find the config file for awq"),
        (["-e", "vllm_model=/opt/models/nope"],
         "vLLM said: huggingface_hub.errors.HFValidationError: Repo id must be in the form"),
    ],
    ids=["max-model-len", "quantization", "missing-model"],
)
def test_a_new_vllm_that_does_not_start_is_rolled_back_while_the_fleet_serves(extra, said):
    before = vllm_container()
    rc, out, through_lb, direct = site_vllm_under_load(*extra)
    assert rc != 0, out[-3000:]
    assert said in out, out[-3000:]
    assert "ROLLED BACK on %s" % HOST in out and "serves again" in out, out[-3000:]
    after = vllm_container()
    # The very container that served before: same id, image and command line, running again.
    assert after["Id"] == before["Id"] and after["Name"] == "/vllm-server"
    assert (after["Config"]["Image"], after["Config"]["Cmd"]) == (before["Config"]["Image"], before["Config"]["Cmd"])
    assert after["State"]["Running"]
    assert "vllm-server-previous" not in node(HOST).check_output("docker ps -a --format '{{.Names}}'")
    assert not backend_files()[HOST].rstrip().endswith(" down;"), "the host must be back in the load balancer"
    assert through_lb.failures == [], through_lb.report()
    # The host's own clients saw it down for the rollback window (counted and printed above); it serves now.
    status, complete, _backend, _body = direct.request(False)
    assert status == 200 and complete
