"""Live choices in validation and the portal's form schema (the agreement with validate() is in
test_schema_agreement), and the choices cache."""

from __future__ import annotations

import threading
import time

import pytest

from umc_infra import ParamsError, Settings
from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.model import Blueprint, ParamSpec
from umc_infra.params import DEPLOYMENT, form_schema, json_schema, validate
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


def test_the_form_has_the_deployment_first_and_required_with_the_library_pattern():
    form = form_schema(LINUX)
    assert list(form["properties"]) == ["deployment", "params"] and form["required"] == ["deployment", "params"]
    deployment = form["properties"]["deployment"]
    assert (deployment["pattern"], deployment["propertyOrder"], deployment["title"]) == (DEPLOYMENT, 1, "Deployment")
    params = form["properties"]["params"]
    assert [p["propertyOrder"] for p in params["properties"].values()] == list(range(1, len(LINUX.params) + 1))
    assert list(params["properties"]) == list(LINUX.params)
    assert params["x-umc-at-most"] == {"memory_reservation_mb": "memory_mb"}
    assert all(p.get("title") and p.get("description") for p in params["properties"].values())


def test_the_form_builds_on_json_schema_and_adds_only_hints():
    hints = {"propertyOrder", "format", "options", "title"}
    plain, form = json_schema(LINUX), form_schema(LINUX)["properties"]["params"]
    for name, prop in plain["properties"].items():
        added = {k: v for k, v in form["properties"][name].items() if prop.get(k) != v}
        assert set(added) <= hints, (name, added)
        assert prop.get("format") in (None, form["properties"][name].get("format"))  # a validating format stays


def test_widgets_and_live_choices():
    form = form_schema(LINUX, choices=SITE)["properties"]["params"]["properties"]
    assert form["cpu_hot_add"]["format"] == "checkbox" and form["notes"]["format"] == "textarea"
    assert form["extra_networks"]["format"] == "table"
    assert form["extra_networks"]["items"]["enum"] == ["VM Network", "DC0_DVPG0"]
    assert form["department"]["enum"] == ["cardiology", "radiology", ""]
    assert form["department"]["options"]["enum_titles"] == ["cardiology", "radiology", "(none)"]
    assert form["department"]["format"] == "select"
    assert "enum" not in form_schema(LINUX)["properties"]["params"]["properties"]["department"]


def blueprint_with_secret() -> Blueprint:
    return LINUX.model_copy(update={"params": {**LINUX.params, "db_password": ParamSpec(
        type="string", secret=True, default="hunter2-default", description="The database password")}})  # fmt: skip


def test_a_secret_param_never_carries_a_default_or_example_in_the_schema_or_the_form():
    spec = blueprint_with_secret()
    form = form_schema(spec)
    prop = form["properties"]["params"]["properties"]["db_password"]
    assert prop["format"] == "password" and prop["writeOnly"] is True
    assert not {"default", "examples", "example"} & set(prop)
    assert "hunter2" not in repr(form) and "hunter2" not in repr(json_schema(spec))


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
