# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vLLM instances of a host (issue #14): one container per entry of `vllm_instances`, each on its
own port and GPUs; with no list, the guide's single `vllm-server` from the role's vllm_* variables.

vllm_instances turns the inventory's list into complete entries (every setting filled from the
role-wide vllm_* value it overrides); vllm_instance_problems checks them against each other and
against the host's GPUs; fleet_instances gives another role (monitoring, the wrapper) a host's
instances from its inventory variables."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# The implicit instance of a host without vllm_instances.
SINGLE_NAME = "server"
NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
# vllm-wrapper is the wrapper's container; <container>-previous and -download are the role's own.
RESERVED_NAMES = ("wrapper",)
# The Docker label naming the instance of each vLLM container.
LABEL = "gpufleet-vllm-instance"
RESERVED_SUFFIXES = ("-previous", "-download")
# Each setting an entry may override, with the role variable it defaults to (served_model_name only
# for the single instance; a listed one defaults to its model).
OVERRIDES = {
    "image": "vllm_image",
    "served_model_name": "vllm_served_model_name",
    "gpus": "vllm_gpus",
    "max_model_len": "vllm_max_model_len",
    "gpu_memory_utilization": "vllm_gpu_memory_utilization",
    "tensor_parallel_size": "vllm_tensor_parallel_size",
    "pipeline_parallel_size": "vllm_pipeline_parallel_size",
    "quantization": "vllm_quantization",
    "dtype": "vllm_dtype",
    "extra_args": "vllm_extra_args",
    "env": "vllm_env",
}
REQUIRED = ("name", "model", "port")
# The role defaults, for hosts whose role variables are not in reach (another host's hostvars).
DEFAULTS = {
    "vllm_container_name": "vllm-server",
    "vllm_port": 8000,
    "vllm_image": "vllm/vllm-openai:v0.32.0",
    "vllm_model": "casperhansen/llama-3.1-70b-instruct-awq",
    "vllm_served_model_name": "",
    "vllm_gpus": "all",
    "vllm_max_model_len": 8192,
    "vllm_gpu_memory_utilization": 0.90,
    "vllm_tensor_parallel_size": 1,
    "vllm_pipeline_parallel_size": 1,
    "vllm_quantization": "",
    "vllm_dtype": "auto",
    "vllm_extra_args": [],
    "vllm_env": {},
}


def _number(value, kind):
    """VALUE as KIND when it is a string of one (inventory values templated to text), else unchanged."""
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return value
    return value


def _api(args):
    """What a smoke test asks the instance: "embeddings" for a pooling model (vLLM's --runner pooling,
    --convert or a pooling --task), else "chat"."""
    args = [str(a) for a in args or []]
    for index, arg in enumerate(args):
        flag, dummy, value = arg.partition("=")
        value = value or (args[index + 1] if index + 1 < len(args) else "")
        if (flag == "--runner" and value == "pooling" or flag == "--convert"
                or flag == "--task" and value in ("embed", "embedding", "classify", "score", "reward")):
            return "embeddings"
    return "chat"


def _entry(name, container, model, port, settings, listed):
    entry = dict(settings)
    entry.update(name=name, container=container, model=model, port=port, listed=listed)
    for key in ("port", "max_model_len", "tensor_parallel_size", "pipeline_parallel_size"):
        entry[key] = _number(entry[key], int)
    entry["gpu_memory_utilization"] = _number(entry["gpu_memory_utilization"], float)
    entry["model_name"] = str(entry["served_model_name"] or model)
    entry["api"] = _api(entry["extra_args"])
    # Where the instance's settings are named in messages: the guide's variables, or its list entry.
    entry["setting_prefix"] = "vllm_instances[%s]." % name if listed else "vllm_"
    return entry


def vllm_instances(instances, role_vars):
    """Complete entries for INSTANCES (the inventory's vllm_instances) given ROLE_VARS, a dict of the
    role-wide vllm_* values; [] or None gives the single instance of the role variables.

    Each entry: name, container (vllm-<name>), model, model_name (what clients send), port, listed,
    setting_prefix and every key of OVERRIDES. A malformed list is an error naming the entry."""
    role_vars = dict(DEFAULTS, **{k: v for k, v in dict(role_vars or {}).items() if v is not None})
    defaults = {key: role_vars[var] for key, var in OVERRIDES.items()}
    if not instances:
        return [_entry(SINGLE_NAME, role_vars["vllm_container_name"], role_vars["vllm_model"],
                       role_vars["vllm_port"], defaults, False)]
    if isinstance(instances, (str, bytes, dict)) or not hasattr(instances, "__iter__"):
        raise AnsibleFilterError("vllm_instances must be a list of instances, got %r" % (instances,))
    result = []
    for position, item in enumerate(instances, start=1):
        where = "vllm_instances entry %d" % position
        if not isinstance(item, dict):
            raise AnsibleFilterError("%s must be a dict with name, model and port, got %r" % (where, item))
        if NAME.match(str(item.get("name", ""))):
            where = "vllm_instances[%s]" % item["name"]
        missing = [key for key in REQUIRED if item.get(key) in (None, "")]
        unknown = sorted(set(item) - set(REQUIRED) - set(OVERRIDES))
        if missing or unknown:
            raise AnsibleFilterError(
                "%s: %s; allowed keys: %s" % (
                    where,
                    "; ".join(["missing " + ", ".join(missing)] * bool(missing)
                              + ["unknown key(s) " + ", ".join(unknown)] * bool(unknown)),
                    ", ".join(REQUIRED + tuple(OVERRIDES))))
        name = str(item["name"])
        if not NAME.match(name) or name in RESERVED_NAMES or name.endswith(RESERVED_SUFFIXES):
            raise AnsibleFilterError(
                "%s: name=%r is not allowed; use 1-32 lower-case letters, digits and '-' (it names the "
                "container vllm-<name>), not %s and not ending in %s (the wrapper's and the role's own "
                "containers)" % (where, item["name"], ", ".join(RESERVED_NAMES), ", ".join(RESERVED_SUFFIXES)))
        if not isinstance(item.get("extra_args", []), (list, tuple)):
            raise AnsibleFilterError("%s: extra_args must be a list of arguments, e.g. [--enforce-eager], got %r"
                                     % (where, item["extra_args"]))
        if not isinstance(item.get("env") or {}, dict):
            raise AnsibleFilterError("%s: env must be a dict of variables, got %r" % (where, item["env"]))
        settings = dict(defaults)
        settings.update({key: item[key] for key in OVERRIDES if key in item})
        # Not the role-wide served name: instances of different models would all answer to it.
        settings["served_model_name"] = item.get("served_model_name") or ""
        # vllm_env is the base every instance adds to.
        settings["env"] = dict(defaults["env"] or {}, **dict(item.get("env") or {}))
        if isinstance(settings["gpus"], (list, tuple)):
            settings["gpus"] = [_number(index, int) for index in settings["gpus"]]
        settings["pipeline_parallel_size"] = _number(settings["pipeline_parallel_size"], int)
        if "tensor_parallel_size" not in item and isinstance(settings["gpus"], list) and settings["gpus"]:
            pipeline = settings["pipeline_parallel_size"]
            if isinstance(pipeline, int) and pipeline > 0:
                settings["tensor_parallel_size"] = max(1, len(settings["gpus"]) // pipeline)
        result.append(_entry(str(item["name"]), "vllm-%s" % item["name"], str(item["model"]), item["port"],
                             settings, True))
    return result


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _gpu_list(gpus):
    """The GPU indices of a `gpus` value that is a list of non-negative integers, else None."""
    if isinstance(gpus, (list, tuple)) and gpus and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in gpus):
        return list(gpus)
    return None


def _instance_problems(entry, gpu_count, memory, reserved_ports):
    name = entry["setting_prefix"]
    problems = []
    port = entry["port"]
    if not _positive_int(port) or port > 65535:
        problems.append("%sport=%s is not allowed; use a TCP port from 1 to 65535" % (name, port))
    elif port in reserved_ports:
        problems.append("%sport=%s is taken by %s" % (name, port, reserved_ports[port]))
    gpus = entry["gpus"]
    indices = _gpu_list(gpus)
    if gpus not in ("all", "none") and indices is None:
        problems.append("%sgpus=%s is not allowed; use a list of GPU indices such as [0, 1], all, or none "
                        "(CPU image)" % (name, gpus))
    elif indices is not None and len(set(indices)) != len(indices):
        problems.append("%sgpus=%s lists a GPU twice" % (name, gpus))
    tensor, pipeline = entry["tensor_parallel_size"], entry["pipeline_parallel_size"]
    if not _positive_int(tensor) or tensor & (tensor - 1):
        problems.append("%stensor_parallel_size=%s is not allowed; use the number of GPUs per model "
                        "stage as a power of two (1, 2, 4, 8)" % (name, tensor))
    elif not _positive_int(pipeline):
        problems.append("%spipeline_parallel_size=%s is not allowed; use 1 or more" % (name, pipeline))
    elif gpus != "none":
        owned = len(indices) if indices is not None else gpu_count
        if entry["listed"] and owned is not None and tensor * pipeline != owned:
            problems.append(
                "%stensor_parallel_size=%s x pipeline_parallel_size=%s = %s GPUs, but the instance owns %s "
                "(gpus=%s); they must be equal" % (name, tensor, pipeline, tensor * pipeline, owned, gpus))
    if gpu_count is not None and indices is not None:
        absent = [i for i in indices if i >= gpu_count]
        if absent:
            problems.append("%sgpus=%s: GPU(s) %s do not exist; this host has %s" % (
                name, gpus, absent, "%d GPU(s), indices 0 to %d" % (gpu_count, gpu_count - 1) if gpu_count
                else "no NVIDIA GPU (gpus=none runs a CPU image)"))
    utilization = entry["gpu_memory_utilization"]
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
        problems.append("%sgpu_memory_utilization=%s is not allowed; use a fraction of GPU memory in (0, 1], "
                        "e.g. 0.90" % (name, utilization))
    elif memory and gpus != "none":
        for index in indices if indices is not None else sorted(memory):
            gpu = memory.get(index) or memory.get(str(index))
            if not gpu or not gpu.get("total_mib"):
                continue
            free = gpu["total_mib"] - gpu.get("used_by_others_mib", 0)
            if free < utilization * gpu["total_mib"]:
                # vLLM refuses to start when free memory is below utilization x total.
                problems.append(
                    "%sgpu_memory_utilization=%s needs %d MiB on GPU %s, but other processes use %d of its %d MiB "
                    "(nvidia-smi); free the GPU or lower it to %.2f or less"
                    % (name, utilization, utilization * gpu["total_mib"], index, gpu.get("used_by_others_mib", 0),
                       gpu["total_mib"], int(free / gpu["total_mib"] * 100) / 100.0))
    length = entry["max_model_len"]
    if not _positive_int(length) or length < 16:
        problems.append("%smax_model_len=%s is not allowed; use a context length in tokens of 16 or more"
                        % (name, length))
    return problems


def vllm_instance_problems(instances, gpu_count=None, memory=None, reserved_ports=None):
    """What is wrong with INSTANCES (complete entries from vllm_instances) on a host with GPU_COUNT GPUs
    (None: unknown) whose GPU memory MEMORY is {index: {total_mib, used_by_others_mib}} (None: unknown);
    RESERVED_PORTS maps ports other services of the host take to their names. [] when nothing is."""
    reserved = {int(k): v for k, v in dict(reserved_ports or {}).items()}
    problems = []
    for entry in instances:
        problems.extend(_instance_problems(entry, gpu_count, memory, reserved))
    for key, what in (("name", "name"), ("port", "port")):
        seen = {}
        for entry in instances:
            seen.setdefault(entry[key], []).append(entry["name"])
        for value, names in seen.items():
            if len(names) > 1:
                problems.append("vllm_instances: %s %s is used by %s; each instance needs its own"
                                % (what, value, " and ".join(names)))
    owners = {}
    for entry in instances:
        indices = _gpu_list(entry["gpus"])
        if entry["gpus"] == "all" and len(instances) > 1:
            problems.append("vllm_instances[%s].gpus=all takes every GPU, so no other instance can have one; "
                            "give each instance its GPU indices" % entry["name"])
        for index in indices or []:
            owners.setdefault(index, []).append(entry["name"])
    for index, names in sorted(owners.items()):
        if len(names) > 1:
            problems.append("vllm_instances: GPU %d is given to %s; an instance's GPUs are its own"
                            % (index, " and ".join(names)))
    return problems


def vllm_instance_names(limit):
    """The instance names in LIMIT (vllm_instances_limit: a list, or one comma-separated text such as
    -e vllm_instances_limit=a,b gives), without blanks; [] for none."""
    if limit is None:
        return []
    items = limit.split(",") if isinstance(limit, str) else limit
    return [str(item).strip() for item in items if str(item).strip()]


def _url(address, port, path=""):
    return "http://%s:%s%s" % ("[%s]" % address if ":" in str(address) else address, port, path)


def vllm_upstreams(instances, address="127.0.0.1"):
    """The wrapper's VLLM_UPSTREAMS entries for INSTANCES (complete entries) listening on ADDRESS."""
    return [{"name": e["name"], "url": _url(address, e["port"]), "models": [e["model_name"]]} for e in instances]


def vllm_metrics_proxies(instances, address="127.0.0.1"):
    """nginx metrics paths for INSTANCES: /metrics/vllm/<name> to each instance's /metrics."""
    return {"/metrics/vllm/%s" % e["name"]: _url(address, e["port"], "/metrics") for e in instances}


def vllm_stale_containers(labelled, single, instances):
    """Containers no instance owns any more: those in LABELLED (docker_host_info's verbose list of
    containers labelled gpufleet-vllm-instance) whose instance is not in INSTANCES, and SINGLE (the
    docker_container_info result of the single vllm-server, or {}) when no instance is that container.
    Each as {name, running}."""
    names = {e["name"] for e in instances}
    owned = {e["container"] for e in instances}
    stale = []
    for container in labelled or []:
        name = str((container.get("Names") or ["/"])[0]).lstrip("/")
        if (container.get("Labels") or {}).get(LABEL) not in names and name not in owned:
            stale.append({"name": name, "running": container.get("State") == "running"})
    single = single or {}
    if single.get("exists") and str(single["container"]["Name"]).lstrip("/") not in owned | {s["name"] for s in stale}:
        stale.append({"name": str(single["container"]["Name"]).lstrip("/"),
                      "running": bool(single["container"]["State"]["Running"])})
    return stale


def fleet_instances(host, hostvars):
    """The complete vLLM instances of HOST from its inventory variables (role defaults where unset)."""
    host_vars = hostvars.get(host) if hasattr(hostvars, "get") else None
    if host_vars is None:
        raise AnsibleFilterError("fleet_instances: host %r is not in the inventory" % host)
    role_vars = {var: host_vars.get(var) for var in DEFAULTS}
    return vllm_instances(host_vars.get("vllm_instances"), role_vars)


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")


def fleet_hub_models(hosts, hostvars):
    """The Hugging Face ids (org/name) the vLLM instances of HOSTS serve, sorted, without duplicates; models
    given as a path (in the image or on the host) are left out: the model store has nothing to fetch for them."""
    models = set()
    for host in hosts or []:
        models.update(e["model"] for e in fleet_instances(host, hostvars) if HUB_ID.match(str(e["model"])))
    return sorted(models)


def fleet_served_models(host, hostvars):
    """The model names clients can send to HOST (every instance's), sorted, as one text: 'a, b'."""
    return ", ".join(sorted({e["model_name"] for e in fleet_instances(host, hostvars)}))


def router_slug(model):
    """MODEL as one URL path segment (every character outside [A-Za-z0-9._-] becomes '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(model))


def router_workers(backends, hostvars, backends_port):
    """Workers for vllm-router from BACKENDS (fleet_backends' host/address/port entries).

    Each worker's URL points at the edge's own backends server on 127.0.0.1:BACKENDS_PORT, whose path
    /b/<host>/<instance>/<model> says where it goes; the router's metrics label workers with that URL."""
    workers = []
    for backend in backends or []:
        for instance in fleet_instances(backend["host"], hostvars):
            model = instance["model_name"]
            path = "/b/%s/%s/%s" % (backend["host"], instance["name"], router_slug(model))
            workers.append({
                "url": "http://127.0.0.1:%d%s" % (int(backends_port), path),
                "model": model,
                "host": backend["host"],
                "instance": instance["name"],
                "address": backend["address"],
                "port": backend["port"],
            })
    return workers


def router_models(workers):
    """The model names WORKERS serve, sorted and unique."""
    return sorted({worker["model"] for worker in workers or []})


class FilterModule:
    def filters(self):
        return {
            "vllm_instances": vllm_instances,
            "vllm_instance_problems": vllm_instance_problems,
            "vllm_instance_names": vllm_instance_names,
            "vllm_upstreams": vllm_upstreams,
            "vllm_metrics_proxies": vllm_metrics_proxies,
            "vllm_stale_containers": vllm_stale_containers,
            "fleet_instances": fleet_instances,
            "fleet_hub_models": fleet_hub_models,
            "fleet_served_models": fleet_served_models,
            "router_slug": router_slug,
            "router_workers": router_workers,
            "router_models": router_models,
        }
