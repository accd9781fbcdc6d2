"""What a request uses, counted from the blueprint's VM module inputs, and the quota arithmetic."""

import asyncio

import pytest

from umc_infra.blueprint.catalog import Catalog
from umc_infra.params import validate
from umc_infra.service.policy import Quota
from umc_infra.service.quota import Usage, breach, usage
from umc_infra.service.store import MemoryStore, Ownership
from umc_infra.settings import Settings

from .conftest import BLUEPRINTS

CATALOG = Catalog.from_settings(Settings(blueprint_path=[BLUEPRINTS]))


def used(blueprint, **params):
    spec = CATALOG.load(blueprint)
    return usage(spec, validate(spec, params, "team-x"))


def test_vm_modules_are_counted_from_their_inputs():
    assert used("web-server", instances=3, cpu=4, memory_mb=4096) == Usage(vms=3, vcpus=12, memory_mb=12288)
    assert used("web-server") == Usage(vms=1, vcpus=2, memory_mb=2048)  # the params' defaults
    # two VM modules: a literal `instances: {value: 1}` for the database, params for the web tier
    db_and_web = used("app-stack", web_instances=2, web_cpu=1, web_memory_mb=1024, db_cpu=4, db_memory_mb=8192)
    assert db_and_web == Usage(vms=3, vcpus=6, memory_mb=10240)


def test_a_module_of_another_source_makes_no_vms():
    # lab-web is web-server plus a module of source lab-label: only the web-server VMs count
    assert CATALOG.load("lab-web").modules["label"].source == "lab-label"
    assert used("lab-web", instances=2) == used("web-server", instances=2)


def test_every_blueprint_can_be_sized():
    required = {"windows-server": {"computer_name": "win1"}}
    for name in CATALOG.names():
        assert used(name, **required.get(name, {})).vms >= 1, name


QUOTA = Quota(vms=6, vcpus=12, memory_mb=24576)


@pytest.mark.parametrize(("current", "requested", "over"), [
    (Usage(vms=4, vcpus=8, memory_mb=8192), Usage(vms=2, vcpus=4, memory_mb=16384), ()),  # exactly the quota
    (Usage(vms=4, vcpus=8, memory_mb=8192), Usage(vms=3, vcpus=3, memory_mb=3), ("vms",)),
    (Usage(), Usage(vms=1, vcpus=13, memory_mb=24577), ("vcpus", "memory_mb")),
])  # fmt: skip
def test_breach_names_each_count_over_the_quota(current, requested, over):
    found = breach("cardiology", QUOTA, current, requested)
    assert (found.over if found else ()) == over
    if found:
        assert "quota exceeded" in str(found) and f"quota {getattr(QUOTA, over[0])}" in str(found)


def owner(name, department, vms):
    return Ownership(name=name, department=department, blueprint="web-server", requested_by="u",
                     usage=Usage(vms=vms, vcpus=vms, memory_mb=vms))  # fmt: skip


def test_a_claim_counts_the_departments_other_deployments_only():
    store = MemoryStore()
    quota = Quota(vms=4, vcpus=100, memory_mb=100_000)

    async def scenario():
        assert (await store.claim(owner("a-web", "cardiology", 3), quota)).breach is None
        assert (await store.claim(owner("b-web", "radiology", 4), quota)).breach is None  # another department
        assert (await store.claim(owner("a-web", "cardiology", 4), quota)).breach is None  # resizing itself
        refused = await store.claim(owner("c-web", "cardiology", 1), quota)
        assert refused.breach is not None and refused.breach.current.vms == 4
        assert await store.ownership("c-web") is None  # nothing recorded

    asyncio.run(scenario())
