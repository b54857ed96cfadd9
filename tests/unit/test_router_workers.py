"""The fleet edge's vllm-router workers: one per GPU host, vLLM instance and served model."""

from __future__ import annotations

HOSTVARS = {
    "gpu01": {"vllm_served_model_name": "tiny-llama", "vllm_model": "/opt/models/tiny"},
    "gpu02": {
        "vllm_model": "meta-llama/Llama-3.1-8B-Instruct",
        "vllm_instances": [
            {"name": "a", "model": "meta-llama/Llama-3.1-8B-Instruct", "port": 8000, "gpus": [0]},
            {"name": "b", "model": "m2", "served_model_name": "tiny:b", "port": 8002, "gpus": [1]},
        ],
    },
}
BACKENDS = [
    {"host": "gpu01", "address": "10.0.0.1", "port": 443},
    {"host": "gpu02", "address": "10.0.0.2", "port": 8443},
]


def test_one_worker_per_host_instance_and_model(instance_filters):
    workers = instance_filters.router_workers(BACKENDS, HOSTVARS, 8011)
    assert [(w["host"], w["instance"], w["model"]) for w in workers] == [
        ("gpu01", "server", "tiny-llama"),
        ("gpu02", "a", "meta-llama/Llama-3.1-8B-Instruct"),
        ("gpu02", "b", "tiny:b"),
    ]
    assert workers[0]["url"] == "http://127.0.0.1:8011/b/gpu01/server/tiny-llama"
    # A model name is one path segment: the backends server strips /b/<host>/<instance>/<segment>.
    assert workers[1]["url"] == "http://127.0.0.1:8011/b/gpu02/a/meta-llama_Llama-3.1-8B-Instruct"
    assert workers[2]["url"].endswith("/b/gpu02/b/tiny_b")
    assert (workers[2]["address"], workers[2]["port"]) == ("10.0.0.2", 8443)


def test_models_are_unique_and_sorted(instance_filters):
    workers = instance_filters.router_workers(BACKENDS + BACKENDS[:1], HOSTVARS, 8011)
    assert instance_filters.router_models(workers) == ["meta-llama/Llama-3.1-8B-Instruct", "tiny-llama", "tiny:b"]


def test_no_backends_no_workers(instance_filters):
    assert instance_filters.router_workers([], HOSTVARS, 8011) == []
