"""Live choices in validation, in inheritance, and the choices cache."""

from __future__ import annotations

import threading
import time

import pytest

from umc_infra import ParamsError, Settings
from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.model import ParamSpec
from umc_infra.params import validate
from umc_infra.vcenter import ChoiceCache

CATALOG = Catalog.from_settings(Settings())
LINUX = CATALOG.load("linux-server")
SITE = {"networks": ["VM Network", "DC0_DVPG0"], "folders": ["cardiology", "radiology"], "datastore_clusters": []}


def test_the_shipped_blueprint_declares_choices_where_a_param_names_a_site_object():
    declared = {name: spec.choices for name, spec in LINUX.params.items() if spec.choices}
    assert declared == {"extra_networks": "networks", "department": "folders",
                        "datastore_cluster": "datastore_clusters"}  # fmt: skip


@pytest.mark.parametrize(("params", "field", "listed"), [
    ({"extra_networks": ["VM Network", "Prod Net"]}, "params.extra_networks", "'VM Network', 'DC0_DVPG0'"),
    ({"department": "oncology"}, "params.department", "'cardiology', 'radiology', ''"),
    ({"datastore_cluster": "SSD"}, "params.datastore_cluster", "one of ''"),
])  # fmt: skip
def test_a_value_outside_the_known_choices_is_a_problem_naming_the_field_and_the_allowed(params, field, listed):
    with pytest.raises(ParamsError) as refused:
        validate(LINUX, params, "team-x", choices=SITE)
    [problem] = refused.value.problems
    assert problem.field == field and listed in problem.allowed
    assert "is not one of the site's" in problem.message
    validate(LINUX, params, "team-x")  # offline: a plain string
    validate(LINUX, params, "team-x", choices={"tags": ["Backup/Daily"]})  # its kind not known: a plain string


def test_the_default_and_the_known_names_pass():
    validate(LINUX, {}, "team-x", choices=SITE)  # "" and [] are the defaults: the site's own folder and no NIC
    validate(LINUX, {"extra_networks": ["DC0_DVPG0", "VM Network"], "department": "radiology"}, "team-x",
             choices=SITE)  # fmt: skip


def test_choices_are_only_for_plain_strings_or_lists_of_strings():
    for bad in (
        {"type": "integer", "choices": "hosts"}, {"type": "string", "secret": True, "choices": "hosts"},
        {"type": "list", "items": "integer", "choices": "hosts"}, {"type": "string", "choices": "vms"},
    ):  # fmt: skip
        with pytest.raises(ValueError):
            ParamSpec.model_validate(bad)


def test_a_child_may_add_choices_but_not_drop_or_change_its_parents():
    from umc_infra.blueprint.extends import merge

    params = {"notes": {"choices": "tags"}, "extra_networks": {"choices": None}, "department": {"choices": "hosts"},
              "datastore_cluster": {"choices": "datastore_clusters"}}  # fmt: skip
    child = {"name": "child", "params": params}
    _, problems = merge(LINUX, child)
    assert sorted(p.where for p in problems) == ["params.department.choices", "params.extra_networks.choices"]


def test_the_cache_keeps_names_for_the_ttl_and_reads_each_miss_once_for_concurrent_callers():
    now = [0.0]
    cache = ChoiceCache(clock=lambda: now[0])
    reads: list[list[str]] = []

    def read(kinds):
        reads.append(list(kinds))
        time.sleep(0.05)  # a slow vCenter: the other threads arrive meanwhile
        return {kind: (f"{kind}-{len(reads)}",) for kind in kinds}

    site = ("vc", "DC0", "", "")
    answers: list[dict] = []
    threads = [threading.Thread(target=lambda: answers.append(cache.get(site, ["networks"], 60, read)))
               for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reads == [["networks"]] and all(a == {"networks": ("networks-1",)} for a in answers)
    assert cache.get(site, ["networks", "hosts"], 60, read) == {"networks": ("networks-1",), "hosts": ("hosts-2",)}
    assert reads[-1] == ["hosts"]  # only the miss is read
    now[0] = 61
    assert cache.get(site, ["networks"], 60, read) == {"networks": ("networks-3",)}  # expired: read again
    assert cache.get(("vc2", "DC0", "", ""), ["networks"], 60, read) == {"networks": ("networks-4",)}  # another site
    assert cache.get(site, ["networks"], 0, read) == {"networks": ("networks-5",)}  # TTL 0: always read
