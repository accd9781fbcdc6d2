"""Inventory: Terraform outputs become hosts, groups and host vars for Ansible."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from umc_infra.blueprint.model import Blueprint
from umc_infra.errors import InventoryError

_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Host(BaseModel):
    """A VM as Ansible sees it."""

    model_config = ConfigDict(frozen=True)

    name: str
    ip: str
    groups: tuple[str, ...]
    module: str


class Inventory(BaseModel):
    """Every host of a deployment, in blueprint order."""

    model_config = ConfigDict(frozen=True)

    hosts: tuple[Host, ...]

    def in_group(self, group: str) -> list[Host]:
        """The hosts of a group (``all``: every host)."""
        return [h for h in self.hosts if group == "all" or group in h.groups]

    def to_ansible(self, *, user: str, port: int, python: str) -> dict[str, Any]:
        """The YAML/JSON inventory document (no secrets: the key travels separately)."""
        groups: dict[str, dict[str, Any]] = {}
        for host in self.hosts:
            for group in host.groups:
                groups.setdefault(group, {"hosts": {}})["hosts"][host.name] = None
        return {
            "all": {
                "hosts": {
                    h.name: {
                        "ansible_host": h.ip,
                        "ansible_port": port,
                        "ansible_user": user,
                        "ansible_python_interpreter": python,
                    }
                    for h in self.hosts
                },
                "children": groups,
            }
        }


def build(blueprint: Blueprint, outputs: dict[str, dict[str, Any]]) -> Inventory:
    """Hosts from each module's ``names`` and ``ips`` outputs, zipped in order.

    Raises:
        InventoryError: An output is missing, not a list, or holds a bad name or address.

    """
    hosts: dict[str, Host] = {}
    for spec in blueprint.hosts:
        module = outputs.get(spec.module, {})
        names, ips = module.get(spec.names), module.get(spec.ips)
        if not isinstance(names, list) or not isinstance(ips, list) or len(names) != len(ips):
            raise InventoryError(
                f"hosts from module {spec.module!r}: outputs {spec.names!r} and {spec.ips!r} must be lists "
                f"of the same length; the VMs exist: fix the module's outputs and run again",
                step="inventory",
            )
        for name, ip in zip(names, ips, strict=True):
            if not isinstance(name, str) or not _HOST.fullmatch(name):
                raise InventoryError(f"module {spec.module!r} returned an invalid host name {name!r}; the VMs exist: "
                                     "fix the module's names output and run again", step="inventory")  # fmt: skip
            try:
                address = str(ipaddress.ip_address(str(ip)))
            except ValueError:
                raise InventoryError(
                    f"VM {name!r} has no usable IP address ({ip!r}); it exists: check its guest customization "
                    "and run again",
                    step="inventory",
                ) from None
            previous = hosts.get(name)
            groups = tuple(dict.fromkeys((*(previous.groups if previous else ()), *spec.groups)))
            hosts[name] = Host(name=name, ip=address, groups=groups, module=spec.module)
    return Inventory(hosts=tuple(hosts.values()))
