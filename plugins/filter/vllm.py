# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM start failures and settings: name the cause of a failed start from vLLM's own log, and
check the engine settings against the model's config.json before the container is touched."""

from __future__ import annotations

import re

# vLLM's own error line: a pydantic "Value error, ..." or the last line of a Python exception,
# optionally behind vLLM's process prefix "(EngineCore pid=7) " and its logger's
# "ERROR 11-27 15:21:42 [core.py:1105] " (the engine process logs its traceback that way).
_PREFIX = r"^\s*(?:\([\w.-]+ pid=\d+\)\s*)?(?:ERROR \d\d-\d\d [\d:.]+ \[[\w.:]+\]\s*)?"
ERROR_LINE = re.compile(
    _PREFIX + r"(Value error, .*|(?:[\w.]+\.)?\w*(?:Error|Exception): .*|CUDA out of memory.*"
    # Docker's own refusal to start the container (no nvidia runtime, a bad command).
    r"|(?:docker: )?Error (?:response from daemon|starting container).*)$",
    re.MULTILINE,
)
# Lines that only say that an error happened somewhere else.
GENERIC = re.compile(
    r"validation errors? for \w+$|See root cause above|Engine core initialization failed|"
    r"^\w*Error: \d+ validation error|APIServer process.*failed",
)
MAX_LINE = 400

# (cause, patterns, advice); the first cause whose pattern appears in the log wins.
CAUSES = [
    (
        "vllm_max_model_len is above the model's maximum length",
        [r"User-specified max_model_len \(\d+\) is greater than the derived max_model_len"],
        "Set vllm_max_model_len to at most the model's max_position_embeddings (named in the error above).",
    ),
    (
        "the KV cache does not fit vllm_max_model_len at this vllm_gpu_memory_utilization",
        [
            r"KV\s+cache is needed, which is larger than the available KV cache memory",
            r"No available memory for the cache blocks",
            r"is larger than the maximum number of tokens that can be stored in KV cache",
        ],
        "Lower vllm_max_model_len (the error may name the largest that fits), raise "
        "vllm_gpu_memory_utilization (e.g. 0.95), or spread the model over more GPUs (vllm_tensor_parallel_size).",
    ),
    (
        "the GPU is out of memory",
        [r"CUDA out of memory", r"OutOfMemoryError", r"CUDA error: out of memory"],
        "Lower vllm_gpu_memory_utilization (e.g. 0.85) when other processes use the GPU, shorten "
        "vllm_max_model_len, or serve a smaller or quantized model / raise vllm_tensor_parallel_size.",
    ),
    (
        "vllm_tensor_parallel_size does not divide the model's attention heads",
        [r"number of attention heads \(\d+\) must be divisible by tensor parallel size"],
        "Set vllm_tensor_parallel_size to a divisor of the head count named above (1, 2, 4 or 8 for most models).",
    ),
    (
        "vllm_quantization does not match the model",
        [
            r"Quantization method specified in the model config .* does not match",
            r"Cannot find the config file for \w+",
            r"Unknown quantization method",
        ],
        "Leave vllm_quantization empty so vLLM reads the method from the model's config.json, or set it "
        "to that method (e.g. awq for an AWQ checkpoint).",
    ),
    (
        "this vLLM does not know the model's architecture",
        [r"Model architectures \[.*\] are not supported", r"architectures? .* (?:is|are) not supported"],
        "Use a vllm_image whose vLLM supports this model (see vLLM's supported models list) or another model.",
    ),
    (
        "the model download was refused (HTTP 401/403: gated model without a valid token)",
        [
            r"\b401\b.*(Unauthorized|Client Error)",
            r"\b403\b.*(Forbidden|Client Error)",
            r"GatedRepoError",
            r"Access to model .* is restricted",
            r"Invalid user token|Invalid credentials",
        ],
        "Set vllm_hf_token to a valid Hugging Face token (keep it in Ansible Vault), and for gated "
        "models such as Llama request access on the model's Hugging Face page with that account.",
    ),
    (
        "the model path or name does not exist",
        [
            r"RepositoryNotFoundError",
            r"HFValidationError: Repo id must be in the form",
            r"(?:is not|isn't) a local folder and is not a valid model identifier",
            r"No such file or directory: .*config\.json",
        ],
        "Check vllm_model: a Hugging Face id (org/name) or a path inside the container (the host's "
        "vllm_model_cache_path is mounted at /root/.cache/huggingface).",
    ),
    (
        "no GPU or no NVIDIA container runtime",
        [
            r"could not select device driver \"nvidia\"",
            r"No CUDA GPUs are available",
            r"Found no NVIDIA driver",
            r"libcuda\.so.*cannot open",
            r"Failed to infer device type",
            r"NVIDIA_VISIBLE_DEVICES.*not found",
        ],
        "Check `nvidia-smi` on the host and run playbooks/gpu_check.yml; the nvidia_driver and "
        "nvidia_container_toolkit roles install the driver and Docker's nvidia runtime.",
    ),
    (
        "vLLM rejected its command line",
        [r"error: unrecognized arguments", r"error: argument", r"usage: .*api_server"],
        "Check vllm_extra_args and the engine settings against the vLLM version of vllm_image.",
    ),
    (
        "the model could not be fetched (no network to Hugging Face)",
        [r"LocalEntryNotFoundError", r"We couldn't connect to", r"Temporary failure in name resolution"],
        "Give the host access to huggingface.co (or a mirror via vllm_env HF_ENDPOINT), or pre-load the cache.",
    ),
]


def vllm_error_line(log_text):
    """vLLM's own error line: the first specific one in the log (the root cause comes first in a
    chained traceback), shortened; '' when there is none."""
    for match in ERROR_LINE.finditer(log_text or ""):
        line = match.group(1).strip()
        if GENERIC.search(line):
            continue
        # pydantic appends the validated input; it repeats every setting and says nothing.
        line = re.sub(r"\s*\[type=\w+, input_value=.*$", "", line)
        return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."
    return ""


def vllm_failure_hint(log_text, model=""):
    """Return a readable failure message: vLLM's own error line, the likely cause with what to do,
    and the log's last lines."""
    log_text = log_text or ""
    lines = [line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..." for line in log_text.strip().splitlines()]
    tail = "\n".join(lines[-25:])
    error = vllm_error_line(log_text)
    said = "vLLM said: %s\n" % error if error else ""
    for cause, patterns, advice in CAUSES:
        if any(re.search(p, log_text, re.IGNORECASE) for p in patterns):
            return "vLLM failed to start %s: %slikely cause: %s. %s\nLast log lines:\n%s" % (
                model, said, cause, advice, tail)
    return (
        "vLLM failed to start %s: %sno known cause recognised. Slow starts are normal while a large "
        "model downloads (raise vllm_start_timeout); see docker logs for the whole story.\nLast log lines:\n%s"
        % (model, said or "the log names no error line; ", tail)
    )


# Keys vLLM takes the model's maximum length from (the smallest one present wins).
_LENGTH_KEYS = ["max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "max_sequence_length", "max_target_positions", "model_max_length"]
# Methods that need a checkpoint quantized that way (fp8 and the like can quantize on load).
_PREQUANTIZED = {"awq", "awq_marlin", "gptq", "gptq_marlin", "gptq_marlin_24", "marlin",
                 "compressed-tensors", "modelopt", "modelopt_fp4", "aqlm", "gguf", "bitsandbytes"}


def _model_max_len(config):
    lengths = [config[key] for key in _LENGTH_KEYS if isinstance(config.get(key), (int, float))]
    if not lengths:
        return None
    length = min(lengths)
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    # RoPE scaling that stretches the context (vLLM multiplies by its factor too); the others
    # (llama3, longrope, su) already count it in max_position_embeddings.
    if kind in ("linear", "dynamic", "yarn") and isinstance(scaling.get("factor"), (int, float)):
        length = length * scaling["factor"]
    return int(length)


def _family(method):
    return method.replace("auto_", "").split("_")[0]


def vllm_config_problems(config, max_model_len, tensor_parallel_size=1, quantization="", allow_long=False):
    """What vLLM would refuse in these settings for a model with this config.json (a dict), as a
    list of messages naming the variable; [] when nothing is wrong or nothing can be told."""
    config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    problems = []
    derived = _model_max_len(config)
    if derived and int(max_model_len) > derived and not allow_long:
        problems.append(
            "vllm_max_model_len=%s is above the model's maximum length %d (config.json); set at most %d"
            % (max_model_len, derived, derived))
    heads = config.get("num_attention_heads")
    if isinstance(heads, int) and int(tensor_parallel_size) > 0 and heads % int(tensor_parallel_size):
        problems.append(
            "vllm_tensor_parallel_size=%s does not divide the model's %d attention heads; use one of %s"
            % (tensor_parallel_size, heads, [n for n in (1, 2, 4, 8, 16) if heads % n == 0]))
    model_method = str((config.get("quantization_config") or {}).get("quant_method", "") or "").lower()
    wanted = str(quantization or "").lower()
    if wanted and model_method and _family(wanted) != _family(model_method):
        problems.append(
            "vllm_quantization=%s does not match the model's quantization %s (config.json); leave it "
            "empty or set %s" % (quantization, model_method, model_method))
    elif wanted in _PREQUANTIZED and not model_method:
        problems.append(
            "vllm_quantization=%s needs a checkpoint quantized with it, but the model's config.json has "
            "no quantization_config; leave vllm_quantization empty" % quantization)
    return problems


class FilterModule:
    def filters(self):
        return {
            "vllm_failure_hint": vllm_failure_hint,
            "vllm_error_line": vllm_error_line,
            "vllm_config_problems": vllm_config_problems,
        }
