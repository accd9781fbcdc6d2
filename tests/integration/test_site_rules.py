"""Params that cannot hurt the site, on the running sandbox: refused addresses create nothing, and hostile
notes reach vCenter and the guest as exactly the text given."""

from __future__ import annotations

import pytest

from umc_infra import ParamsError, destroy, plan, provision
from umc_infra.sandbox import _vcsim
from umc_infra.state.ipam import claims
from umc_infra.state.store import LocalStore

from .conftest import find_vm, only_this_modules_vms, vm_names

PREFIX = "rule-"
POOL = "127.0.1.210-127.0.1.219"
# Everything a template engine, a shell or a path could mistake for syntax, plus several lines and unicode.
NOTES = (
    'it\'s "quoted" and `back` \\ ${var.vsphere_password} %{ if true }x%{ endif }\n'
    "{{ lookup('pipe', 'id') }} {% raw %} $(id) ; rm -rf / | cat & \n"
    "\tpath ../../etc/passwd\n"
    "ünïcødé 日本語 🚀 «» \u2028 end\n"
)


@pytest.fixture(scope="module")
def site(sandbox, info, tmp_path_factory):
    """The sandbox site with a local backend of this test run and a pool of its own."""
    with only_this_modules_vms(info, PREFIX):
        yield info.settings(state_dir=tmp_path_factory.mktemp("rules"), backend="local", ip_pool=POOL)


def annotation(info, name: str) -> str:
    with _vcsim.connect(info) as si:
        vm = find_vm(si, f"{info.inventory.datacenter}/vm/{info.inventory.vm_folder}/{name}")
        assert vm is not None, name
        return str(vm.config.annotation)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.1.1", "127.0.1.1 is the site's gateway"),
        ("127.0.1.255", "127.0.1.255 is the broadcast address of 127.0.1.0/24"),
        ("10.20.30.40", "10.20.30.40 is outside the site's subnet 127.0.1.0/24"),
    ],
)
def test_a_refused_address_is_named_and_nothing_is_created(site, info, address, why):
    deployment = "rule-refused"
    params = {"instances": 2, "ip_addresses": ["127.0.1.231", address]}
    before = vm_names(info, PREFIX)
    for call in (plan, provision):
        with pytest.raises(ParamsError) as error:
            call("linux-server", params, deployment=deployment, settings=site)
        [problem] = error.value.problems
        assert problem.field == "params.ip_addresses.1"
        assert problem.message == why
        assert problem.allowed.startswith("an IPv4 address in the site's subnet 127.0.1.0/24 except ")
        assert "the gateway 127.0.1.1" in problem.allowed
    assert vm_names(info, PREFIX) == before
    assert not any(c.deployment == deployment for c in claims(LocalStore(site.state_dir / "state")).values())


def test_an_address_given_twice_is_refused_before_anything_is_created(site, info):
    before = vm_names(info, PREFIX)
    with pytest.raises(ParamsError) as error:
        provision("linux-server", {"instances": 2, "ip_addresses": ["127.0.1.232", "127.0.1.232"]},
                  deployment="rule-twice", settings=site)  # fmt: skip
    assert [(p.field, p.message) for p in error.value.problems] == [
        ("params.ip_addresses.1", "127.0.1.232 is given twice (also at params.ip_addresses.0)")
    ]
    assert vm_names(info, PREFIX) == before


def test_hostile_notes_reach_vcenter_and_the_guest_verbatim(sandbox, site, info):
    deployment = "rule-notes"
    result = provision("linux-server", {"instances": 1, "notes": NOTES}, deployment=deployment, settings=site)
    try:
        [host] = result.hosts
        assert host.name == f"{deployment}-1"
        assert annotation(info, host.name) == NOTES
        assert (sandbox.guest_root(host.ip) / "etc" / "umc" / "notes").read_bytes() == NOTES.encode()
        assert result.params["notes"] == NOTES
    finally:
        destroy(deployment, settings=site)
    assert vm_names(info, deployment) == []
    assert not any(c.deployment == deployment for c in claims(LocalStore(site.state_dir / "state")).values())
