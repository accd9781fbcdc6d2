"""Fakes behind the run's Tools Protocols: a Terraform that keeps state in memory, an Ansible that records.

A fake module is a function from its inputs to the resources it wants and the outputs it gives; the fake
Terraform plans by comparing that with its state, and applies by storing it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from umc_infra import HostStats, PlaybookError, PlaybookResult
from umc_infra.ansible.inventory import Inventory
from umc_infra.ansible.runner import Play
from umc_infra.terraform.plan import ChangeCounts, ResourceChange, TerraformPlan

Desired = Callable[[Mapping[str, Any]], tuple[dict[str, dict[str, Any]], dict[str, Any]]]
"""inputs -> (resources by address, outputs)."""


def vms(inputs: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """A VM module: one VM per instance, named ``<prefix>-<n>``, at the given addresses."""
    names = [f"{inputs['name_prefix']}-{i + 1}" for i in range(int(inputs["instances"]))]
    resources = {
        f"fake_vm.vm[{i}]": {"name": name, "folder": "umc", "cpu": inputs.get("cpu", 1)} for i, name in enumerate(names)
    }
    ips = list(inputs.get("addresses", []))
    return resources, {"names": names, "ips": ips, "ids": [f"id-{n}" for n in names]}


def label(inputs: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """A module that reads another's outputs: one label naming them."""
    text = ",".join(inputs["names"])
    return {"fake_label.it": {"text": text}}, {"label": text}


class World:
    """What the fake Terraform keeps: state per (deployment, module), and every call in order."""

    def __init__(self, modules: Mapping[str, Desired], unknown_until_apply: Collection[str] = ()) -> None:
        self.modules = dict(modules)
        self.unknown_until_apply = set(unknown_until_apply)
        """Outputs (``module.output``) a plan cannot know: they appear only after the apply."""
        self.state: dict[tuple[str, str], tuple[dict[str, dict[str, Any]], dict[str, Any]]] = {}
        self.calls: list[tuple[str, str]] = []
        self.applied_inputs: dict[str, dict[str, Any]] = {}


class FakeTerraform:
    """The TerraformTool Protocol over a :class:`World`."""

    def __init__(self, world: World, deployment: str) -> None:
        self.world = world
        self.deployment = deployment
        self.inputs: dict[str, dict[str, Any]] = {}

    def check_version(self) -> str:
        return "1.0.3"

    def prepare(self, source: Path, workdir: Path, *, module: str, inputs: Mapping[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.inputs[module] = dict(inputs)

    def init(self, workdir: Path, *, module: str) -> None:
        self.world.calls.append(("init", module))

    def _current(self, module: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        return self.world.state.get((self.deployment, module), ({}, {}))

    def plan(self, workdir: Path, planfile: Path, *, module: str, secret_inputs: Mapping[str, SecretStr],
             destroy: bool = False, refresh_only: bool = False) -> TerraformPlan:  # fmt: skip
        self.world.calls.append(("plan", module))
        inputs = self.inputs[module] | {k: v.get_secret_value() for k, v in secret_inputs.items()}
        wanted, outputs = self.world.modules[module](inputs)
        have, _ = self._current(module)
        changes = []
        for address in sorted(set(wanted) | set(have)):
            if address not in have:
                action = "create"
            elif address not in wanted:
                action = "delete"
            elif have[address] != wanted[address]:
                action = "update"
            else:
                continue
            changes.append(ResourceChange(module=module, address=address, action=action))  # type: ignore[arg-type]
        planfile.write_text(json.dumps({"wanted": wanted, "outputs": outputs, "inputs": inputs}))
        unknown = {o.split(".", 1)[1] for o in self.world.unknown_until_apply if o.startswith(f"{module}.")}
        new_vms = tuple(f"{w['folder']}/{w['name']}" for a, w in wanted.items() if a not in have and "name" in w)
        return TerraformPlan(
            resources=tuple(changes), new_vms=new_vms,
            outputs={k: v for k, v in outputs.items() if k not in unknown},
        )  # fmt: skip

    def apply_plan(self, workdir: Path, planfile: Path, *, module: str) -> ChangeCounts:
        self.world.calls.append(("apply", module))
        saved = json.loads(planfile.read_text())
        have, _ = self._current(module)
        self.world.state[(self.deployment, module)] = (saved["wanted"], saved["outputs"])
        self.world.applied_inputs[module] = saved["inputs"]
        wanted = saved["wanted"]
        return ChangeCounts(add=len(set(wanted) - set(have)), remove=len(set(have) - set(wanted)),
                            change=sum(1 for a in wanted if a in have and have[a] != wanted[a]))  # fmt: skip

    def apply(self, workdir: Path, *, module: str, secret_inputs: Mapping[str, SecretStr],
              destroy: bool = False) -> ChangeCounts:  # fmt: skip
        self.world.calls.append(("destroy" if destroy else "apply", module))
        have, _ = self._current(module)
        if destroy:
            self.world.state.pop((self.deployment, module), None)
            return ChangeCounts(remove=len(have))
        raise AssertionError("the orchestrator applies saved plans")

    def outputs(self, workdir: Path, *, module: str) -> dict[str, dict[str, Any]]:
        self.world.calls.append(("output", module))
        _, outputs = self._current(module)
        return {k: {"value": v, "sensitive": False} for k, v in outputs.items()}

    def state_vms(self, workdir: Path, *, module: str) -> set[str]:
        have, _ = self._current(module)
        return {f"{w['folder']}/{w['name']}" for w in have.values() if "name" in w}

    def force_unlock(self, workdir: Path, *, module: str, lock_id: str) -> None:
        self.world.calls.append(("force-unlock", module))


class FakeAnsible:
    """The AnsibleTool Protocol: records each run; fails the tasks of the hosts in ``failing``."""

    def __init__(self, runs: list[tuple[str, tuple[str, ...], bool]], failing: set[str],
                 together: list[tuple[str, ...]] | None = None) -> None:  # fmt: skip
        self.runs = runs
        self.failing = failing
        self.together = together if together is not None else []
        """The playbooks of each run_together call."""

    def run(self, playbook: str, *, inventory: Inventory, hosts: str, user: str, ssh_key: SecretStr,
            variables: Mapping[str, Any], check: bool = False, only: Sequence[str] | None = None,
            known_hosts: str | None = None) -> PlaybookResult:  # fmt: skip
        targets = tuple(h.name for h in inventory.in_group(hosts) if not only or h.name in only)
        self.runs.append((playbook, targets, check))
        failed = [h for h in targets if h in self.failing]
        if failed:
            failures = [(h, "a task", "boom") for h in failed]
            raise PlaybookError(f"playbook {playbook!r} failed on {failed}", playbook=playbook, failures=failures,
                                step=f"ansible.{playbook}")  # fmt: skip
        return PlaybookResult(playbook=playbook, hosts={h: HostStats(ok=1) for h in targets}, seconds=0.0)

    def run_together(self, plays: Sequence[Play], *, inventory: Inventory, user: str, ssh_key: SecretStr,
                     check: bool = False, only: Sequence[str] | None = None,
                     known_hosts: str | None = None) -> dict[str, PlaybookResult]:  # fmt: skip
        self.together.append(tuple(p.playbook for p in plays))
        return {p.playbook: self.run(p.playbook, inventory=inventory, hosts=p.hosts, user=user, ssh_key=ssh_key,
                                     variables=p.variables, check=check, only=only, known_hosts=known_hosts)
                for p in plays}  # fmt: skip


class FakeGuests:
    def wait(self, inventory: Inventory) -> None:
        return None

    def known_hosts(self, hosts: Sequence[tuple[str, str, str | None]], *, recreated: Collection[str]) -> str:
        return ""


class FakeTools:
    """The Tools Protocol over a :class:`World`: what a test sets up and reads back."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.playbook_runs: list[tuple[str, tuple[str, ...], bool]] = []
        self.failing_hosts: set[str] = set()
        self.together: list[tuple[str, ...]] = []

    def terraform(self, context: Any) -> FakeTerraform:
        return FakeTerraform(self.world, context.deployment)

    @contextlib.contextmanager
    def _ansible(self) -> Iterator[FakeAnsible]:
        yield FakeAnsible(self.playbook_runs, self.failing_hosts, self.together)

    def ansible(self, context: Any, locate: Any) -> contextlib.AbstractContextManager[FakeAnsible]:
        return self._ansible()

    def guests(self, context: Any) -> FakeGuests:
        return FakeGuests()


class FakeSecrets:
    """A SecretSource: every secret is ``secret-<key>``."""

    def read(self, ref: Any) -> SecretStr:
        return SecretStr(f"secret-{ref.key}")
