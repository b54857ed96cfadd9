"""Two vLLM instances on one host (issue #14): `a` serves tiny-llama on GPU 1, `b` serves tiny-llama-b on
GPU 0 (host_vars). Both answer through nginx and the wrapper, which routes by model; /v1/models lists both;
a rolling update of `b` alone, under load on `a`, replaces b's container and leaves a's untouched with
no failed request."""

import json
import pathlib
import sys

import openai
import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import pebble_root  # noqa: E402
from loadgen import LoadGenerator  # noqa: E402
from playbooks import run_playbook  # noqa: E402
from test_openai_sdk import KEY, MESSAGES, client  # noqa: E402,F401 pylint: disable=unused-import # the SDK fixture

testinfra_hosts = ["ansible://gpu_servers"]

SECRETS = pathlib.Path(__file__).resolve().parents[1].joinpath("secrets").read_text().split()
HOST_VARS = pathlib.Path(__file__).resolve().parents[1] / "host_vars" / "fullstack-bookworm.yml"
MODELS = {"a": "tiny-llama", "b": "tiny-llama-b"}


def container(host, name):
    return json.loads(host.check_output("docker inspect -f '{{json .}}' %s" % name))


@pytest.mark.parametrize("instance", sorted(MODELS))
def test_each_instance_answers_its_model_through_nginx(client, instance):  # noqa: F811
    reply = client.chat.completions.create(model=MODELS[instance], messages=MESSAGES, max_tokens=4)
    assert reply.model == MODELS[instance] and reply.choices[0].message.content is not None


def test_models_lists_every_instance(client):  # noqa: F811
    assert sorted(model.id for model in client.models.list()) == sorted(MODELS.values())


def test_a_model_no_instance_serves_is_an_openai_error(client):  # noqa: F811
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="tiny-llama-c", messages=MESSAGES, max_tokens=4)
    assert error.value.code == "model_not_found" and "tiny-llama-b" in error.value.message


def test_rolling_update_of_one_instance_leaves_the_other_serving(host, gpu_address):
    instances = yaml.safe_load(HOST_VARS.read_text())["vllm_instances"]
    for entry in instances:
        if entry["name"] == "b":
            entry["max_model_len"] = 192  # a setting that replaces b's container
    a_before, b_before = container(host, "vllm-a"), container(host, "vllm-b")
    pebble_root(host, "/tmp/pebble-root.pem")  # the smoke test verifies nginx's certificate with it
    load = LoadGenerator("https://" + gpu_address, KEY, MODELS["a"], workers=2, pause=0.5)
    load.start()
    try:
        rc, out = run_playbook("rolling_update.yml", SECRETS, "-e", "vllm_instances_limit=b",
                               "-e", "smoke_test_ca_file=/tmp/pebble-root.pem",
                               "-e", json.dumps({"vllm_instances": instances}))
    finally:
        load.stop()
    print(load.report("load on instance a through the host's nginx"))
    assert rc == 0, out[-3000:]
    a_after, b_after = container(host, "vllm-a"), container(host, "vllm-b")
    assert (a_after["Id"], a_after["State"]["StartedAt"]) == (a_before["Id"], a_before["State"]["StartedAt"])
    assert b_after["Id"] != b_before["Id"] and "192" in b_after["Args"]
    assert load.ok > 0 and load.failures == [], load.report()
