"""The state store (local, and S3 on moto), its conditional writes, and IP allocation."""

import threading

import pytest

from tests.unit.core.conftest import HeaderDroppingProxy, admin_for, client_for, new_bucket, s3_settings
from umc_infra import AddressError, StateBackendError, UmcInfraError
from umc_infra.state.ipam import allocate, claims, release
from umc_infra.state.s3 import S3Store, conditional_write_problems
from umc_infra.state.store import LocalStore, open_store

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
    from umc_infra.state.ipam import held

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
    # no partial file left (``.lock`` is the store's flock file)
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == [".lock", "x"]


# -- conditional writes, on both backends -------------------------------------------------------------

CAS_CASES = [
    # (name, operation on a key that holds b"v1" at version v1, expected outcome, expected content after)
    ("create on an existing key is refused", lambda s, v1: s.create("k/x", b"v2"), None, b"v1"),
    ("replace with a stale version is refused", lambda s, v1: s.replace("k/x", b"v2", version=STALE), None, b"v1"),
    ("replace with the current version wins", lambda s, v1: s.replace("k/x", b"v2", version=v1), "version", b"v2"),
    ("delete_if with a stale version is refused", lambda s, v1: s.delete_if("k/x", version=STALE), False, b"v1"),
    ("delete_if with the current version deletes", lambda s, v1: s.delete_if("k/x", version=v1), True, None),
    ("replace of a key that is gone is refused", lambda s, v1: s.replace("k/gone", b"v2", version=v1), None, b"v1"),
    ("delete_if of a key that is gone is refused", lambda s, v1: s.delete_if("k/gone", version=v1), False, b"v1"),
]
STALE = '"0123456789abcdef0123456789abcdef"'


@pytest.mark.parametrize(("name", "operation", "expected", "after"), CAS_CASES, ids=[c[0] for c in CAS_CASES])
def test_compare_and_swap(any_store, name, operation, expected, after):
    v1 = any_store.create("k/x", b"v1")
    assert isinstance(v1, str) and v1
    assert any_store.get_versioned("k/x") == (b"v1", v1)
    result = operation(any_store, v1)
    if expected == "version":
        assert isinstance(result, str) and result != v1
        assert any_store.get_versioned("k/x") == (after, result)  # the version returned is the one stored
    else:
        assert result is expected
    assert any_store.get("k/x") == after


def test_versions_follow_every_write(any_store):
    v1 = any_store.create("k/x", b"one")
    v2 = any_store.replace("k/x", b"two", version=v1)
    assert v2 is not None
    assert any_store.replace("k/x", b"three", version=v1) is None  # v1 is stale now
    any_store.put("k/x", b"four")  # a plain put moves the version on too
    assert any_store.replace("k/x", b"five", version=v2) is None
    assert any_store.get_versioned("nothing/here") is None


def test_the_probe_passes_on_stores_that_honour_conditions_and_leaves_nothing(any_store):
    assert conditional_write_problems(any_store) == []
    assert any_store.list("probe") == []


def test_open_store_refuses_an_endpoint_that_ignores_conditional_writes(moto_endpoint):
    bucket = new_bucket(moto_endpoint)
    with HeaderDroppingProxy(moto_endpoint, dropped=frozenset({"if-none-match", "if-match"})) as proxy:
        settings = s3_settings(proxy.endpoint, bucket)
        with pytest.raises(StateBackendError) as info:
            open_store(settings)
        message = str(info.value)
        assert proxy.endpoint in message and repr(bucket) in message
        assert "If-None-Match: * on PUT was ignored" in message and "If-Match on PUT was ignored" in message
        assert "If-Match on DELETE was ignored" in message
        assert "leases and address claims depend on them" in message
        # the proxy itself works: the same requests through it, without conditions, are fine
        store = S3Store(client_for(settings.s3_endpoint), bucket)
        store.put("k/x", b"through the proxy")
        assert store.get("k/x") == b"through the proxy"
        assert store.list("probe") == []  # the probe cleaned up after itself


@pytest.mark.parametrize("dropped", ["if-none-match", "if-match", None])
def test_the_probe_names_the_one_condition_that_is_ignored(moto_endpoint, dropped):
    bucket = new_bucket(moto_endpoint)
    with HeaderDroppingProxy(moto_endpoint, dropped=frozenset({dropped} if dropped else ())) as proxy:
        problems = conditional_write_problems(S3Store(client_for(proxy.endpoint), bucket))
    if dropped is None:  # the control: the proxy itself changes nothing
        assert problems == []
    else:
        assert problems
        assert all(("If-None-Match" in p) == (dropped == "if-none-match") for p in problems)


def test_open_store_probes_a_good_endpoint_once_per_process(moto_endpoint, monkeypatch):
    from umc_infra.state import s3 as _s3

    settings = s3_settings(moto_endpoint, new_bucket(moto_endpoint))
    calls = []
    real = _s3.conditional_write_problems
    monkeypatch.setattr(_s3, "conditional_write_problems", lambda store: calls.append(store) or real(store))
    first = open_store(settings)
    second = open_store(settings)
    assert isinstance(first, S3Store) and isinstance(second, S3Store)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("kms_key_id", "expected"),
    [(None, ("AES256", None)), ("alias/umc-state", ("aws:kms", "alias/umc-state"))],
)
def test_s3_documents_are_encrypted_with_the_configured_key(moto_endpoint, kms_key_id, expected):
    settings = s3_settings(moto_endpoint, new_bucket(moto_endpoint))
    client = admin_for(moto_endpoint)
    store = S3Store(client_for(moto_endpoint), settings.state_bucket, kms_key_id=kms_key_id)
    version = store.create("k/created", b"1")
    store.replace("k/created", b"2", version=version)
    store.put("k/put", b"3")
    for key in ("umc/k/created", "umc/k/put"):
        head = client.head_object(Bucket=settings.state_bucket, Key=key)
        assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == expected


def test_open_store_passes_the_kms_key_on(moto_endpoint):
    settings = s3_settings(moto_endpoint, new_bucket(moto_endpoint)).model_copy(
        update={"state_kms_key_id": "alias/umc-state"}
    )
    store = open_store(settings)
    store.put("k/x", b"1")
    head = admin_for(moto_endpoint).head_object(Bucket=settings.state_bucket, Key="umc/k/x")
    assert head.get("SSEKMSKeyId") == "alias/umc-state"


def test_local_files_are_private_whatever_the_umask(tmp_path):
    import os
    import stat

    store = LocalStore(tmp_path / "a" / "state")
    old = os.umask(0)  # the most permissive umask: modes must not come from it
    try:
        store.create("ipam/127.0.1.10", b"1")
        store.put("deployments/x/record.json", b"{}")
        version = store.create("locks/x.json", b"a")
        store.replace("locks/x.json", b"b", version=version)
    finally:
        os.umask(old)
    for path in (tmp_path / "a", store.root, store.root / "ipam", store.root / "deployments" / "x"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (store.root / "ipam/127.0.1.10", store.root / "deployments/x/record.json",
                 store.root / "locks/x.json", store.root / ".lock"):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def _increment(root, times):
    """In a child process: add 1 to the counter ``times`` times by compare-and-swap."""
    store = LocalStore(root)
    for _ in range(times):
        while True:
            current = store.get_versioned("k/counter")
            if store.replace("k/counter", str(int(current.data) + 1).encode(), version=current.version):
                break


def test_local_compare_and_swap_loses_no_update_across_processes(tmp_path):
    import multiprocessing

    store = LocalStore(tmp_path / "state")
    store.create("k/counter", b"0")
    context = multiprocessing.get_context("spawn")  # not fork: the test process has threads
    workers = [context.Process(target=_increment, args=(store.root, 150)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert store.get("k/counter") == b"600"
