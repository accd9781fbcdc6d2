"""The state store and IP allocation (local backend; the S3 one runs in the integration tests)."""

import threading

import pytest

from umc_infra import AddressError, UmcInfraError
from umc_infra._ipam import allocate, claims, release
from umc_infra._store import LocalStore

POOL = "127.0.1.10-127.0.1.14"


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


def test_create_is_exclusive(store):
    assert store.create("ipam/127.0.1.10", b"a")
    assert not store.create("ipam/127.0.1.10", b"b")
    assert store.get("ipam/127.0.1.10") == b"a"
    store.put("deployments/x/record.json", b"{}")
    assert store.list("deployments") == ["deployments/x/record.json"]
    store.delete("ipam/127.0.1.10")
    assert store.get("ipam/127.0.1.10") is None


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs", "Upper", "a b", ""])
def test_keys_cannot_escape(store, key):
    with pytest.raises(UmcInfraError, match="invalid state key"):
        store.get(key)


def test_allocation_is_stable_per_deployment_and_module(store):
    first = allocate(store, pool=POOL, deployment="a", module="web", count=2, given=[])
    assert first == ["127.0.1.10", "127.0.1.11"]
    assert allocate(store, pool=POOL, deployment="a", module="web", count=3, given=[])[:2] == first
    other = allocate(store, pool=POOL, deployment="b", module="web", count=1, given=[])
    assert other == ["127.0.1.13"]


def test_given_addresses_are_claimed_and_protected(store):
    assert allocate(store, pool=POOL, deployment="a", module="web", count=1, given=["127.0.1.12"]) == ["127.0.1.12"]
    with pytest.raises(AddressError, match=r"127\.0\.1\.12 belongs to deployment 'a'"):
        allocate(store, pool=POOL, deployment="b", module="web", count=1, given=["127.0.1.12"])
    assert allocate(store, pool=POOL, deployment="b", module="web", count=1, given=[]) == ["127.0.1.10"]


def test_exhausted_pool_and_missing_pool(store):
    allocate(store, pool=POOL, deployment="a", module="web", count=5, given=[])
    with pytest.raises(AddressError, match="no free address"):
        allocate(store, pool=POOL, deployment="b", module="web", count=1, given=[])
    with pytest.raises(AddressError, match="no pool configured"):
        allocate(store, pool=None, deployment="c", module="web", count=1, given=[])
    with pytest.raises(AddressError, match="2 VMs but 1 addresses given"):
        allocate(store, pool=POOL, deployment="c", module="web", count=2, given=["127.0.1.99"])


def test_release_frees_only_the_deployment(store):
    allocate(store, pool=POOL, deployment="a", module="web", count=2, given=[])
    allocate(store, pool=POOL, deployment="b", module="web", count=1, given=[])
    assert release(store, deployment="a") == ["127.0.1.10", "127.0.1.11"]
    assert {c.deployment for c in claims(store).values()} == {"b"}


def test_parallel_deployments_never_share_an_address(store):
    results = {}

    def take(name):
        results[name] = allocate(store, pool="127.0.1.10-127.0.1.49", deployment=name, module="web", count=4, given=[])

    threads = [threading.Thread(target=take, args=(f"d{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = [a for v in results.values() for a in v]
    assert len(addresses) == 32
    assert len(set(addresses)) == 32


def test_held_addresses_come_in_vm_order_not_string_order(store):
    pool = "127.0.1.8-127.0.1.12"
    assert allocate(store, pool=pool, deployment="a", module="web", count=3, given=[]) == [
        "127.0.1.8", "127.0.1.9", "127.0.1.10",
    ]  # fmt: skip
    from umc_infra._ipam import held

    assert held(store, deployment="a", module="web") == ["127.0.1.8", "127.0.1.9", "127.0.1.10"]


def test_a_dry_run_claims_nothing(store):
    assert allocate(store, pool=POOL, deployment="a", module="web", count=2, given=[], dry_run=True) == [
        "127.0.1.10", "127.0.1.11",
    ]  # fmt: skip
    assert claims(store) == {}


def test_a_full_disk_is_a_state_backend_error_and_leaves_nothing_half_written(store, monkeypatch):
    import errno
    import os

    from umc_infra import StateBackendError

    store.put("records/x", b"before")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", Full)
    for write in (lambda: store.put("records/x", b"after"), lambda: store.create("records/y", b"new")):
        with pytest.raises(StateBackendError, match="No space left on device"):
            write()
    monkeypatch.undo()
    assert store.get("records/x") == b"before" and store.get("records/y") is None
    assert [p.name for p in store.root.rglob("*") if p.is_file()] == ["x"]  # no partial file left
