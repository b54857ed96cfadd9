# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turn the end of a failed vLLM log into a message that names the likely cause."""

from __future__ import annotations

import re

# (cause, patterns, advice); the first cause whose pattern appears in the log wins.
CAUSES = [
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
        "the model download was refused (HTTP 401/403)",
        [
            r"\b401\b.*(Unauthorized|Client Error)",
            r"\b403\b.*(Forbidden|Client Error)",
            r"GatedRepoError",
            r"Access to model .* is restricted",
            r"RepositoryNotFoundError",
            r"Invalid user token|Invalid credentials",
        ],
        "Set vllm_hf_token to a valid Hugging Face token (keep it in Ansible Vault), and for gated "
        "models such as Llama request access on the model's Hugging Face page with that account.",
    ),
    (
        "CUDA ran out of GPU memory",
        [
            r"CUDA out of memory",
            r"OutOfMemoryError",
            r"No available memory for the cache blocks",
            r"is larger than the maximum number of tokens that can be stored in KV cache",
        ],
        "Lower vllm_gpu_memory_utilization (e.g. 0.85), shorten vllm_max_model_len (e.g. 8192 or 4096), "
        "or serve a smaller or quantized model (e.g. the 70B AWQ build) / raise vllm_tensor_parallel_size.",
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


def vllm_failure_hint(log_text, model=""):
    """Return a readable failure message: the likely cause, what to do, and the log's last lines."""
    log_text = log_text or ""
    tail = "\n".join(log_text.strip().splitlines()[-25:])
    for cause, patterns, advice in CAUSES:
        if any(re.search(p, log_text, re.IGNORECASE) for p in patterns):
            return "vLLM failed to start %s: likely cause: %s. %s\nLast log lines:\n%s" % (model, cause, advice, tail)
    return (
        "vLLM failed to start %s and the log names no known cause. Slow starts are normal while a large "
        "model downloads (raise vllm_start_timeout); see docker logs for the whole story.\nLast log lines:\n%s"
        % (model, tail)
    )


class FilterModule:
    def filters(self):
        return {"vllm_failure_hint": vllm_failure_hint}
