"""vLLM failure messages (recorded from the pinned vLLM, see fixtures/vllm_logs/README.md, or in
the shape huggingface_hub and Docker print them) and the settings check against config.json."""

from __future__ import annotations

import pathlib

import pytest

LOGS = pathlib.Path(__file__).parent / "fixtures" / "vllm_logs"
TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 2048, "num_attention_heads": 4,
               "num_key_value_heads": 2, "model_type": "llama"}

# (log file, vLLM's own line begins with, cause named, advice names)
RECORDED = [
    ("max_model_len.log", "Value error, User-specified max_model_len (100000) is greater than the derived",
     "above the model's maximum length", "vllm_max_model_len"),
    ("quantization.log", "Value error, Cannot find the config file for awq", "vllm_quantization does not match",
     "Leave vllm_quantization empty"),
    ("missing_model.log", "huggingface_hub.errors.HFValidationError: Repo id must be in the form",
     "model path or name does not exist", "Check vllm_model"),
    ("unknown_arch.log", "Value error, Model architectures ['GpuFleetNoSuchForCausalLM'] are not supported",
     "does not know the model's architecture", "vllm_image"),
    ("tp_heads.log", "Value error, Total number of attention heads (4) must be divisible by tensor parallel size (3).",
     "does not divide the model's attention heads", "vllm_tensor_parallel_size"),
    ("kv_cache.log", "ValueError: To serve at least one request with the model's max seq len (131072)",
     "KV cache does not fit", "vllm_gpu_memory_utilization"),
    ("cuda_oom.log", "torch.OutOfMemoryError: CUDA out of memory.", "GPU is out of memory",
     "vllm_gpu_memory_utilization"),
    ("gated.log", "huggingface_hub.errors.GatedRepoError: 401 Client Error.", "HTTP 401/403", "vllm_hf_token"),
]


@pytest.mark.parametrize("name, said, cause, advice", RECORDED)
def test_vllm_own_error_line_comes_first_then_the_advice(vllm_filters, name, said, cause, advice):
    log = (LOGS / name).read_text()
    message = vllm_filters.vllm_failure_hint(log, "/opt/models/tiny")
    first = message.splitlines()[0]
    assert first.startswith("vLLM failed to start /opt/models/tiny: vLLM said: " + said), first
    assert "[type=value_error" not in first and len(first) < 500
    assert message.index("vLLM said:") < message.index("likely cause: ") < message.index(cause)
    assert advice in message[message.index(cause):].split("Last log lines:")[0]


def test_the_recorded_logs_are_real_runs(vllm_filters):
    for name, *_rest in RECORDED[:5]:
        log = (LOGS / name).read_text()
        assert log.startswith("# command: python -m vllm.entrypoints.openai.api_server ")
        assert log.rstrip().endswith("# exit: 1")


def test_a_warning_that_mentions_an_error_is_not_the_error(vllm_filters):
    log = (LOGS / "quantization.log").read_text()
    assert "OSError: [Errno 24]" in log  # vLLM's ulimit warning, before the real error
    assert vllm_filters.vllm_error_line(log).startswith("Value error, Cannot find the config file for awq")


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
        "GPU is out of memory",
        "vllm_gpu_memory_utilization",
    ),
    (
        "ValueError: The model's max seq len (131072) is larger than the maximum number of tokens that can be "
        "stored in KV cache (95760). Try increasing `gpu_memory_utilization` or decreasing `max_model_len`",
        "KV cache does not fit",
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
    assert message.startswith("vLLM failed to start some/model: ")
    assert cause in message
    assert advice in message
    assert log.splitlines()[-1] in message


def test_unknown_failure_still_shows_the_log(vllm_filters):
    message = vllm_filters.vllm_failure_hint("line 1\nSegmentation fault", "m")
    assert "no known cause" in message
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


@pytest.mark.parametrize(
    "settings, variable",
    [
        ({"max_model_len": 100000}, "vllm_max_model_len=100000 is above the model's maximum length 2048"),
        ({"max_model_len": 256, "tensor_parallel_size": 3}, "vllm_tensor_parallel_size=3 does not divide the model's 4"),
        ({"max_model_len": 256, "quantization": "awq"}, "vllm_quantization=awq needs a checkpoint quantized"),
    ],
)
def test_settings_vllm_refuses_are_found_in_config_json(vllm_filters, settings, variable):
    problems = vllm_filters.vllm_config_problems(TINY_CONFIG, **settings)
    assert len(problems) == 1 and problems[0].startswith(variable), problems


@pytest.mark.parametrize(
    "config, settings",
    [
        (TINY_CONFIG, {"max_model_len": 2048, "tensor_parallel_size": 2}),
        (TINY_CONFIG, {"max_model_len": 256, "quantization": "fp8"}),  # quantized on load
        (TINY_CONFIG, {"max_model_len": 100000, "allow_long": True}),  # VLLM_ALLOW_LONG_MAX_MODEL_LEN=1
        (dict(TINY_CONFIG, quantization_config={"quant_method": "awq"}), {"max_model_len": 256, "quantization": "awq_marlin"}),
        (dict(TINY_CONFIG, rope_scaling={"type": "linear", "factor": 4.0}), {"max_model_len": 8192}),
        ({"text_config": TINY_CONFIG, "architectures": ["LlavaForConditionalGeneration"]}, {"max_model_len": 2048}),
        ({}, {"max_model_len": 100000, "tensor_parallel_size": 3}),  # nothing known: nothing refused
    ],
)
def test_settings_vllm_accepts_pass(vllm_filters, config, settings):
    assert vllm_filters.vllm_config_problems(config, **settings) == []


def test_a_quantization_other_than_the_checkpoints_is_refused(vllm_filters):
    config = dict(TINY_CONFIG, quantization_config={"quant_method": "awq"})
    problems = vllm_filters.vllm_config_problems(config, 256, 1, "gptq")
    assert problems == ["vllm_quantization=gptq does not match the model's quantization awq (config.json); "
                        "leave it empty or set awq"]


def test_docker_refusing_to_start_the_container_is_said_first(vllm_filters):
    failed = ('Error starting container 14e6: 400 Client Error for http+docker://localhost/v1.41/containers/14e6/start: '
              'Bad Request ("could not select device driver "nvidia" with capabilities: [[gpu]]")')
    message = vllm_filters.vllm_failure_hint("\n\n" + failed, "m")
    assert message.startswith("vLLM failed to start m: vLLM said: Error starting container 14e6")
    assert "likely cause: no GPU or no NVIDIA container runtime" in message
