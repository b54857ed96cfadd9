"""Every shipped inventory wires the roles together: inventories/prod, inventories/local and the
inventory of each Molecule scenario with GPU hosts, as Molecule builds it from molecule.yml.

Ansible resolves each host's values without contacting it (tests/inventories/resolve.yml: each role
in a play of its own on site.yml's hosts, its tasks left out; made-up gathered addresses), with the
playbooks' own group_vars/host_vars next to it when there are any, as site.yml would load them.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import urllib.parse

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "extensions" / "molecule"
RESOLVE = ROOT / "tests" / "inventories" / "resolve.yml"


def gpu_scenarios():
    """Scenarios whose platforms put a host into gpu_servers (the others deploy no GPU host)."""
    names = []
    for molecule_yml in sorted(SCENARIOS.glob("*/molecule.yml")):
        platforms = yaml.safe_load(molecule_yml.read_text()).get("platforms") or []
        if any("gpu_servers" in platform.get("groups", []) for platform in platforms):
            names.append(molecule_yml.parent.name)
    return names


INVENTORIES = ["prod", "local"] + ["molecule/" + name for name in gpu_scenarios()]


def scenario_inventory(scenario, dest):
    """The inventory Molecule writes for SCENARIO: its platforms in their groups, the inline
    host_vars/group_vars of provisioner.inventory and the linked group_vars/host_vars directories."""
    config = yaml.safe_load((SCENARIOS / scenario / "molecule.yml").read_text())
    inventory = (config.get("provisioner") or {}).get("inventory") or {}
    hosts = {}
    children = {}
    for platform in config["platforms"]:
        name = platform["name"]
        hosts[name] = dict((inventory.get("host_vars") or {}).get(name) or {})
        for group in platform.get("groups", []):
            children.setdefault(group, {"hosts": {}})["hosts"][name] = None
    group_vars = dict(inventory.get("group_vars") or {})
    for group, values in group_vars.items():
        if group != "all":
            children.setdefault(group, {"hosts": {}})["vars"] = values
    dest.mkdir()
    all_group = {"hosts": hosts, "children": children, "vars": group_vars.get("all") or {}}
    (dest / "hosts.yml").write_text(yaml.safe_dump({"all": all_group}))
    for kind, target in (inventory.get("links") or {}).items():
        (dest / kind).symlink_to((SCENARIOS / scenario / target).resolve(), target_is_directory=True)
    return dest


def start_resolve(name, work):
    """Start resolve.yml on inventory NAME; returns the process and the file it writes."""
    work.mkdir()
    if name.startswith("molecule/"):
        inventory = scenario_inventory(name.split("/", 1)[1], work / "inventory")
    else:
        inventory = ROOT / "inventories" / name
    # The playbook beside site.yml's playbook vars (none today), so it loads them as site.yml does.
    play_dir = work / "play"
    play_dir.mkdir()
    shutil.copy(RESOLVE, play_dir / RESOLVE.name)
    for kind in ("group_vars", "host_vars"):
        if (ROOT / "playbooks" / kind).is_dir():
            (play_dir / kind).symlink_to(ROOT / "playbooks" / kind, target_is_directory=True)
    out = work / "resolved.json"
    # Facts in memory only: ansible.cfg's on-disk cache may hold facts of earlier real runs.
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory", ANSIBLE_NOCOLOR="1")
    process = subprocess.Popen(
        ["ansible-playbook", "-i", str(inventory), str(play_dir / RESOLVE.name), "-e", f"resolve_out={out}",
         "--tags", "resolve", "--skip-tags", "always"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return process, out


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """Every inventory resolved, the ansible-playbook runs side by side."""
    base = tmp_path_factory.mktemp("inventories")
    started = {name: start_resolve(name, base / name.replace("/", "-")) for name in INVENTORIES}
    results = {}
    for name, (process, out) in started.items():
        output = process.communicate()[0]
        results[name] = json.loads(out.read_text()) if process.returncode == 0 else output
    return results


class Inventory:
    def __init__(self, name, data):
        assert isinstance(data, dict), f"resolving inventory {name} failed:\n{data}"
        self.name = name
        self.hosts = data["hosts"]
        self.groups = data["groups"]
        self.gpu_hosts = self.groups.get("gpu_servers", [])
        assert self.gpu_hosts, f"{name}: no host in gpu_servers"

    def address(self, host):
        return self.hosts[host]["address"]

    def value(self, host, play, name):
        return self.hosts[host][play][name]


@pytest.fixture(params=INVENTORIES)
def inventory(request, resolved):
    return Inventory(request.param, resolved[request.param])


def url_port(url):
    return urllib.parse.urlsplit(url).port


def test_the_scenarios_with_gpu_hosts_are_found():
    assert {"fullstack", "fleet"} <= set(gpu_scenarios())


def test_the_playbooks_set_no_role_variable():
    # Vars beside site.yml would be missed by a playbook of one's own: role variables and fleet_*
    # inputs belong in the roles' defaults; only the playbooks' own choices may live there.
    prefixes = tuple(role.name + "_" for role in (ROOT / "roles").iterdir()) + ("fleet_",)
    found = {}
    for base in (ROOT, ROOT / "playbooks"):
        for kind in ("group_vars", "host_vars"):
            for path in sorted((base / kind).rglob("*")) if (base / kind).is_dir() else []:
                if path.is_file():
                    names = [name for name in yaml.safe_load(path.read_text()) or {} if name.startswith(prefixes)]
                    if names:
                        found[str(path.relative_to(ROOT))] = names
    assert not found, f"role variables set beside the playbooks: {found}"


def test_monitoring_hosts_may_read_metrics_on_every_gpu_host(inventory):
    monitoring = inventory.groups.get("monitoring", [])
    if not monitoring:
        pytest.skip(f"{inventory.name} has no monitoring host")
    for gpu_host in inventory.gpu_hosts:
        allowed = inventory.value(gpu_host, "nginx", "nginx_metrics_allow")
        for host in monitoring:
            assert inventory.address(host) in allowed, (
                f"{inventory.name}: monitoring host {host} ({inventory.address(host)}) is not in "
                f"nginx_metrics_allow of {gpu_host}: {allowed}"
            )


def backends_by_balancer(inventory):
    """Each load balancer and the hosts of its backend group (skips an inventory without one)."""
    balancers = inventory.groups.get("loadbalancer", [])
    if not balancers:
        pytest.skip(f"{inventory.name} has no load balancer")
    result = {}
    for balancer in balancers:
        backend_group = inventory.value(balancer, "loadbalancer", "loadbalancer_backend_group") or inventory.value(
            balancer, "loadbalancer", "router_backend_group")
        result[balancer] = inventory.groups.get(backend_group, [])
        assert result[balancer], f"{inventory.name}: {balancer} balances over group {backend_group}, which has no host"
    return result


def test_gpu_hosts_trust_the_client_address_their_load_balancers_pass_on(inventory):
    for balancer, backends in backends_by_balancer(inventory).items():
        for gpu_host in backends:
            trusted = inventory.value(gpu_host, "nginx", "nginx_real_ip_from")
            assert inventory.address(balancer) in trusted, (
                f"{inventory.name}: load balancer {balancer} ({inventory.address(balancer)}) is not in "
                f"nginx_real_ip_from of {gpu_host}: {trusted}"
            )


def test_one_model_per_load_balancer_of_a_model_group(inventory):
    for balancer, backends in backends_by_balancer(inventory).items():
        if not inventory.value(balancer, "loadbalancer", "loadbalancer_backend_group"):
            continue  # router mode: every model of the fleet on one endpoint
        served = {
            host: inventory.value(host, "vllm", "vllm_served_model_name") or inventory.value(host, "vllm", "vllm_model")
            for host in backends
        }
        assert len(set(served.values())) == 1, f"{inventory.name}: {balancer} balances over different models: {served}"


def test_ports_chain_nginx_to_wrapper_to_vllm(inventory):
    for host in inventory.gpu_hosts:
        wrapper_port = inventory.value(host, "wrapper", "wrapper_port")
        vllm_port = inventory.value(host, "vllm", "vllm_port")
        assert inventory.value(host, "nginx", "nginx_upstream_port") == wrapper_port, f"{inventory.name}: {host}"
        assert url_port(inventory.value(host, "wrapper", "wrapper_upstream_url")) == vllm_port, f"{inventory.name}: {host}"


def test_metrics_paths_reach_the_wrapper_vllm_and_the_exporters(inventory):
    for host in inventory.gpu_hosts:
        proxies = inventory.value(host, "nginx", "nginx_metrics_proxies")
        expected = {
            "/metrics": inventory.value(host, "wrapper", "wrapper_port"),
            "/metrics/vllm": inventory.value(host, "vllm", "vllm_port"),
            "/metrics/node": inventory.value(host, "exporters", "exporters_node_port"),
            "/metrics/dcgm": inventory.value(host, "exporters", "exporters_dcgm_port"),
        }
        assert {path: url_port(proxies.get(path, "")) for path in expected} == expected, f"{inventory.name}: {host}"


def test_preflight_checks_the_disk_of_the_model_cache(inventory):
    for host in inventory.gpu_hosts:
        assert inventory.value(host, "preflight", "preflight_model_cache_path") == inventory.value(
            host, "vllm", "vllm_model_cache_path"
        ), f"{inventory.name}: {host}"


def test_a_playbook_of_ones_own_wires_the_roles_as_site_yml(inventory):
    # roles: [vllm, wrapper, nginx] in one play sees all three roles' defaults at once.
    for host in inventory.gpu_hosts:
        own = inventory.hosts[host]["own_playbook"]
        site = {name: inventory.value(host, name.split("_", 1)[0], name) for name in own}
        assert own == site, f"{inventory.name}: {host}"


def site_plays(name="site.yml"):
    """The plays of playbooks/NAME, those of the playbooks it imports in their place."""
    plays = []
    for play in yaml.safe_load((ROOT / "playbooks" / name).read_text()):
        imported = play.get("ansible.builtin.import_playbook")
        plays += site_plays(imported) if imported else [play]
    return plays


def site_roles_by_group():
    """The roles playbooks/site.yml applies with `roles:` to each host group, in play order."""
    roles = {}
    for play in site_plays():
        for role in play.get("roles") or []:
            name = (role["role"] if isinstance(role, dict) else role).rsplit(".", 1)[-1]
            for group in play["hosts"].split(":"):
                roles.setdefault(group, [])
                if name != "preflight" and name not in roles[group]:
                    roles[group].append(name)
    return roles


def test_site_yml_checks_every_group_before_changing_it():
    plays = site_plays()
    preflight = [play for play in plays if "gpufleet.vllm.preflight" in str(play.get("roles"))]
    assert len(preflight) == 1 and set(preflight[0]["hosts"].split(":")) == {
        "gpu_servers", "loadbalancer", "monitoring", "counter_store", "model_store"}
    first_change = next(i for i, play in enumerate(plays) if play.get("roles") and play is not preflight[0])
    assert plays.index(preflight[0]) < first_change


def test_site_yml_gives_the_groups_the_roles_preflight_checks():
    # The NVIDIA roles are included in tasks (only where a GPU is found): preflight_gpu_role_checks.
    assert site_roles_by_group() == {
        "gpu_servers": ["docker", "vllm", "wrapper", "nginx", "exporters"],
        "loadbalancer": ["loadbalancer"],
        "monitoring": ["monitoring"],
        "counter_store": ["counter_store"],
        "model_store": ["docker", "model_store"],
    }


def test_preflight_checks_the_roles_site_yml_gives_each_host(inventory):
    by_group = site_roles_by_group()
    for host, values in inventory.hosts.items():
        if "preflight" not in values:
            continue
        groups = values["groups"]
        # apt_proxy runs on every host, included in site.yml's package sources play.
        site_groups = ("gpu_servers", "loadbalancer", "monitoring", "counter_store", "model_store")
        expected = ["apt_proxy"] + [role for group in site_groups if group in groups for role in by_group[group]]
        # model_sync is included in a task (only where the fleet has a model store).
        expected += ["model_sync"] if "gpu_servers" in groups and inventory.groups.get("model_store") else []
        assert values["preflight"]["preflight_role_checks"] == expected, f"{inventory.name}: {host} in {groups}"
        assert values["preflight"]["preflight_gpu_role_checks"] == ["nvidia_driver", "nvidia_container_toolkit"]
    for host in inventory.groups.get("loadbalancer", []) + inventory.groups.get("monitoring", []):
        assert "preflight" in inventory.hosts[host], f"{inventory.name}: preflight does not run on {host}"
