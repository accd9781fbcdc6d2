"""One run on one deployment: its context, steps and timings, values, tools and private files.

A :class:`Session` is built from explicit collaborators (settings, store, tools, secret source, event
callback, cancel event) and knows nothing of the facade that made it. The operations (:mod:`.plan`,
:mod:`.apply`, :mod:`.destroy`, :mod:`.drift`) are functions of a session.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from umc_infra.ansible.inventory import Inventory
from umc_infra.ansible.runner import Play, PlaybookResult
from umc_infra.blueprint.model import Blueprint, HookPoint, PlaybookSpec
from umc_infra.blueprint.references import Values, resolve, resolve_all
from umc_infra.errors import Cancelled, StateBackendError, UmcInfraError
from umc_infra.events import Event, EventCallback, OutputLine, StepFinished, StepStarted, numbered
from umc_infra.params import ResolvedParams
from umc_infra.run import hooks as _hooks
from umc_infra.run.journal import Journal
from umc_infra.run.recovery import DeadRun
from umc_infra.run.results import masked
from umc_infra.run.tools import AnsibleTool, GuestsTool, TerraformTool, ToolContext, Tools
from umc_infra.secrets import source as _secrets
from umc_infra.secrets.redact import Redactor
from umc_infra.secrets.source import SecretSource
from umc_infra.settings import Settings
from umc_infra.state import ipam as _ipam
from umc_infra.state.records import Records, RunRecord
from umc_infra.state.store import StateStore


class Session:
    """One run on one deployment.

    Args:
        settings: Site settings.
        store: The state backend.
        tools: Makes Terraform, Ansible and the SSH checks.
        secret_source: Where secrets come from.
        on_event: The caller's callback; the session numbers each event of the run.
        cancel: Set from any thread to stop the run at the next step, or its running tool gracefully.
        deployment: The deployment's name (validated by the caller).
        redactor: Hides secret values; it starts with the credentials of the settings.
    """

    spec: Blueprint
    params: ResolvedParams

    def __init__(
        self,
        *,
        settings: Settings,
        store: StateStore,
        tools: Tools,
        secret_source: SecretSource,
        on_event: EventCallback,
        cancel: threading.Event,
        deployment: str,
        redactor: Redactor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.records = Records(store)
        self.tools = tools
        self.secret_source = secret_source
        self.on_event = numbered(on_event)
        self.cancel = cancel
        self.deployment = deployment
        self.redactor = redactor
        self.timings: dict[str, float] = {}
        self.started_at = datetime.now(UTC)
        self.failed_step: str | None = None
        self.cleanup = contextlib.ExitStack()
        self.private = Path()
        """The run's private directory (set when the lease is held)."""
        self.dead: DeadRun | None = None
        """The run before this one on the deployment, if it died (found when the lease is taken)."""
        self.journal: Journal | None = None
        self.previous_run: RunRecord | None = None
        self._values: Values | None = None
        self.inventory: Inventory | None = None
        """The run's hosts, once built (provision) or read from the record (plan, drift)."""
        self._terraform: TerraformTool | None = None
        self._ansible: AnsibleTool | None = None
        self._tags_ensured: set[str] = set()
        self._thread = threading.local()

    def __repr__(self) -> str:
        return f"Session(deployment={self.deployment!r})"

    # -- events and steps ---------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Hand an event to the caller (numbered)."""
        self.on_event(event)

    @contextlib.contextmanager
    def step(self, name: str, *, parts: Collection[str] = ()) -> Iterator[None]:
        """A named, timed step; an error passing through it names it as the failed step.

        ``parts``: finer steps within it that an error may name (its ``step``) as the failed step instead.
        """
        if self.cancel.is_set():
            raise Cancelled(f"cancelled before step {name!r} of deployment {self.deployment!r}", step=name)
        self.emit(StepStarted(deployment=self.deployment, step=name))
        started = time.monotonic()
        ok = False
        finer: str | None = None
        try:
            yield
            ok = True
        except UmcInfraError as exc:
            finer = exc.step if exc.step in parts else None  # one playbook of several, say
            raise
        finally:
            aside = getattr(self._thread, "failed_steps", None)  # a thread whose outcome the run may not take
            if not ok and aside is not None:
                aside.append(finer or name)
            elif not ok and self.failed_step is None:  # the innermost step an error passes through
                self.failed_step = finer or name
            seconds = time.monotonic() - started
            self.timings[name] = round(seconds, 3)
            self.emit(StepFinished(deployment=self.deployment, step=name, seconds=seconds, ok=ok))

    # -- values, tools, files -----------------------------------------------------------------------

    @property
    def values(self) -> Values:
        """What references resolve against; secrets are read (once) on first use."""
        if self._values is None:
            with self.step("secrets"):
                secrets = _secrets.resolve(self.spec, self.params, self.secret_source)
            self.redactor.add(*self.params.secret_values(), *secrets.all())
            self._values = Values.of(settings=self.settings, params=self.params, secrets=secrets)
        return self._values

    def value(self, value: Any, *, where: str) -> Any:
        """A blueprint value (reference, literal or format) resolved against this run's values."""
        return resolve(value, self.values, where=where)

    def inputs(self, module: str) -> dict[str, Any]:
        """A module's inputs, resolved."""
        return resolve_all(self.spec.modules[module].inputs, self.values, where=f"modules.{module}.inputs")

    def playbook_vars(self, play: PlaybookSpec) -> dict[str, Any]:
        """A playbook's vars, resolved."""
        return resolve_all(play.vars, self.values, where=f"playbooks.{play.playbook}.vars")

    def context(self) -> ToolContext:
        """What the run's tools are given."""
        return ToolContext(settings=self.settings, deployment=self.deployment, on_event=self.on_event,
                           redactor=self.redactor, cancel=self.cancel, private_dir=self.private,
                           on_lock=self.lock_taken, store=self.store)  # fmt: skip

    @property
    def terraform(self) -> TerraformTool:
        """The run's Terraform (its version checked once)."""
        if self._terraform is None:
            terraform = self.tools.terraform(self.context())
            with self.step("terraform.version"):
                terraform.check_version()
            self._terraform = terraform
        return self._terraform

    @contextlib.contextmanager
    def failed_steps_aside(self) -> Iterator[list[str]]:
        """In the block, on this thread, a failed step is listed, not taken as the run's failed step."""
        aside: list[str] = []
        self._thread.failed_steps = aside
        try:
            yield aside
        finally:
            del self._thread.failed_steps

    def ansible(self) -> AnsibleTool:
        """The run's Ansible: its playbooks share SSH connections until the run ends."""
        if self._ansible is None:
            self._ansible = self.cleanup.enter_context(self.tools.ansible(self.context(), self.spec.playbook_file))
        return self._ansible

    def playbooks(
        self,
        plays: Sequence[PlaybookSpec],
        *,
        inventory: Inventory,
        known_hosts: str,
        check: bool = False,
        only: Sequence[str] | None = None,
        ansible: AnsibleTool | None = None,
    ) -> dict[str, PlaybookResult]:
        """Run ``plays`` in order (``only``: the first on these hosts alone), each a step ``ansible[.check].<name>``.

        With the blueprint's ``ansible.one_run``, those that may share an ``ansible-playbook`` run do (see
        :meth:`Blueprint.playbook_runs`), a step ``ansible[.check].<name>+<name>...`` (a failure still names its
        playbook as the failed step). ``ansible``: another than the run's own (one with a cancel of its own).
        """
        assert self.spec.ansible is not None
        ansible = ansible or self.ansible()
        key = self.value(self.spec.ansible.ssh_private_key, where="ansible.ssh_private_key")
        prefix = "ansible.check" if check else "ansible"
        batches = [[play] for play in plays[:1]] if only else []
        batches += self.spec.playbook_runs(plays[len(batches) :])
        played: dict[str, PlaybookResult] = {}
        for i, batch in enumerate(batches):
            limit = only if only and i == 0 else None
            if len(batch) == 1:
                play = batch[0]
                with self.step(f"{prefix}.{play.playbook}"):
                    played[play.playbook] = ansible.run(
                        play.playbook, inventory=inventory, hosts=play.hosts, user=self.spec.ansible.user,
                        ssh_key=key, variables=self.playbook_vars(play), check=check, only=limit,
                        known_hosts=known_hosts,
                    )  # fmt: skip
                continue
            together = [Play(playbook=p.playbook, hosts=p.hosts, variables=self.playbook_vars(p)) for p in batch]
            names = [p.playbook for p in batch]
            with self.step(f"{prefix}.{'+'.join(names)}", parts={f"{prefix}.{n}" for n in names}):
                played |= ansible.run_together(together, inventory=inventory, user=self.spec.ansible.user,
                                               ssh_key=key, check=check, known_hosts=known_hosts)  # fmt: skip
        return played

    @property
    def guests(self) -> GuestsTool:
        """SSH reachability and host keys of the run's VMs."""
        return self.tools.guests(self.context())

    def lock_taken(self, module: str, lock_id: str) -> None:
        """Terraform took a state lock: the journal notes its id, for the recovery should the run die."""
        if self.journal is not None:
            self.journal.lock_taken(module, lock_id)

    def module_dir(self, module: str) -> Path:
        """Where the blueprint's module instance ``module`` has its Terraform files."""
        return self.spec.module_dir(self.spec.modules[module].source)

    def workdir(self, module: str) -> Path:
        """The module instance's working directory."""
        return self.settings.state_dir / "work" / self.deployment / module

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A directory in the run's private directory for plan files (they hold variable values, secrets too)."""
        directory = Path(tempfile.mkdtemp(prefix="plan-", dir=self.private))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def prepare(self, module: str, inputs: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, SecretStr]]:
        """The module's working directory with its inputs, initialised; returns it and the secret inputs."""
        self.check_space()
        plain, secret = split_secrets(self.inputs(module) if inputs is None else inputs)
        if plain.get("tags"):
            self.ensure_tags(plain["tags"])
        workdir = self.workdir(module)
        self.terraform.prepare(self.module_dir(module), workdir, module=module, inputs=plain)
        self.terraform.init(workdir, module=module)
        return workdir, secret

    def ensure_tags(self, tags: Sequence[str]) -> None:
        """A module's ``tags`` input names site tags (``Category/Name``): make those vCenter lacks, once a run."""
        missing = sorted(set(tags) - self._tags_ensured)
        if not missing:
            return
        with self.step("vcenter.tags"):
            made = self.tools.vcenter(self.context(), self.secret_source).ensure_tags(missing)
        for tag in made:
            self.emit(OutputLine(deployment=self.deployment, step="vcenter.tags", line=f"made vCenter tag {tag}"))
        self._tags_ensured.update(missing)

    def init_only(self, module: str) -> Path:
        """The module's working directory, initialised, for commands that need no inputs (state, locks)."""
        workdir = self.workdir(module)
        self.terraform.prepare(self.module_dir(module), workdir, module=module, inputs={})
        self.terraform.init(workdir, module=module)
        return workdir

    def check_space(self) -> None:
        """Refuse to run Terraform when the state directory is nearly full (it could not write its state).

        Raises:
            StateBackendError: Less than ``min_free_mb`` free.
        """
        directory = self.settings.state_dir
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        free_mb = shutil.disk_usage(directory).free / 2**20
        if free_mb < self.settings.min_free_mb:
            raise StateBackendError(
                f"the state directory {self.settings.state_dir} has {free_mb:.1f} MB free; umc_infra needs "
                f"{self.settings.min_free_mb} MB (UMC_MIN_FREE_MB) so Terraform can always write its state. "
                "Nothing was changed: free space and run again",
                step="space",
            )

    def read_outputs(self, module: str, workdir: Path) -> dict[str, Any]:
        """The module's outputs after an apply (or with nothing to apply); sensitive ones as SecretStr."""
        raw = self.terraform.outputs(workdir, module=module)
        self.redactor.add(*(str(o["value"]) for o in raw.values() if o.get("sensitive") and o.get("value")))
        outputs = {k: SecretStr(str(o["value"])) if o.get("sensitive") else o["value"] for k, o in raw.items()}
        self.remember_outputs(module, outputs)
        return outputs

    def remember_outputs(self, module: str, outputs: dict[str, Any]) -> None:
        """References to ``module``'s outputs resolve to these from now on (read, or planned)."""
        self._values = self.values.with_outputs(module, outputs)

    def remember_inventory(self, inventory: Inventory) -> None:
        """The run's hosts: ``hosts.<group>.ips`` resolve to their addresses from now on."""
        self.inventory = inventory
        groups = {group: [h.ip for h in inventory.in_group(group)] for group in self.spec.groups}
        self._values = self.values.with_groups(groups)

    # -- addresses ----------------------------------------------------------------------------------

    def addresses(self, *, dry_run: bool = False) -> None:
        """Claim (or, ``dry_run``, only find) the addresses of every module that declares some."""
        with self.step("addresses"):
            site = _ipam.Site.of(self.settings)
            _ipam.check_given(self.spec, lambda v: self.value(v, where="addresses"), site=site)
            for name, module in self.spec.modules.items():
                if module.addresses is None:
                    continue
                count = int(self.value(module.addresses.count, where=f"modules.{name}.addresses.count"))
                given = (self.value(module.addresses.given, where=f"modules.{name}.addresses.given")
                         if module.addresses.given else [])  # fmt: skip
                self._values = self.values.with_addresses(name, _ipam.allocate(
                    self.store, pool=self.settings.ip_pool, deployment=self.deployment, module=name,
                    count=count, given=[str(a) for a in given], dry_run=dry_run, site=site,
                ))  # fmt: skip

    def held_addresses(self, module: str) -> None:
        """The addresses a module holds now (destroy and drift: nothing is claimed)."""
        self._values = self.values.with_addresses(module, _ipam.held(self.store, deployment=self.deployment,
                                                                     module=module))  # fmt: skip

    def release_removed_addresses(self) -> None:
        """After the apply: free the addresses no VM uses any more (a scale-down, a VM given a new address)."""
        with self.step("addresses.release"):
            for name, module in self.spec.modules.items():
                if module.addresses is not None:
                    _ipam.release_unused(self.store, deployment=self.deployment, module=name,
                                         keep=self.values.addresses[name])  # fmt: skip

    # -- hooks and hosts ----------------------------------------------------------------------------

    def hooks(self, at: HookPoint, action: Literal["provision", "destroy"]) -> None:
        """Run the blueprint's hooks for ``at``, each as a step; a hook stops the run by raising."""
        for hook in self.spec.hooks:
            if hook.at != at:
                continue
            values = self._values
            context = _hooks.HookContext(
                at=at, action=action, deployment=self.deployment, blueprint=self.spec.name, version=self.spec.version,
                params=self.params.masked(),
                addresses={m: tuple(a) for m, a in (values.addresses if values else {}).items()},
                outputs=masked(values.outputs if values else {}),
                hosts=self.inventory.hosts if self.inventory else (),
            )  # fmt: skip
            with self.step(f"hook.{at}.{hook.call}"):
                _hooks.call(hook.call, context, self.redactor)

    def known_hosts(self, inventory: Inventory, *, recreated: set[str] | tuple[str, ...], by_vm_id: bool = True) -> str:
        """Check each host's SSH host keys against its pin (pinning new VMs); the ``known_hosts`` for SSH.

        A VM's id comes from its module's ``ids`` output where the module has one: a VM rebuilt under the
        same name is then known to be new. Without ``by_vm_id`` (plan's and drift's check mode, which may run
        before Terraform has read the outputs) every pinned host must show its pinned keys.
        """
        hosts: list[tuple[str, str, str | None]] = []
        for host in inventory.hosts:
            if not by_vm_id:
                hosts.append((host.name, host.ip, None))
                continue
            spec = next((h for h in self.spec.hosts if h.module == host.module), None)
            outputs = self.values.outputs.get(host.module, {})
            names = outputs.get(spec.names) if spec is not None else None
            ids = outputs.get("ids")
            vm_id = None
            if isinstance(names, list) and isinstance(ids, list) and len(ids) == len(names) and host.name in names:
                vm_id = str(ids[names.index(host.name)])
            hosts.append((host.name, host.ip, vm_id))
        return self.guests.known_hosts(hosts, recreated=recreated)


def split_secrets(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, SecretStr]]:
    """Inputs that go to the vars file, and secret ones that go to ``TF_VAR_*``."""
    plain = {k: v for k, v in inputs.items() if not isinstance(v, SecretStr)}
    return plain, {k: v for k, v in inputs.items() if isinstance(v, SecretStr)}
