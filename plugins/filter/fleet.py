# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Addresses by which fleet hosts reach each other (load balancer backends, metrics allowlists),
and the model name each host serves."""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible.utils.display import Display


def _is_ip(value):
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _host_vars(caller, host, hostvars):
    host_vars = hostvars.get(host) if hasattr(hostvars, "get") else None
    if host_vars is None:
        raise AnsibleFilterError("%s: host %r is not in the inventory" % (caller, host))
    return host_vars


def fleet_address(host, hostvars):
    """The address other fleet hosts use for HOST.

    In order: its `fleet_address` variable, its default IPv4 address from gathered facts,
    its `ansible_host` when that is an IP address. Anything else is an error that names the host,
    because a silently missing address would leave an allowlist or a backend list short.
    """
    host_vars = _host_vars("fleet_address", host, hostvars)
    explicit = host_vars.get("fleet_address")
    if explicit:
        return str(explicit)
    facts = host_vars.get("ansible_facts") or {}
    default_ipv4 = facts.get("default_ipv4") or {}
    if default_ipv4.get("address"):
        return str(default_ipv4["address"])
    if _is_ip(host_vars.get("ansible_host", "")):
        return str(host_vars["ansible_host"])
    raise AnsibleFilterError(
        "fleet_address: no address known for host %r: set fleet_address for it in the inventory, "
        "or gather its facts in the same run (is it unreachable?)" % host
    )


def fleet_addresses(hosts, hostvars, strict=False):
    """fleet_address of every host in HOSTS, in order, without duplicates.

    Not strict (the default), a host without a known address (unreachable in this run and without
    cached facts) is left out with a warning, so one host that is down does not stop the others'
    configuration; its address comes back on the next run that reaches it.
    """
    result = []
    for host in hosts or []:
        try:
            address = fleet_address(host, hostvars)
        except AnsibleFilterError as error:
            if strict:
                raise
            Display().warning("%s; left out of this list" % error)
            continue
        if address not in result:
            result.append(address)
    return result


def fleet_backends(hosts, hostvars, port_var="nginx_https_port", default_port=443):
    """Backends for a load balancer: host, address and port of every host in HOSTS whose address
    is known (others are left out with a warning, see fleet_addresses)."""
    backends = []
    for host in hosts or []:
        addresses = fleet_addresses([host], hostvars)
        if not addresses:
            continue
        port = hostvars[host].get(port_var, default_port)
        backends.append({"host": host, "address": addresses[0], "port": int(port)})
    return backends


def fleet_served_model(host, hostvars):
    """The model name clients send to HOST: its `vllm_served_model_name` when set and not empty
    (vLLM then answers to that name only), else its `vllm_model`; '' when neither is set."""
    host_vars = _host_vars("fleet_served_model", host, hostvars)
    return str(host_vars.get("vllm_served_model_name") or host_vars.get("vllm_model") or "")


def fleet_fronting(host, loadbalancers, hostvars, groups, mode, router_group):
    """The load balancers in LOADBALANCERS that have HOST as a backend, in order.

    A load balancer with `loadbalancer_backend_group` set serves that group ("group" mode); one without
    is a fleet router serving its `router_backend_group`, ROUTER_GROUP (the router role's default) where its
    inventory does not set one ("router" mode). MODE picks "group", "router" or "any"."""
    if mode not in ("any", "group", "router"):
        raise AnsibleFilterError("fleet_fronting: mode must be any, group or router, not %r" % (mode,))
    fronting = []
    for lb in loadbalancers or []:
        lb_vars = _host_vars("fleet_fronting", lb, hostvars)
        group = lb_vars.get("loadbalancer_backend_group") or ""
        lb_mode = "group" if group else "router"
        if mode not in ("any", lb_mode):
            continue
        if host in (groups.get(group or lb_vars.get("router_backend_group") or router_group) or []):
            fronting.append(lb)
    return fronting


class FilterModule:
    def filters(self):
        return {
            "fleet_address": fleet_address,
            "fleet_addresses": fleet_addresses,
            "fleet_backends": fleet_backends,
            "fleet_served_model": fleet_served_model,
            "fleet_fronting": fleet_fronting,
        }
