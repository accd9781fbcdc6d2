"""Guest bookkeeping that needs no service: hostnames, which VMs get guests."""

import ipaddress

import pytest

from umc_infra.sandbox._agent import desired_guests
from umc_infra.sandbox._guests import GuestVM, guests, hostname_for, recorded_vm

NET = ipaddress.IPv4Network("127.0.1.0/24")


@pytest.mark.parametrize(
    ("vm_name", "hostname"),
    [
        ("web-1", "web-1"),
        ("Team X Web_01", "team-x-web-01"),
        ("../../etc/passwd", "etc-passwd"),
        ("a'; rm -rf / #", "a-rm-rf"),
        ("${jndi:x}\n", "jndi-x"),
        ("x" * 80, "x" * 63),
        ("---", "guest"),
    ],
)
def test_hostname_is_a_valid_label(vm_name, hostname):
    assert hostname_for(vm_name) == hostname


def vm(name, ip, *, power="poweredOn", template=False, uuid=None):
    return {
        "name": name,
        "config.instanceUuid": uuid or f"uuid-{name}",
        "config.template": template,
        "guest.ipAddress": ip,
        "runtime.powerState": power,
    }


def test_only_powered_on_vms_with_an_ip_in_the_network_get_guests():
    vms = [
        vm("web-1", "127.0.1.10"),
        vm("off", "127.0.1.11", power="poweredOff"),
        vm("template", "127.0.1.12", template=True),
        vm("no-ip", None),
        vm("outside", "127.0.2.10"),
        vm("private", "10.0.0.5"),
        vm("garbage", "not-an-ip"),
    ]
    wanted = desired_guests(vms, NET)
    assert list(wanted) == [ipaddress.IPv4Address("127.0.1.10")]
    assert wanted[ipaddress.IPv4Address("127.0.1.10")].name == "web-1"


def test_an_address_claimed_twice_goes_to_one_vm_only():
    wanted = desired_guests([vm("b", "127.0.1.10"), vm("a", "127.0.1.10")], NET)
    assert [g.name for g in wanted.values()] == ["a"]


def test_guests_are_read_from_their_records(tmp_path):
    from umc_infra.sandbox._config import SandboxPaths

    paths = SandboxPaths(state_dir=tmp_path, cache_dir=tmp_path / "cache")
    record = GuestVM(uuid="u1", name="web-1", ip=ipaddress.IPv4Address("127.0.1.10"))
    (paths.guests / "127.0.1.10").mkdir(parents=True)
    (paths.guests / "127.0.1.10" / "vm.json").write_text(record.model_dump_json())
    (paths.guests / "not-an-ip").mkdir()
    assert recorded_vm(paths, record.ip) == record
    found = guests(paths)
    assert [(g.vm, g.running) for g in found] == [(record, False)]


def test_a_running_guest_keeps_its_address_when_another_vm_claims_it():
    ip = ipaddress.IPv4Address("127.0.1.10")
    vms = [vm("a-first-by-name", "127.0.1.10", uuid="u-a"), vm("b-running", "127.0.1.10", uuid="u-b")]
    assert desired_guests(vms, NET)[ip].name == "a-first-by-name"
    assert desired_guests(vms, NET, {ip: "u-b"})[ip].name == "b-running"
