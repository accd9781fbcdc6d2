"""The orchestrator with fake tools: plan, apply order, policy, reviewed plans, params, resume, journal, destroy.

Terraform, Ansible and SSH are fakes behind the run's Tools Protocols; the state backend, the catalog, the
params, the lease, the journal and the records are the real ones, on a local backend in tmp_path.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
import yaml

from tests.unit.run.fakes import FakeGuests, FakeSecrets, FakeTools, World, label, vms
from umc_infra import (
    Cancelled,
    DestroyNotAllowed,
    ParamsError,
    PlanChanged,
    PlaybookError,
    Provisioner,
    RunOptions,
    Settings,
    SshUnreachable,
    TerraformError,
)

MODULE_VM = """
variable "name_prefix" { type = string }
variable "instances" { type = number }
variable "cpu" { type = number }
variable "addresses" { type = list(string) }
variable "password" {
  type      = string
  sensitive = true
}
output "names" { value = [] }
output "ips" { value = [] }
output "ids" { value = [] }
"""
MODULE_LABEL = """
variable "names" { type = list(string) }
output "label" { value = "" }
"""


def blueprint(*, label_first: bool = False, max_instances: int = 5) -> dict:
    modules = {
        "vm": {"source": "mod-vm", "addresses": {"count": "params.instances"},
               "inputs": {"name_prefix": {"format": "{deployment}"}, "instances": "params.instances",
                          "cpu": "params.cpu", "addresses": "addresses.vm", "password": "secrets.password"}},
        "tag": {"source": "mod-label", "inputs": {"names": "modules.vm.names"}},
    }  # fmt: skip
    if label_first:
        modules = {"tag": modules["tag"], "vm": modules["vm"]}
    return {
        "name": "demo", "version": "1.0.0", "description": "A demo for the orchestrator",
        "params": {"instances": {"type": "integer", "default": 1, "min": 1, "max": max_instances},
                   "cpu": {"type": "integer", "default": 1, "min": 1, "max": 8}},
        "secrets": {"password": "kv/data/apps/x#password", "key": "kv/data/umc/ansible#key"},
        "modules": modules,
        "hosts": [{"module": "vm", "groups": ["app"]}],
        "playbooks": [{"playbook": "base", "hosts": "all"}, {"playbook": "app", "hosts": "app"}],
        "ansible": {"ssh_private_key": "secrets.key"},
        "outputs": {"label": {"value": "modules.tag.label"}},
    }  # fmt: skip


@pytest.fixture
def site(tmp_path: Path) -> Settings:
    root = tmp_path / "content"
    for name, text in (("mod-vm", MODULE_VM), ("mod-label", MODULE_LABEL)):
        (root / "modules" / name).mkdir(parents=True)
        (root / "modules" / name / "main.tf").write_text(text)
    (root / "playbooks").mkdir()
    for play in ("base", "app"):
        (root / "playbooks" / f"{play}.yml").write_text("- hosts: all\n  tasks: []\n")
    (root / "blueprints").mkdir()
    write(root, blueprint())
    return Settings(state_dir=tmp_path / "state", backend="local", blueprint_path=[root], ip_pool="10.1.2.10-10.1.2.30",
                    ip_gateway="10.1.2.1", lease_ttl_s=30, lock_timeout_s=1)  # fmt: skip


def write(root: Path, data: dict) -> None:
    (root / "blueprints" / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def world(*, unknown: tuple[str, ...] = ()) -> World:
    return World({"vm": vms, "tag": label}, unknown_until_apply=unknown)


def provisioner(site: Settings, tools: FakeTools, **kwargs) -> Provisioner:
    return Provisioner(settings=site, tools=tools, secret_source=FakeSecrets(), **kwargs)


def test_the_two_argument_call_names_the_deployment_after_the_blueprint_and_converges(site):
    tools = FakeTools(world())
    first = provisioner(site, tools).provision("demo", {"instances": 2})
    assert first.deployment == "demo" and [h.name for h in first.hosts] == ["demo-1", "demo-2"]
    assert first.terraform["vm"].add == 2 and first.outputs["label"] == "demo-1,demo-2"
    again = provisioner(site, tools).provision("demo", {"instances": 2})
    assert again.terraform == {"vm": again.terraform["vm"], "tag": again.terraform["tag"]}
    assert all(c.add == c.change == c.remove == 0 for c in again.terraform.values())
    assert again.hosts == first.hosts


def test_modules_apply_in_dependency_order_whatever_the_yaml_order(site):
    write(site.blueprint_path[0], blueprint(label_first=True))
    tools = FakeTools(world())
    provisioner(site, tools).provision("demo", {"instances": 1})
    steps = [c for c in tools.world.calls if c[0] in ("plan", "apply")]
    assert steps == [("plan", "vm"), ("plan", "tag"), ("apply", "vm"), ("apply", "tag")]
    assert tools.world.applied_inputs["tag"]["names"] == ["demo-1"]  # from the plan of vm, then its apply


def test_a_new_deployment_is_planned_through_its_module_dependencies(site):
    tools = FakeTools(world())
    reviewed = provisioner(site, tools).plan("demo", {"instances": 2})
    assert [(r.module, r.address, r.action) for r in reviewed.resources] == [
        ("vm", "fake_vm.vm[0]", "create"), ("vm", "fake_vm.vm[1]", "create"), ("tag", "fake_label.it", "create"),
    ]  # fmt: skip
    assert reviewed.deferred == () and not reviewed.exists
    assert {"terraform.plan.vm", "terraform.plan.tag"} <= set(reviewed.timings)  # as a provision's result has them
    assert tools.world.state == {}  # planning changed nothing
    done = provisioner(site, tools).provision("demo", {"instances": 2}, options=RunOptions(plan=reviewed))
    assert done.outputs["label"] == "demo-1,demo-2"


def test_a_module_reading_outputs_known_only_after_apply_is_deferred_and_never_applied_unreviewed(site):
    write(site.blueprint_path[0], blueprint() | {"modules": blueprint()["modules"] | {
        "tag": {"source": "mod-label", "inputs": {"names": "modules.vm.ids"}}}})  # fmt: skip
    tools = FakeTools(world(unknown=("vm.ids",)))
    reviewed = provisioner(site, tools).plan("demo", {"instances": 1})
    assert reviewed.deferred == ("tag",) and [r.module for r in reviewed.resources] == ["vm"]
    with pytest.raises(PlanChanged, match=r"module\(s\) 'vm' were applied before this; nothing else was applied"):
        provisioner(site, tools).provision("demo", {"instances": 1}, options=RunOptions(plan=reviewed))
    assert ("apply", "vm") in tools.world.calls and ("apply", "tag") not in tools.world.calls
    fresh = provisioner(site, tools).plan("demo", {"instances": 1})  # now vm's ids are known
    assert fresh.deferred == () and [r.module for r in fresh.resources] == ["tag"]
    provisioner(site, tools).provision("demo", {"instances": 1}, options=RunOptions(plan=fresh))
    assert ("apply", "tag") in tools.world.calls


def test_a_reviewed_plan_is_enforced_for_every_module_before_anything_applies(site):
    tools = FakeTools(world())
    provisioner(site, tools).provision("demo", {"instances": 1})
    reviewed = provisioner(site, tools).plan("demo", {"instances": 2})
    del tools.world.state[("demo", "tag")]  # someone removed the label outside umc_infra
    calls = len(tools.world.calls)
    with pytest.raises(PlanChanged, match=r"module 'tag'.*nothing was applied"):
        provisioner(site, tools).provision("demo", {"instances": 2}, options=RunOptions(plan=reviewed))
    assert not [c for c in tools.world.calls[calls:] if c[0] == "apply"]
    with pytest.raises(PlanChanged, match="the params differ"):
        provisioner(site, tools).provision("demo", {"instances": 3}, options=RunOptions(plan=reviewed))


def test_destroying_needs_allow_destroy_and_the_record_says_where_it_stopped(site):
    tools = FakeTools(world())
    p = provisioner(site, tools)
    p.provision("demo", {"instances": 2})
    with pytest.raises(DestroyNotAllowed) as refused:
        p.provision("demo", {"instances": 1})
    assert refused.value.resources == ("vm: fake_vm.vm[1] (delete)",)
    record = p.status("demo")
    assert (record.last_run.outcome, record.last_run.failed_step) == ("failed", "policy")
    down = p.provision("demo", {"instances": 1}, options=RunOptions(allow_destroy=True))
    assert down.terraform["vm"].remove == 1


def test_an_update_keeps_the_params_it_does_not_give_and_reset_starts_from_the_defaults(site):
    tools = FakeTools(world())
    p = provisioner(site, tools)
    p.provision("demo", {"instances": 2, "cpu": 4})
    p.provision("demo", {"instances": 3})
    assert tools.world.applied_inputs["vm"]["cpu"] == 4 and p.status("demo").params["cpu"] == 4
    preview = p.plan("demo", {}, options=RunOptions(reset=True))
    assert {k: (c.before, c.after) for k, c in preview.param_changes.items()} == {"cpu": (4, 1), "instances": (3, 1)}
    with pytest.raises(DestroyNotAllowed):
        p.provision("demo", {}, options=RunOptions(reset=True))  # back to 1 instance: it would delete two
    assert p.plan("demo", {"cpu": 2}).param_changes["cpu"].model_dump() == {"before": 4, "after": 2}


def test_a_retry_resumes_at_the_failed_hosts_only_for_the_same_params_and_version(site):
    tools = FakeTools(world())
    p = provisioner(site, tools)
    tools.failing_hosts.add("demo-2")
    with pytest.raises(PlaybookError):
        p.provision("demo", {"instances": 2})
    assert p.status("demo").last_run.failed_hosts == ("demo-2",)
    tools.failing_hosts.clear()
    tools.playbook_runs.clear()
    p.provision("demo", {"instances": 2})
    assert tools.playbook_runs == [("base", ("demo-2",), False), ("app", ("demo-1", "demo-2"), False)]
    tools.failing_hosts.add("demo-2")
    with pytest.raises(PlaybookError):
        p.provision("demo", {"instances": 2, "cpu": 2})
    tools.failing_hosts.clear()
    tools.playbook_runs.clear()
    p.provision("demo", {"instances": 2, "cpu": 3})  # other params than the failed run: everything runs
    assert tools.playbook_runs[0] == ("base", ("demo-1", "demo-2"), False)


def one_run(site: Settings, *, app_targets: str = "app", app_vars: dict | None = None) -> None:
    """The demo blueprint with ``ansible.one_run``; app.yml's plays target ``app_targets``."""
    root = site.blueprint_path[0]
    data = blueprint()
    data["ansible"]["one_run"] = True
    data["playbooks"][0]["vars"] = {"shared": "params.cpu"}
    data["playbooks"][1]["vars"] = app_vars if app_vars is not None else {"shared": "params.cpu"}
    write(root, data)
    (root / "playbooks" / "app.yml").write_text(f"- hosts: {app_targets}\n  tasks: []\n")


def test_one_run_playbooks_run_together_and_a_failure_resumes_at_its_playbook(site):
    one_run(site)
    tools = FakeTools(world())
    p = provisioner(site, tools)
    tools.failing_hosts.add("demo-2")
    with pytest.raises(PlaybookError):
        p.provision("demo", {"instances": 2})
    assert tools.together == [("base", "app")]
    failed = p.status("demo").last_run
    assert (failed.failed_step, failed.failed_hosts) == ("ansible.base", ("demo-2",))  # the playbook, not "ansible"
    tools.failing_hosts.clear()
    tools.playbook_runs.clear()
    done = p.provision("demo", {"instances": 2})  # the failed playbook on the failed host alone, then the rest
    assert tools.playbook_runs == [("base", ("demo-2",), False), ("app", ("demo-1", "demo-2"), False)]
    assert tools.together == [("base", "app")] and set(done.ansible) == {"base", "app"}
    p.plan("demo", {"instances": 2})  # the check runs them together as well
    assert tools.together == [("base", "app"), ("base", "app")]


@pytest.mark.parametrize(
    ("app_targets", "app_vars"),
    [("all", None), ("app", {"shared": "params.instances"})],
    ids=["its-plays-target-another-group", "a-var-given-another-value"],
)
def test_a_playbook_that_cannot_share_the_run_runs_alone(site, app_targets, app_vars):
    one_run(site, app_targets=app_targets, app_vars=app_vars)
    tools = FakeTools(world())
    done = provisioner(site, tools).provision("demo", {"instances": 2})
    assert tools.together == [] and [r[0] for r in tools.playbook_runs] == ["base", "app"]
    assert done.ansible["app"].hosts.keys() == {"demo-1", "demo-2"}


@pytest.mark.parametrize("operation", ["provision", "destroy"])
def test_a_cancel_is_recorded_cancelled_for_every_operation(site, operation):
    tools = FakeTools(world())
    provisioner(site, tools).provision("demo", {"instances": 1})
    cancel = threading.Event()

    def stop_at_terraform(event):
        if event.kind == "step_started" and event.step.startswith("terraform."):
            cancel.set()

    p = provisioner(site, tools, cancel=cancel, on_event=stop_at_terraform)
    with pytest.raises(Cancelled):
        if operation == "provision":
            p.provision("demo", {"instances": 2})
        else:
            p.destroy("demo")
    run = p.status("demo").last_run
    assert (run.action, run.outcome) == (operation, "cancelled")


def test_destroy_works_on_the_blueprint_as_deployed_after_it_narrowed_a_param(site):
    tools = FakeTools(world())
    p = provisioner(site, tools)
    p.provision("demo", {"instances": 3})
    write(site.blueprint_path[0], blueprint(max_instances=2))  # the blueprint now allows 2 at most
    with pytest.raises(ParamsError, match=r"params\.instances"):
        provisioner(site, tools).plan("demo", {})  # an update must fit the new blueprint
    gone = provisioner(site, tools).destroy("demo")
    assert gone.terraform["vm"].remove == 3 and tools.world.state == {}
    assert [c for c in tools.world.calls if c[0] == "destroy"] == [("destroy", "tag"), ("destroy", "vm")]


class _Overlap:
    """Fake tools whose Terraform plan waits (up to ``wait_s``, once armed) for Ansible's check (or run) to start,
    and notes whether it did."""

    def __init__(self, wait_s: float, *, check: bool = True) -> None:
        self.tools = FakeTools(world())
        self.check = check
        """Wait for a check (plan, drift), or for a playbook run (a converge)."""
        self.check_started = threading.Event()
        self.armed = False
        self.wait_s = wait_s
        self.seen_during_plan: list[bool] = []
        fake_terraform, fake_ansible = self.tools.terraform, self.tools._ansible

        def terraform(context):
            found = fake_terraform(context)
            plan = found.plan

            def waiting_plan(*args, **kwargs):
                if self.armed:
                    self.seen_during_plan.append(self.check_started.wait(self.wait_s))
                return plan(*args, **kwargs)

            found.plan = waiting_plan
            return found

        def ansible():
            manager = fake_ansible()
            fake = manager.__enter__()
            run = fake.run

            def noting_run(playbook, **kwargs):
                if bool(kwargs.get("check")) == self.check:
                    self.check_started.set()
                return run(playbook, **kwargs)

            fake.run = noting_run
            return contextlib.nullcontext(fake)

        self.tools.terraform, self.tools._ansible = terraform, ansible


@pytest.mark.parametrize("reads_outputs", [False, True])
def test_a_plan_checks_the_hosts_while_terraform_plans_unless_the_playbooks_read_module_outputs(site, reads_outputs):
    """Plan of an existing deployment: Ansible's check mode runs beside Terraform's plan. A playbook whose vars
    read a module's outputs is checked after the plan, with the outputs the plan gives."""
    if reads_outputs:
        spec = blueprint()
        spec["playbooks"][1]["vars"] = {"app_names": "modules.vm.names"}
        write(site.blueprint_path[0], spec)
    overlap = _Overlap(wait_s=0.5 if reads_outputs else 10)  # a check that waits for the plan: 2 x 0.5 s
    provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    overlap.tools.playbook_runs.clear()
    overlap.armed = True
    planned = provisioner(site, overlap.tools).plan("demo", {"instances": 1})
    assert planned.exists and planned.resources == () and planned.configuration == ()
    assert [(p, check) for p, _, check in overlap.tools.playbook_runs] == [("base", True), ("app", True)]
    # two modules planned: with the overlap the check has started before either plan went on
    assert overlap.seen_during_plan == ([False, False] if reads_outputs else [True, True])


def _converged(site, overlap, params, **settings):
    """Provision ``demo`` with one instance, then converge it with ``params``, the plan waiting for a playbook."""
    provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    overlap.tools.playbook_runs.clear()
    overlap.check_started.clear()  # set by the first provision's playbooks
    overlap.armed = True
    return provisioner(site.model_copy(update=settings), overlap.tools).provision("demo", params)


@pytest.mark.parametrize(
    ("params", "settings", "early"),
    [({"instances": 1}, {}, True), ({"instances": 1, "cpu": 2}, {}, False),
     ({"instances": 1}, {"converge_early": False}, False)],
    ids=["converge", "other-params", "turned-off"],
)  # fmt: skip
def test_a_converge_configures_the_hosts_while_terraform_plans(site, params, settings, early):
    """Same params as the last successful run: the playbooks run beside Terraform's plan, once, and the run
    takes what they did (Terraform changes nothing). Other params, or the setting off: after Terraform."""
    overlap = _Overlap(wait_s=10 if early else 0.3, check=False)
    done = _converged(site, overlap, params, **settings)
    assert overlap.seen_during_plan == ([True, True] if early else [False, False])
    assert [p for p, _, _ in overlap.tools.playbook_runs] == ["base", "app"] and set(done.ansible) == {"base", "app"}


def test_an_early_configuration_is_forgotten_when_terraform_changes_something(site):
    overlap = _Overlap(wait_s=10, check=False)
    provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    overlap.check_started.clear()
    resources, _ = overlap.tools.world.state[("demo", "tag")]
    address = next(iter(resources))
    resources[address] = {**resources[address], "drifted": True}  # changed out of band: the plan updates it
    overlap.tools.playbook_runs.clear()
    overlap.armed = True
    done = provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    assert done.terraform["tag"].change == 1 and overlap.seen_during_plan == [True, True]
    # what ran beside the plan is forgotten: the playbooks run again once Terraform's change is made
    assert [p for p, _, _ in overlap.tools.playbook_runs] == ["base", "app", "base", "app"]


def test_an_early_configuration_that_fails_fails_the_run_at_its_playbook(site):
    overlap = _Overlap(wait_s=10, check=False)
    provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    overlap.check_started.clear()
    overlap.armed = True
    overlap.tools.failing_hosts.add("demo-1")
    with pytest.raises(PlaybookError):
        provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    assert overlap.seen_during_plan == [True, True]
    run = provisioner(site, overlap.tools).status("demo").last_run
    assert (run.outcome, run.failed_step, run.failed_hosts) == ("failed", "ansible.base", ("demo-1",))


def test_an_early_configuration_is_stopped_and_not_blamed_when_terraform_fails(site):
    overlap = _Overlap(wait_s=10, check=False)
    provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    overlap.check_started.clear()
    overlap.armed = True
    overlap.tools.failing_hosts.add("demo-1")  # the early playbook fails too, but Terraform's failure is the run's
    world_plan = overlap.tools.terraform

    def failing_terraform(context):
        found = world_plan(context)
        plan = found.plan

        def plan_then_fail(*args, **kwargs):
            plan(*args, **kwargs)
            raise TerraformError("terraform plan exited 1", step="terraform.plan.vm", returncode=1)

        found.plan = plan_then_fail
        return found

    overlap.tools.terraform = failing_terraform
    with pytest.raises(TerraformError):
        provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    run = provisioner(site, overlap.tools).status("demo").last_run
    assert (run.outcome, run.failed_step, run.failed_hosts) == ("failed", "terraform.plan.vm", ())


def test_hosts_that_do_not_answer_at_once_are_configured_after_terraform(site):
    """The early playbooks need every host to answer at once; one that does not is waited for after Terraform,
    with the run's own SSH timeout (a guest rebooting is not an error)."""
    overlap = _Overlap(wait_s=0.3, check=False)
    provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    overlap.check_started.clear()
    overlap.tools.playbook_runs.clear()
    overlap.armed = True
    waits: list[float] = []

    class SlowGuests(FakeGuests):
        def __init__(self, context):
            self.timeout = context.settings.ssh_wait_timeout_s

        def wait(self, inventory):
            waits.append(self.timeout)
            if self.timeout < 1:
                raise SshUnreachable("no answer yet")

    overlap.tools.guests = SlowGuests
    done = provisioner(site, overlap.tools).provision("demo", {"instances": 1})
    assert overlap.seen_during_plan == [False, False] and waits == [0.01, site.ssh_wait_timeout_s]
    assert [p for p, _, _ in overlap.tools.playbook_runs] == ["base", "app"] and set(done.ansible) == {"base", "app"}
