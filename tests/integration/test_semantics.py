"""The lifecycle semantics a user relies on, on the sandbox: the two-argument call, updates that keep what
was asked before, destroy of what was deployed, resume only of the same request, reviewed plans for every
module, numbered events."""

from __future__ import annotations

import itertools

import pytest
import yaml

from tests.integration.conftest import only_this_modules_vms, vm_names
from umc_infra import (
    ParamsError,
    PlaybookError,
    RunOptions,
    destroy,
    plan,
    provision,
    status,
)

PREFIX = "sem-"


@pytest.fixture(scope="module")
def site(sandbox, info, tmp_path_factory):
    # A local backend of this module's own; its addresses lie outside every other suite's range.
    with only_this_modules_vms(info, PREFIX, "linux-server-"):
        yield info.settings(
            state_dir=tmp_path_factory.mktemp("sem"), backend="local", ip_pool="127.0.1.180-127.0.1.199"
        )


def test_the_two_argument_call_names_the_deployment_after_the_blueprint_and_converges(site, info):
    events = []
    first = provision("linux-server", {"instances": 1}, settings=site, on_event=events.append)
    assert first.deployment == "linux-server" and [h.name for h in first.hosts] == ["linux-server-1"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # numbered in order
    assert all(a.at <= b.at for a, b in itertools.pairwise(events))
    assert any(e.kind == "task" and e.status != "started" and e.seconds is not None for e in events)
    again = provision("linux-server", {"instances": 1}, settings=site)
    assert not again.changed and again.hosts == first.hosts
    destroy("linux-server", settings=site)
    assert vm_names(info, "linux-server-") == []


def test_an_update_keeps_the_params_it_does_not_give_and_reset_starts_from_the_defaults(site, info):
    d = "sem-keep"
    provision("linux-server", {"instances": 1, "cpu": 3, "notes": "kept"}, deployment=d, settings=site)
    updated = provision("linux-server", {"memory_mb": 3072}, deployment=d, settings=site)
    assert (updated.params["cpu"], updated.params["notes"], updated.params["memory_mb"]) == (3, "kept", 3072)
    assert status(d, settings=site).params["cpu"] == 3  # not back to the default 2
    preview = plan("linux-server", {}, deployment=d, settings=site, options=RunOptions(reset=True))
    assert {k: (c.before, c.after) for k, c in preview.param_changes.items()} == {
        "cpu": (3, 2), "memory_mb": (3072, 2048), "notes": ("kept", ""),
    }  # fmt: skip
    assert {r.action for r in preview.resources} == {"update"}
    destroy(d, settings=site)


def test_destroy_and_drift_work_on_the_blueprint_as_deployed(site, info, tmp_path):
    """A site narrows a blueprint after deployments exist (max 3 -> 1): they can still be checked and destroyed."""
    d = "sem-narrowed"
    directory = tmp_path / "bp"
    (directory / "blueprints").mkdir(parents=True)
    raw = {"name": "sem-server", "version": "1.0.0", "description": "linux-server, up to 3",
           "extends": "linux-server", "params": {"instances": {"max": 3}}}  # fmt: skip
    (directory / "blueprints" / "sem-server.yaml").write_text(yaml.safe_dump(raw))
    on_path = site.model_copy(update={"blueprint_path": [directory]})
    provision("sem-server", {"instances": 2}, deployment=d, settings=on_path)
    raw["params"]["instances"]["max"] = 1
    (directory / "blueprints" / "sem-server.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params\.instances"):
        plan("sem-server", {}, deployment=d, settings=on_path)  # an update must fit today's blueprint
    assert not drift_of(d, on_path).has_drift
    gone = destroy(d, settings=on_path)
    assert gone.terraform["vm"].remove == 2 and vm_names(info, f"{d}-") == []


def drift_of(deployment, settings):
    from umc_infra import drift

    return drift(deployment, settings=settings)


def test_a_retry_resumes_at_the_failed_hosts_only_for_the_same_request(site, sandbox):
    d = "sem-retry"
    first = provision("linux-server", {"instances": 2}, deployment=d, settings=site)
    broken = first.hosts[1]
    python = sandbox.guest_root(broken.ip) / "usr" / "bin" / "python3"

    def fails_on_one_host(params):
        python.rename(python.with_name("python3.away"))  # every task fails on that host, and only there
        try:
            with pytest.raises(PlaybookError):
                provision("linux-server", params, deployment=d, settings=site)
        finally:
            python.with_name("python3.away").rename(python)
        assert status(d, settings=site).last_run.failed_hosts == (broken.name,)

    fails_on_one_host({"instances": 2, "notes": "v2"})
    other = provision("linux-server", {"instances": 2, "notes": "v3"}, deployment=d, settings=site)
    assert set(other.ansible["base"].hosts) == {h.name for h in first.hosts}  # another request: every host
    fails_on_one_host({"instances": 2, "notes": "v4"})
    same = provision("linux-server", {"instances": 2, "notes": "v4"}, deployment=d, settings=site)
    assert set(same.ansible["base"].hosts) == {broken.name}  # the same request: only the failed host
    destroy(d, settings=site)


def test_a_new_deployment_whose_modules_read_each_other_is_planned_and_its_reviewed_plan_applied(
    site, sandbox, tmp_path, monkeypatch
):
    """lab-web's label module reads the VM names of its web module: planned from the web module's plan."""
    d = "sem-lab"
    monkeypatch.setenv("UMC_LAB_CMDB", str(tmp_path / "cmdb.jsonl"))  # the package's hook writes there
    reviewed = plan("lab-web", {"instances": 1, "team": "imaging"}, deployment=d, settings=site)
    assert {r.module for r in reviewed.resources} == {"web", "label"} and reviewed.deferred == ()
    done = provision("lab-web", {"instances": 1, "team": "imaging"}, deployment=d, settings=site,
                     options=RunOptions(plan=reviewed))  # fmt: skip
    assert done.outputs["label"] == f"imaging/{d}"
    destroy(d, settings=site)
