"""Site address rules, given-address checks, corrupt claim documents and re-addressing (local backend)."""

import logging

import pytest

from umc_infra import AddressError, ParamsError, SettingsError
from umc_infra.blueprint.model import Blueprint
from umc_infra.settings import Settings, load_settings
from umc_infra.state.ipam import Site, allocate, check_given, claims, held, release, release_unused
from umc_infra.state.store import LocalStore

# The sandbox's site: a loopback subnet, 127.0.1.0/24, gateway .1; plus a DNS server inside it.
SANDBOX = Site.of(Settings(ip_gateway="127.0.1.1", ip_netmask=24, dns_servers=["127.0.1.53", "::1"]))
OFFICE = Site.of(Settings(ip_gateway="10.20.30.1", ip_netmask=24, dns_servers=["10.20.0.53"]))
NO_GATEWAY = Site.of(Settings(dns_servers=["10.20.0.53"]))


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


@pytest.mark.parametrize(
    ("site", "address", "why"),
    [
        (SANDBOX, "127.0.1.20", None),
        (SANDBOX, "127.0.1.254", None),
        (SANDBOX, "127.0.1.2", None),
        (SANDBOX, "127.0.2.20", "outside the site's subnet 127.0.1.0/24"),
        (SANDBOX, "10.20.30.40", "outside the site's subnet 127.0.1.0/24"),
        (SANDBOX, "127.0.1.0", "network address of 127.0.1.0/24"),
        (SANDBOX, "127.0.1.255", "broadcast address of 127.0.1.0/24"),
        (SANDBOX, "127.0.1.1", "the site's gateway"),
        (SANDBOX, "127.0.1.53", "DNS servers"),
        (SANDBOX, "0.0.0.0", "unspecified"),
        (SANDBOX, "0.1.2.3", "unspecified"),
        (SANDBOX, "224.0.0.1", "multicast"),
        (SANDBOX, "239.255.255.250", "multicast"),
        (SANDBOX, "169.254.1.1", "link-local"),
        (SANDBOX, "240.0.0.1", "reserved"),
        (SANDBOX, "255.255.255.255", "reserved"),
        (SANDBOX, "127.0.0.1", "loopback address outside the site's subnet 127.0.1.0/24"),
        (SANDBOX, "not-an-ip", "not an IPv4 address"),
        (OFFICE, "10.20.30.10", None),
        (OFFICE, "10.20.30.1", "gateway"),
        (OFFICE, "10.20.31.10", "outside the site's subnet 10.20.30.0/24"),
        (OFFICE, "127.0.1.20", "loopback address outside the site's subnet 10.20.30.0/24"),
        (OFFICE, "10.20.0.53", "outside the site's subnet"),
        (NO_GATEWAY, "10.20.30.10", None),
        (NO_GATEWAY, "192.168.7.7", None),
        (NO_GATEWAY, "10.20.0.53", "DNS servers"),
        (NO_GATEWAY, "127.0.1.20", "loopback address"),
        (NO_GATEWAY, "0.0.0.0", "unspecified"),
        (NO_GATEWAY, "224.0.0.1", "multicast"),
        (NO_GATEWAY, "169.254.0.5", "link-local"),
    ],
)
def test_each_site_rule(site, address, why):
    found = site.problem(address)
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found and address in found


def test_what_the_site_allows_is_said_in_words():
    assert SANDBOX.allowed() == (
        "an IPv4 address in the site's subnet 127.0.1.0/24 except its network address 127.0.1.0, its broadcast "
        "address 127.0.1.255, the gateway 127.0.1.1, the DNS servers 127.0.1.53; each address once, in one module"
    )
    assert "not 0.0.0.0/8, multicast, link-local, reserved or loopback" in NO_GATEWAY.allowed()
    # /31 and /32 have no network or broadcast address to leave out
    point = Site.of(Settings(ip_gateway="10.0.0.0", ip_netmask=31))
    assert point.problem("10.0.0.1") is None and "network" not in point.allowed()


BLUEPRINT = Blueprint.model_validate(
    {
        "name": "two-tier",
        "version": "1.0.0",
        "description": "d",
        "params": {
            "web_ips": {"type": "list", "items": "ipv4", "default": []},
            "db_ips": {"type": "list", "items": "ipv4", "default": []},
            "one_ip": {"type": "string", "format": "ipv4", "default": "127.0.1.30"},
        },
        "modules": {
            "web": {"source": "vsphere-vm", "addresses": {"count": {"value": 2}, "given": "params.web_ips"}},
            "db": {"source": "vsphere-vm", "addresses": {"count": {"value": 1}, "given": "params.db_ips"}},
            "pool": {"source": "vsphere-vm", "addresses": {"count": {"value": 1}}},
            "solo": {"source": "vsphere-vm", "addresses": {"count": {"value": 1}, "given": "params.one_ip"}},
            "none": {"source": "vsphere-vm"},
        },
    }
)


def given(**params):
    values = {"web_ips": [], "db_ips": [], "one_ip": "127.0.1.30"} | params
    return check_given(BLUEPRINT, lambda ref: values[ref.removeprefix("params.")], site=SANDBOX)


def refused(**params):
    with pytest.raises(ParamsError) as info:
        given(**params)
    assert info.value.blueprint == "two-tier"
    return {p.field: p for p in info.value.problems}


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"web_ips": ["127.0.1.20", "127.0.1.1"]}, "params.web_ips.1", "127.0.1.1 is the site's gateway"),
        ({"web_ips": ["127.0.1.255", "127.0.1.20"]}, "params.web_ips.0", "broadcast address"),
        ({"web_ips": ["127.0.1.0", "127.0.1.20"]}, "params.web_ips.0", "network address"),
        ({"web_ips": ["127.0.1.20", "10.0.0.5"]}, "params.web_ips.1", "outside the site's subnet 127.0.1.0/24"),
        ({"web_ips": ["127.0.1.20", "127.0.1.53"]}, "params.web_ips.1", "DNS servers"),
        ({"db_ips": ["0.0.0.0"]}, "params.db_ips.0", "unspecified"),
        ({"db_ips": ["224.0.0.1"]}, "params.db_ips.0", "multicast"),
        ({"db_ips": ["169.254.10.10"]}, "params.db_ips.0", "link-local"),
        ({"db_ips": ["127.0.0.1"]}, "params.db_ips.0", "loopback address outside"),
        ({"web_ips": ["127.0.1.20", "127.0.1.20"]}, "params.web_ips.1", "given twice (also at params.web_ips.0)"),
        ({"web_ips": ["127.0.1.20", "127.0.1.21"], "db_ips": ["127.0.1.21"]}, "params.db_ips.0",
         "also given to module 'web' (params.web_ips.1)"),
        ({"one_ip": "127.0.1.1"}, "params.one_ip", "gateway"),
        ({"db_ips": ["127.0.1.30"]}, "params.one_ip", "also given to module 'db' (params.db_ips.0)"),
    ],
)  # fmt: skip
def test_each_refused_given_address_is_named_as_the_user_wrote_it(params, field, message):
    found = refused(**params)
    assert list(found) == [field]
    assert message in found[field].message
    assert found[field].allowed == SANDBOX.allowed()


def test_every_refused_address_is_reported_at_once():
    found = refused(web_ips=["127.0.1.1", "127.0.1.255"], db_ips=["127.0.0.1"])
    assert sorted(found) == ["params.db_ips.0", "params.web_ips.0", "params.web_ips.1"]


def test_allowed_addresses_pass():
    given(web_ips=["127.0.1.20", "127.0.1.21"], db_ips=["127.0.1.22"])
    given()


# -- the pool ---------------------------------------------------------------------------------------


def test_the_pool_skips_what_the_site_refuses(store):
    site = Site.of(Settings(ip_gateway="127.0.1.1", dns_servers=["127.0.1.2"]))
    assert allocate(store, pool="127.0.1.0-127.0.1.4", deployment="a", module="web", count=2, given=[],
                    site=site) == ["127.0.1.3", "127.0.1.4"]  # fmt: skip
    with pytest.raises(AddressError, match=r"no free address left \(3 of its addresses are not usable, e\.g\. "):
        allocate(store, pool="127.0.1.0-127.0.1.4", deployment="b", module="web", count=1, given=[], site=site)
    # a dry run picks the same way
    assert allocate(store, pool="127.0.1.0-127.0.1.6", deployment="c", module="web", count=1, given=[],
                    site=site, dry_run=True) == ["127.0.1.5"]  # fmt: skip


def test_the_pool_obeys_the_same_rule_as_given_addresses(store):
    """Every address the pool hands out is one check_given would accept, and no refused one is handed out."""
    site = Site.of(Settings(ip_gateway="127.0.1.129", ip_netmask=25, dns_servers=["127.0.1.200"]))
    out = allocate(store, pool="127.0.1.128-127.0.1.255", deployment="a", module="web", count=124, given=[], site=site)
    assert {"127.0.1.128", "127.0.1.129", "127.0.1.200", "127.0.1.255"}.isdisjoint(out) and len(set(out)) == 124
    assert all(site.problem(a) is None for a in out)


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        ({"ip_gateway": "127.0.1.1", "ip_pool": "127.0.1.10-127.0.1.155"}, True),
        ({"ip_gateway": "127.0.1.1", "ip_pool": "127.0.2.10-127.0.2.20"}, False),
        ({"ip_gateway": "127.0.1.1", "ip_pool": "127.0.1.250-127.0.2.5"}, False),
        ({"ip_gateway": "10.20.30.1", "ip_netmask": 16, "ip_pool": "10.20.99.1-10.20.99.9"}, True),
        ({"ip_gateway": "10.20.30.1", "ip_netmask": 24, "ip_pool": "10.20.99.1-10.20.99.9"}, False),
        ({"ip_pool": "10.0.0.1-10.0.0.9"}, True),  # no gateway: no subnet to be inside
    ],
)
def test_settings_refuse_a_pool_outside_the_subnet(overrides, ok):
    if ok:
        assert load_settings(overrides).ip_pool == overrides["ip_pool"]
        return
    with pytest.raises(SettingsError) as info:
        load_settings(overrides)
    [problem] = info.value.problems
    assert problem.field == "ip_pool"
    assert "UMC_IP_POOL" in problem.message and "subnet" in problem.allowed


def test_settings_from_the_environment_name_umc_ip_pool(monkeypatch):
    monkeypatch.setenv("UMC_IP_GATEWAY", "127.0.1.1")
    monkeypatch.setenv("UMC_IP_POOL", "127.0.2.10-127.0.2.20")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert [p.field for p in info.value.problems] == ["UMC_IP_POOL"]
    assert "127.0.1.0/24" in str(info.value)
    monkeypatch.setenv("UMC_IP_GATEWAY", "not-an-address")
    with pytest.raises(SettingsError, match="UMC_IP_GATEWAY: must be empty or an IPv4 address"):
        load_settings()


# -- corrupt claim documents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        b'{"deployment": "b", "mod',  # truncated (a disk filled up while it was written)
        b"",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'{"deployment": "b", "module": "web"}',
        b'{"deployment": "b", "module": "web", "index": -1}',
        b'{"deployment": "", "module": "web", "index": 0}',
    ],
)
def test_a_corrupt_claim_blocks_only_its_own_address(store, tmp_path, caplog, document):
    allocate(store, pool="127.0.1.10-127.0.1.20", deployment="a", module="web", count=1, given=[])
    (tmp_path / "ipam" / "127.0.1.11").write_bytes(document)
    (tmp_path / "ipam" / "garbage").write_bytes(b"{}")
    with caplog.at_level(logging.WARNING, logger="umc_infra"):
        assert set(claims(store)) == {"127.0.1.10"}  # never raises
    assert "ipam/127.0.1.11" in caplog.text and "ipam/garbage" in caplog.text
    # other deployments allocate as before, around the corrupt one
    assert allocate(store, pool="127.0.1.10-127.0.1.20", deployment="b", module="web", count=2, given=[]) == [
        "127.0.1.12", "127.0.1.13",
    ]  # fmt: skip
    assert allocate(store, pool="127.0.1.10-127.0.1.20", deployment="c", module="web", count=1, given=[],
                    dry_run=True) == ["127.0.1.14"]  # fmt: skip
    assert held(store, deployment="a", module="web") == ["127.0.1.10"]
    # only a run that gives exactly that address fails, naming the document and the fix
    for dry_run in (True, False):
        with pytest.raises(AddressError) as info:
            allocate(store, pool=None, deployment="d", module="web", count=1, given=["127.0.1.11"], dry_run=dry_run)
        assert "ipam/127.0.1.11" in str(info.value) and "delete that document" in str(info.value)
        assert str(tmp_path) in str(info.value)
    assert (tmp_path / "ipam" / "127.0.1.11").read_bytes() == document  # left alone
    assert release(store, deployment="b") == ["127.0.1.12", "127.0.1.13"]


def test_a_claim_that_turns_corrupt_between_read_and_claim_is_named(store, tmp_path):
    class Racing(LocalStore):
        def create(self, key, data):
            (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / key).write_bytes(b"{")
            return False

    with pytest.raises(AddressError, match=r"ipam/127\.0\.1\.40 .* is unreadable"):
        allocate(Racing(tmp_path), pool=None, deployment="a", module="web", count=1, given=["127.0.1.40"])


# -- re-addressing ----------------------------------------------------------------------------------


def test_readdressing_releases_the_old_claim_after_the_apply(store):
    allocate(store, pool=None, deployment="a", module="web", count=1, given=["127.0.1.20"])
    allocate(store, pool=None, deployment="b", module="web", count=1, given=["127.0.1.30"])
    # the user gives the VM another address: the new one is claimed before the apply ...
    assert allocate(store, pool=None, deployment="a", module="web", count=1, given=["127.0.1.21"]) == ["127.0.1.21"]
    assert held(store, deployment="a", module="web") == ["127.0.1.20"]  # one per VM while both are claimed
    # ... and after it the old one is freed, nothing else
    assert release_unused(store, deployment="a", module="web", keep=["127.0.1.21"]) == ["127.0.1.20"]
    assert {a: (c.deployment, c.index) for a, c in claims(store).items()} == {
        "127.0.1.21": ("a", 0), "127.0.1.30": ("b", 0),
    }  # fmt: skip
    # the freed address is free for everyone again
    assert allocate(store, pool=None, deployment="c", module="web", count=1, given=["127.0.1.20"]) == ["127.0.1.20"]


def test_release_unused_after_a_scale_down_and_per_module(store):
    allocate(store, pool="127.0.1.10-127.0.1.19", deployment="a", module="web", count=3, given=[])
    allocate(store, pool="127.0.1.10-127.0.1.19", deployment="a", module="db", count=1, given=[])
    assert release_unused(store, deployment="a", module="web", keep=["127.0.1.10", "127.0.1.11"]) == ["127.0.1.12"]
    assert release_unused(store, deployment="a", module="web", keep=["127.0.1.10", "127.0.1.11"]) == []
    assert held(store, deployment="a", module="db") == ["127.0.1.13"]


def test_reordered_addresses_follow_their_vms(store):
    allocate(store, pool=None, deployment="a", module="web", count=2, given=["127.0.1.20", "127.0.1.21"])
    allocate(store, pool=None, deployment="a", module="web", count=2, given=["127.0.1.21", "127.0.1.20"])
    assert held(store, deployment="a", module="web") == ["127.0.1.21", "127.0.1.20"]
    assert release_unused(store, deployment="a", module="web", keep=["127.0.1.21", "127.0.1.20"]) == []


def test_one_address_cannot_serve_two_modules_of_a_deployment(store):
    allocate(store, pool="127.0.1.10-127.0.1.19", deployment="a", module="db", count=1, given=[])
    for dry_run in (True, False):
        with pytest.raises(AddressError, match=r"127\.0\.1\.10 is held by module 'db' of this deployment"):
            allocate(store, pool=None, deployment="a", module="web", count=1, given=["127.0.1.10"], dry_run=dry_run)
    assert claims(store)["127.0.1.10"].module == "db"
