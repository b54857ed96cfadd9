"""Log excerpts in the shape vLLM, huggingface_hub and Docker print them."""

from __future__ import annotations

import pytest

CASES = [
    (
        "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-abc)\n"
        "Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json.\n"
        "Access to model meta-llama/Llama-3.1-8B-Instruct is restricted. You must have access to it.",
        "HTTP 401/403",
        "vllm_hf_token",
    ),
    (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 79.15 GiB",
        "out of GPU memory",
        "vllm_gpu_memory_utilization",
    ),
    (
        "ValueError: The model's max seq len (131072) is larger than the maximum number of tokens that can be "
        "stored in KV cache (95760). Try increasing `gpu_memory_utilization` or decreasing `max_model_len`",
        "out of GPU memory",
        "vllm_max_model_len",
    ),
    (
        "docker: Error response from daemon: could not select device driver \"nvidia\" with capabilities: [[gpu]].",
        "no GPU",
        "gpu_check.yml",
    ),
    ("RuntimeError: No CUDA GPUs are available", "no GPU", "nvidia_container_toolkit"),
    ("api_server.py: error: unrecognized arguments: --max-modle-len 8192", "command line", "vllm_extra_args"),
]


@pytest.mark.parametrize("log, cause, advice", CASES)
def test_known_causes_are_named_with_advice(vllm_filters, log, cause, advice):
    message = vllm_filters.vllm_failure_hint("INFO starting\n" + log, "some/model")
    assert message.startswith("vLLM failed to start some/model: likely cause:")
    assert cause in message
    assert advice in message
    assert log.splitlines()[-1] in message


def test_unknown_failure_still_shows_the_log(vllm_filters):
    message = vllm_filters.vllm_failure_hint("line 1\nSegmentation fault", "m")
    assert "names no known cause" in message
    assert message.endswith("line 1\nSegmentation fault")


def test_only_the_last_lines_are_shown(vllm_filters):
    message = vllm_filters.vllm_failure_hint("\n".join("line %d" % i for i in range(100)))
    assert "line 99" in message
    assert "line 74\n" not in message


@pytest.mark.parametrize(
    "state, restarts, healthy, status",
    [
        ("running", 0, True, "ready"),
        ("running", 3, True, "ready"),
        ("running", 0, False, "starting"),
        ("created", 0, False, "starting"),
        ("restarting", 1, False, "failed"),
        ("running", 2, False, "failed"),
        ("exited", 0, False, "failed"),
        ("missing", 0, False, "failed"),
    ],
)
def test_vllm_status_classification(vllm_status, state, restarts, healthy, status):
    assert vllm_status.classify(state, restarts, healthy) == status
