"""SSH host keys pinned per VM in the state backend: first contact pins, a changed key is refused."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess

import pytest

from umc_infra import HostKeyChanged, UmcInfraError
from umc_infra.ansible.hostkeys import (
    HostKeyPin,
    fingerprint,
    forget,
    known_hosts,
    known_hosts_lines,
    parse_keyscan,
    pin_key,
)
from umc_infra.state.store import LocalStore

D = "iso-unit"


def _key(kind: str = "ssh-ed25519") -> str:
    return f"{kind} {base64.b64encode(os.urandom(51)).decode()}"


class FakeScan:
    """What each address presents, changeable between calls; records the calls."""

    def __init__(self, keys: dict[str, tuple[str, ...]]) -> None:
        self.keys = keys
        self.calls: list[tuple[str, int, float]] = []

    def __call__(self, ip: str, port: int, *, timeout_s: float) -> tuple[str, ...]:
        self.calls.append((ip, port, timeout_s))
        return self.keys.get(ip, ())


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "state")


def _pin(store, host: str) -> HostKeyPin:
    data = store.get(pin_key(D, host))
    assert data is not None
    return HostKeyPin.model_validate_json(data)


def test_first_contact_pins_and_the_same_key_passes(store):
    ed = _key()
    scan = FakeScan({"127.0.1.240": (ed,)})
    text = known_hosts(store, D, [("iso-unit-vm-1", "127.0.1.240", "vm-1")], recreated=(), scan=scan)
    assert text == f"127.0.1.240 {ed}\n"
    pin = _pin(store, "iso-unit-vm-1")
    assert (pin.host, pin.ip, pin.vm_id, pin.keys) == ("iso-unit-vm-1", "127.0.1.240", "vm-1", (ed,))
    assert known_hosts(store, D, [("iso-unit-vm-1", "127.0.1.240", "vm-1")], recreated=(), scan=scan) == text
    assert _pin(store, "iso-unit-vm-1") == pin  # checked, not pinned again
    assert scan.calls == [("127.0.1.240", 22, 10), ("127.0.1.240", 22, 10)]


def test_a_changed_key_is_refused_with_both_fingerprints(store):
    old, new = _key(), _key()
    scan = FakeScan({"127.0.1.240": (old,)})
    known_hosts(store, D, [("iso-unit-vm-1", "127.0.1.240", None)], recreated=(), scan=scan)
    scan.keys["127.0.1.240"] = (new, _key("ssh-rsa"))
    with pytest.raises(HostKeyChanged) as raised:
        known_hosts(store, D, [("iso-unit-vm-1", "127.0.1.240", None)], recreated=(), scan=scan)
    error = raised.value
    assert isinstance(error, UmcInfraError) and error.step == "ssh"
    assert (error.deployment, error.host, error.ip) == (D, "iso-unit-vm-1", "127.0.1.240")
    assert error.pinned == (fingerprint(old),) and error.presented == (fingerprint(new),)
    message = str(error)
    for part in (D, "iso-unit-vm-1", "127.0.1.240", fingerprint(old), fingerprint(new), "forget", "someone else"):
        assert part in message, part
    assert old.split()[1] not in message  # fingerprints, not the keys
    assert _pin(store, "iso-unit-vm-1").keys == (old,)  # the pin stands


def test_no_key_of_a_pinned_type_is_refused(store):
    scan = FakeScan({"127.0.1.240": (_key(),)})
    known_hosts(store, D, [("h1", "127.0.1.240", None)], recreated=(), scan=scan)
    rsa = _key("ssh-rsa")
    scan.keys["127.0.1.240"] = (rsa,)
    with pytest.raises(HostKeyChanged, match="no key of a pinned type") as raised:
        known_hosts(store, D, [("h1", "127.0.1.240", None)], recreated=(), scan=scan)
    assert raised.value.presented == (fingerprint(rsa),)


def test_an_added_key_type_passes_and_only_pinned_keys_are_trusted(store):
    ed = _key()
    scan = FakeScan({"127.0.1.240": (ed,)})
    known_hosts(store, D, [("h1", "127.0.1.240", None)], recreated=(), scan=scan)
    scan.keys["127.0.1.240"] = (_key("ecdsa-sha2-nistp256"), ed)
    assert known_hosts(store, D, [("h1", "127.0.1.240", None)], recreated=(), scan=scan) == f"127.0.1.240 {ed}\n"


@pytest.mark.parametrize("how", ["recreated", "new vm id"])
def test_a_recreated_vm_is_pinned_anew(store, how):
    old, new = _key(), _key()
    scan = FakeScan({"127.0.1.240": (old,)})
    known_hosts(store, D, [("h1", "127.0.1.240", "vm-1")], recreated=(), scan=scan)
    scan.keys["127.0.1.240"] = (new,)
    recreated, vm_id = (("h1",), "vm-1") if how == "recreated" else ((), "vm-2")
    text = known_hosts(store, D, [("h1", "127.0.1.240", vm_id)], recreated=recreated, scan=scan)
    assert text == f"127.0.1.240 {new}\n"
    assert (_pin(store, "h1").keys, _pin(store, "h1").vm_id) == ((new,), vm_id)


def test_an_unknown_vm_id_on_either_side_is_no_reason_to_pin_anew(store):
    old = _key()
    scan = FakeScan({"127.0.1.240": (old,)})
    known_hosts(store, D, [("h1", "127.0.1.240", None)], recreated=(), scan=scan)
    scan.keys["127.0.1.240"] = (_key(),)
    with pytest.raises(HostKeyChanged):  # a pin made before vm ids were known: checked all the same
        known_hosts(store, D, [("h1", "127.0.1.240", "vm-1")], recreated=(), scan=scan)
    scan.keys["127.0.1.240"] = (old,)
    known_hosts(store, D, [("h1", "127.0.1.240", "vm-1")], recreated=(), scan=scan)
    assert _pin(store, "h1").vm_id == "vm-1"  # recorded once the keys matched
    scan.keys["127.0.1.240"] = (_key(),)
    with pytest.raises(HostKeyChanged):  # the id unknown this time: checked
        known_hosts(store, D, [("h1", "127.0.1.240", None)], recreated=(), scan=scan)


def test_known_hosts_lines_use_the_bracket_form_off_port_22(store):
    ed, rsa = _key(), _key("ssh-rsa")
    assert known_hosts_lines("127.0.1.240", 22, [ed]) == [f"127.0.1.240 {ed}"]
    assert known_hosts_lines("127.0.1.240", 2222, [ed, rsa]) == [
        f"[127.0.1.240]:2222 {ed}",
        f"[127.0.1.240]:2222 {rsa}",
    ]
    scan = FakeScan({"127.0.1.240": (ed,), "127.0.1.241": (rsa,)})
    hosts = [("h1", "127.0.1.240", None), ("h2", "127.0.1.241", None)]
    text = known_hosts(store, D, hosts, recreated=(), port=2222, timeout_s=3, scan=scan)
    assert text == f"[127.0.1.240]:2222 {ed}\n[127.0.1.241]:2222 {rsa}\n"
    assert scan.calls == [("127.0.1.240", 2222, 3), ("127.0.1.241", 2222, 3)]


def test_a_host_that_presents_no_key_stops_the_run(store):
    with pytest.raises(UmcInfraError, match=r"h1 \(127\.0\.1\.240\) .* presented no SSH host key") as raised:
        known_hosts(store, D, [("h1", "127.0.1.240", None)], recreated=(), scan=FakeScan({}))
    assert raised.value.step == "ssh"
    assert store.get(pin_key(D, "h1")) is None


def test_forget_one_host_or_the_whole_deployment(store):
    scan = FakeScan({"127.0.1.240": (_key(),), "127.0.1.241": (_key(),)})
    hosts = [("h1", "127.0.1.240", None), ("h2", "127.0.1.241", None)]
    known_hosts(store, D, hosts, recreated=(), scan=scan)
    known_hosts(store, "iso-other", hosts[:1], recreated=(), scan=scan)
    assert forget(store, D, "h1") == ["h1"]
    assert forget(store, D, "h1") == []
    assert store.get(pin_key(D, "h1")) is None and store.get(pin_key(D, "h2")) is not None
    scan.keys["127.0.1.240"] = (_key(),)  # pinned anew after forget: no error
    known_hosts(store, D, hosts[:1], recreated=(), scan=scan)
    assert sorted(forget(store, D)) == ["h1", "h2"]
    assert store.list(f"hostkeys/{D}") == []
    assert store.get(pin_key("iso-other", "h1")) is not None  # another deployment's pins stay


def test_host_names_are_case_insensitive_in_the_store(store):
    scan = FakeScan({"127.0.1.240": (_key(),)})
    known_hosts(store, D, [("Web-1", "127.0.1.240", None)], recreated=(), scan=scan)
    assert pin_key(D, "Web-1") == f"hostkeys/{D}/web-1.json" and store.get(pin_key(D, "web-1")) is not None


def test_parse_keyscan_output():
    ed, rsa = _key(), _key("ssh-rsa")
    output = (
        f"# 127.0.1.240:22 SSH-2.0-OpenSSH_9.2p1 Debian-2\n127.0.1.240 {ed}\n"
        f"[127.0.1.240]:2222 {rsa}\n127.0.1.240 {_key()}\n\n"
    )
    assert parse_keyscan(output) == tuple(sorted((ed, rsa)))  # one key per type, the first


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_fingerprints_are_the_ones_ssh_keygen_shows(tmp_path):
    for kind in ("ed25519", "ecdsa", "rsa"):
        path = tmp_path / f"k-{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, timeout=60)
        public = path.with_suffix(".pub").read_text().split()
        shown = subprocess.run(["ssh-keygen", "-lf", str(path.with_suffix(".pub"))], check=True, timeout=60,
                               capture_output=True, text=True).stdout.split()[1]  # fmt: skip
        assert fingerprint(f"{public[0]} {public[1]}") == f"{public[0]} {shown}"
