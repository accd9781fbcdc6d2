"""The orchestrator: sequences the stages for plan, provision, destroy and drift; nothing more.

``blueprint -> params -> lock -> secrets -> addresses -> terraform plan per module -> policy ->
terraform apply -> inventory -> ssh -> playbooks -> record -> result``. Each stage is its own module
with a typed interface; this one only decides the order, keeps the record, and cleans up.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra import (
    _blueprint,
    _hooks,
    _hostkeys,
    _inventory,
    _ipam,
    _lock,
    _params,
    _private,
    _recovery,
    _secrets,
    _tflock,
    _vcenter,
)
from umc_infra._ansible import Ansible, PlaybookResult
from umc_infra._blueprint import Blueprint, Format, HookPoint, Literal_, Value
from umc_infra._catalog import Catalog
from umc_infra._errors import (
    Cancelled,
    ComponentFailed,
    DeploymentNotFound,
    DestroyNotAllowed,
    ParamsError,
    PlanChanged,
    RecoveryError,
    RollbackFailed,
    StateBackendError,
    UmcInfraError,
)
from umc_infra._events import Event, EventCallback, OutputLine, StepFinished, StepStarted, ignore, numbered
from umc_infra._hooks import HookContext
from umc_infra._inventory import Host, Inventory
from umc_infra._journal import Journal, error_text
from umc_infra._lock import LockInfo
from umc_infra._params import MASK, ResolvedParams
from umc_infra._process import Redactor, sigterm_as_interrupt
from umc_infra._records import DeploymentRecord, Records, RunRecord
from umc_infra._secrets import Secrets, SecretSource, VaultSource
from umc_infra._settings import SITE_FIELDS, Settings, load_settings
from umc_infra._store import StateStore, open_store
from umc_infra._terraform import ChangeCounts, ResourceChange, Terraform, TerraformPlan, counts_of


class ProvisionResult(BaseModel):
    """What a provision did. Secret params and sensitive outputs show as ``***``."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    blueprint: str
    version: str
    params: dict[str, Any]
    hosts: tuple[Host, ...]
    outputs: dict[str, Any]
    terraform: dict[str, ChangeCounts]
    ansible: dict[str, PlaybookResult]
    timings: dict[str, float]
    started_at: datetime
    finished_at: datetime

    @property
    def changed(self) -> bool:
        """Whether Terraform or Ansible changed anything."""
        return any(c != ChangeCounts() for c in self.terraform.values()) or any(
            p.changed for p in self.ansible.values()
        )


class ConfigChange(BaseModel):
    """A task Ansible check mode says would change on a host."""

    model_config = ConfigDict(frozen=True)

    playbook: str
    host: str
    task: str


class PlanResult(BaseModel):
    """What ``provision`` would change; nothing was changed to find out."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    blueprint: str
    version: str
    params: dict[str, Any]
    exists: bool
    """The deployment exists (an update), or would be created."""
    previous_version: str | None
    resources: tuple[ResourceChange, ...]
    configuration: tuple[ConfigChange, ...]
    """For existing hosts: tasks that would change (Ansible check mode with diff)."""
    fingerprint: str
    """Identifies exactly these changes; ``provision(plan=...)`` refuses if the world moved since."""

    @property
    def counts(self) -> dict[str, ChangeCounts]:
        """Add/change/remove per module."""
        modules = dict.fromkeys(r.module for r in self.resources)
        return {m: counts_of([r for r in self.resources if r.module == m]) for m in modules}

    @property
    def destroys(self) -> list[str]:
        """Resources that would be deleted or replaced."""
        return [f"{r.module}: {r.address} ({r.action})" for r in self.resources if r.action in ("delete", "replace")]

    @property
    def version_change(self) -> str | None:
        """``1.0.0 -> 1.1.0`` when an existing deployment would move to another blueprint version."""
        if self.exists and self.previous_version is not None and self.previous_version != self.version:
            return f"{self.previous_version} -> {self.version}"
        return None

    @property
    def changed(self) -> bool:
        """Whether anything would change (the blueprint version included)."""
        return bool(self.resources or self.configuration or self.version_change)


class DestroyResult(BaseModel):
    """What ``destroy`` did."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    already_destroyed: bool
    terraform: dict[str, ChangeCounts]
    released_addresses: tuple[str, ...]


class DriftReport(BaseModel):
    """Differences between what a deployment should be and what it is."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    compute: tuple[ResourceChange, ...]
    """Changed outside Terraform, e.g. a VM's memory changed in vCenter."""
    configuration: tuple[ConfigChange, ...]
    """Managed configuration changed on a host, e.g. a file edited by hand."""
    checked_at: datetime

    @property
    def has_drift(self) -> bool:
        """Whether anything drifted."""
        return bool(self.compute or self.configuration)


class _Run:
    """The values of one run that references resolve against."""

    def __init__(self, settings: Settings, params: ResolvedParams, secrets: Secrets) -> None:
        self.settings = settings
        self.params = params
        self.secrets = secrets
        self.addresses: dict[str, list[str]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.inventory: Inventory | None = None

    def value(self, value: Value) -> Any:
        if isinstance(value, str) and value.endswith("]"):
            ref, _, index = value[:-1].partition("[")
            items = self.value(ref)
            if not isinstance(items, list) or int(index) >= len(items):
                raise UmcInfraError(f"{value}: {ref} has no item {index}", step="references")
            return items[int(index)]
        if isinstance(value, Literal_):
            return value.value
        if isinstance(value, Format):
            allowed = {"deployment": self.params.deployment} | {
                k: v for k, v in self.params.values.items() if not isinstance(v, SecretStr)
            }
            return value.format.format_map(allowed)
        kind, _, rest = value.partition(".")
        if kind == "deployment":
            return self.params.deployment
        if kind == "params":
            return self.params.values[rest]
        if kind == "secrets":
            return self.secrets[rest]
        if kind == "addresses":
            return self.addresses[rest]
        if kind == "modules":
            module, _, output = rest.partition(".")
            return self.outputs[module][output]
        if kind == "hosts":
            assert self.inventory is not None
            return [h.ip for h in self.inventory.in_group(rest.partition(".")[0])]
        field = SITE_FIELDS[rest]
        setting = getattr(self.settings, field)
        if setting is None:
            alias = Settings.model_fields[field].validation_alias
            names = getattr(alias, "choices", [field.upper()])
            raise UmcInfraError(
                f"site setting {rest!r} is not set; export {names[0]}=... (or pass Settings({field}=...))",
                step="site",
            )
        return setting

    def inputs(self, spec: Blueprint, module: str) -> dict[str, Any]:
        return {key: self.value(value) for key, value in spec.modules[module].inputs.items()}


def _split(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, SecretStr]]:
    plain = {k: v for k, v in inputs.items() if not isinstance(v, SecretStr)}
    return plain, {k: v for k, v in inputs.items() if isinstance(v, SecretStr)}


def _fingerprint(params: Mapping[str, Any], resources: list[ResourceChange]) -> str:
    data = {"params": params, "resources": [r.model_dump(mode="json") for r in resources]}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Provisioner:
    """Plans, provisions, destroys and checks deployments from blueprints.

    Args:
        settings: Site settings; default from the environment (``UMC_*``, ``VAULT_*``).
        secret_source: Where secrets come from; default Vault through hvac.
        store: The state backend for records, locks and IP allocations; default from the settings.
        on_event: Called with each typed progress event.
        cancel: Set it (from any thread) to stop the run at the next step, or the running tool gracefully.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        secret_source: SecretSource | None = None,
        store: StateStore | None = None,
        on_event: EventCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self._secret_source = secret_source
        self._store = store
        self._on_event = on_event or ignore
        self.cancel = cancel or threading.Event()

    def __repr__(self) -> str:
        return f"Provisioner(backend={self.settings.backend!r})"

    @functools.cached_property
    def catalog(self) -> Catalog:
        """The blueprints of every source: built-in, ``UMC_BLUEPRINT_PATH``, installed packages."""
        return Catalog.from_settings(self.settings)

    @property
    def store(self) -> StateStore:
        """The state backend (opened on first use)."""
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    @property
    def records(self) -> Records:
        """Deployment records in the state backend."""
        return Records(self.store)

    def blueprint(self, name: str) -> Blueprint:
        """Load and check a blueprint."""
        return self.catalog.load(name)

    # -- records ------------------------------------------------------------------------------------

    def deployments(self) -> list[DeploymentRecord]:
        """Every deployment's record, destroyed ones included."""
        return self.records.all()

    def status(self, deployment: str) -> DeploymentRecord:
        """A deployment's record.

        Raises:
            DeploymentNotFound: No record in this backend.
        """
        problems = _params.check_deployment(deployment)
        if problems:
            raise ParamsError(problems, blueprint=None, step="records")
        record = self.records.get(deployment)
        if record is None:
            raise DeploymentNotFound(
                f"no deployment {deployment!r} in the {self.settings.backend} backend", step="records"
            )
        return record

    def break_lock(self, deployment: str, *, force: bool = False) -> LockInfo | None:
        """Remove the lease of a run that is gone (or any lease, with ``force``); returns who held it.

        Raises:
            DeploymentLocked: Its holder looks alive and ``force`` is not set.
            StateBackendError: The lease document is corrupt and ``force`` is not set.
        """
        return _lock.break_lock(self.store, deployment, force=force)

    def forget_host_keys(self, deployment: str, host: str | None = None) -> list[str]:
        """Forget the pinned SSH host keys of one VM (or of every VM) of a deployment; the hosts forgotten.

        Only for a VM rebuilt on purpose outside umc_infra: the next run pins whatever answers at its address.
        """
        problems = _params.check_deployment(deployment)
        if problems:
            raise ParamsError(problems, blueprint=None, step="hostkeys")
        return _hostkeys.forget(self.store, deployment, host)

    # -- plan and provision -------------------------------------------------------------------------

    def plan(
        self, blueprint: str, params: Mapping[str, Any], *, deployment: str, lock_timeout_s: float | None = None
    ) -> PlanResult:
        """What ``provision`` would change, per resource and (for existing hosts) per task. Changes nothing.

        It holds the deployment's lease while it plans, as every operation does: it waits for a running
        provision (up to ``lock_timeout_s``) instead of reading half-written working files.
        """
        with self._session(blueprint, params, deployment, operation="plan", lock_timeout_s=lock_timeout_s) as session:
            return session.plan(check_configuration=True)

    def provision(
        self,
        blueprint: str,
        params: Mapping[str, Any],
        *,
        deployment: str,
        plan: PlanResult | None = None,
        allow_destroy: bool = False,
        on_failure: Literal["keep", "destroy"] = "keep",
        lock_timeout_s: float | None = None,
        retry: Literal["failed", "all"] = "failed",
    ) -> ProvisionResult:
        """Create, update or converge ``deployment``.

        Args:
            blueprint: The blueprint's name.
            params: Its parameters.
            deployment: The deployment's name.
            plan: A reviewed :class:`PlanResult`: apply exactly that, or refuse with :class:`PlanChanged`.
            allow_destroy: Let the change delete or replace VMs (scale down, a replacing change).
            on_failure: ``destroy`` rolls back a brand-new deployment that fails; ``keep`` keeps what exists.
            lock_timeout_s: How long to wait for another run on the same deployment (default from settings).
            retry: After a run whose playbook failed on some hosts, ``failed`` resumes at that playbook on
                those hosts (when Terraform changes nothing); ``all`` runs every playbook on every host.

        Raises:
            BlueprintNotFound, BlueprintError, ParamsError: before anything is created.
            DeploymentLocked: another run kept the deployment for the whole timeout.
            DestroyNotAllowed, PlanChanged: before anything is applied.
            SecretError, AddressError, TerraformError, PlaybookError, Cancelled: naming the failed step.
        """
        with self._session(blueprint, params, deployment, operation="provision", lock_timeout_s=lock_timeout_s) as s:
            return s.provision(plan=plan, allow_destroy=allow_destroy, on_failure=on_failure, retry=retry)

    def destroy(self, deployment: str, *, lock_timeout_s: float | None = None) -> DestroyResult:
        """Remove everything a deployment made; the record stays, marked destroyed. Again: a no-op.

        Raises:
            DeploymentNotFound: No record of it.
        """
        record = self.status(deployment)
        if record.state == "destroyed":
            return DestroyResult(deployment=deployment, already_destroyed=True, terraform={}, released_addresses=())
        params = _recorded_params(record)
        with self._session(record.blueprint, params, deployment, operation="destroy", lock_timeout_s=lock_timeout_s,
                           recorded=True) as session:  # fmt: skip
            return session.destroy()

    def drift(self, deployment: str, *, lock_timeout_s: float | None = None) -> DriftReport:
        """Compute drift (Terraform refresh) and configuration drift (Ansible check mode), in one report."""
        record = self.status(deployment)
        if record.state == "destroyed":
            raise DeploymentNotFound(f"deployment {deployment!r} is destroyed", step="drift")
        params = _recorded_params(record)
        with self._session(record.blueprint, params, deployment, operation="drift", recorded=True,
                           lock_timeout_s=lock_timeout_s) as session:  # fmt: skip
            return session.drift(record)

    @contextlib.contextmanager
    def _session(
        self,
        blueprint: str,
        params: Mapping[str, Any],
        deployment: str,
        *,
        operation: Literal["plan", "provision", "destroy", "drift"],
        lock_timeout_s: float | None = None,
        recorded: bool = False,
    ) -> Iterator[_Session]:
        """A run: checked blueprint and params, then the deployment's lease, a private directory, recovery."""
        session = _Session(self, str(deployment))
        with session.cleanup:  # the run's SSH connections and other scratch, whatever happens
            with session.step("blueprint"):
                session.spec = self.blueprint(blueprint)
            with session.step("params"):
                if recorded:  # secret params are never stored: fill them with placeholders
                    params = dict(params) | {
                        n: "recorded-secret-placeholder" for n, p in session.spec.params.items() if p.secret
                    }
                session.params = _params.validate(
                    session.spec, dict(params) if isinstance(params, Mapping) else params, deployment
                )
            timeout = self.settings.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
            # Private directories of runs that died are swept first; tools of a dead run on this deployment
            # get their grace to stop (Terraform writes its state) before this run touches its state.
            _private.sweep(deployment=session.deployment)
            # SIGTERM (a CI runner cancelling the job) stops the run like Ctrl-C: tools stop, the record says so.
            # Every operation holds the lease: plan and drift use the same working directories and state.
            with sigterm_as_interrupt(), _lock.locked(
                self.store, session.deployment, operation=operation, timeout_s=timeout,
                ttl_s=self.settings.lease_ttl_s, on_lost=self.cancel.set,
            ) as lease:  # fmt: skip
                session.private = session.cleanup.enter_context(_private.run_directory(session.deployment))
                session.dead = _recovery.dead_run(self.records.get(session.deployment), lease.previous)
                yield session

    def _wait_for_ssh(self, inventory: Inventory) -> None:
        """Wait until every host answers with an SSH banner."""
        deadline = time.monotonic() + self.settings.ssh_wait_timeout_s
        waiting = {h.name: h.ip for h in inventory.hosts}
        while waiting:
            for name, ip in list(waiting.items()):
                with contextlib.suppress(OSError), socket.create_connection((ip, self.settings.ssh_port), 2) as sock:
                    sock.settimeout(2)
                    if sock.recv(4).startswith(b"SSH-"):
                        del waiting[name]
            if waiting and time.monotonic() > deadline:
                raise ComponentFailed(
                    f"hosts did not answer SSH within {self.settings.ssh_wait_timeout_s:.0f} s: "
                    + ", ".join(f"{n} ({ip})" for n, ip in waiting.items()),
                    step="ssh",
                )
            if waiting:
                time.sleep(0.5)


class _Session:
    """One run on one deployment: its secrets, redactor, working dirs, record and timings."""

    spec: Blueprint
    params: ResolvedParams

    def __init__(self, provisioner: Provisioner, deployment: str) -> None:
        self.p = provisioner
        self.settings = provisioner.settings
        self.deployment = deployment
        self.timings: dict[str, float] = {}
        self.started_at = datetime.now(UTC)
        self.redactor = Redactor(
            c for c in (self.settings.vault_token, self.settings.vault_secret_id, self.settings.vault_jwt) if c
        )
        self._run: _Run | None = None
        self._terraform: Terraform | None = None
        self._ansible: Ansible | None = None
        self._secret_source: SecretSource | None = None
        self.on_event = numbered(provisioner._on_event)
        """The caller's callback, each event of this run numbered."""
        self.cleanup = contextlib.ExitStack()
        self.failed_step: str | None = None
        self.previous_run: RunRecord | None = None
        self.private = Path()
        """The run's private directory (set when the lease is held)."""
        self.dead: _recovery.DeadRun | None = None
        """The run before this one, if it died (found when the lease is taken)."""
        self.journal: Journal | None = None

    # -- plumbing -----------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self.on_event(event)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.p.cancel.is_set():
            raise Cancelled(f"cancelled before step {name!r} of deployment {self.deployment!r}", step=name)
        self.emit(StepStarted(deployment=self.deployment, step=name))
        started = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            if not ok and self.failed_step is None:  # the innermost step an error passes through
                self.failed_step = name
            seconds = time.monotonic() - started
            self.timings[name] = round(seconds, 3)
            self.emit(StepFinished(deployment=self.deployment, step=name, seconds=seconds, ok=ok))

    @property
    def secret_source(self) -> SecretSource:
        if self._secret_source is None:
            self._secret_source = self.p._secret_source or VaultSource(self.settings)
        return self._secret_source

    @property
    def run(self) -> _Run:
        if self._run is None:
            with self.step("secrets"):
                secrets = _secrets.resolve(self.spec, self.params, self.secret_source)
            self.redactor.add(*self.params.secret_values(), *secrets.all())
            self._run = _Run(self.settings, self.params, secrets)
        return self._run

    @property
    def terraform(self) -> Terraform:
        if self._terraform is None:
            self._terraform = Terraform(self.settings, on_event=self.on_event, redactor=self.redactor,
                                        deployment=self.deployment, cancel=self.p.cancel, private_dir=self.private,
                                        on_lock=self.lock_taken)  # fmt: skip
            with self.step("terraform.version"):
                self._terraform.check_version()
        return self._terraform

    def hooks(self, at: HookPoint, action: Literal["provision", "destroy"]) -> None:
        """Run the blueprint's hooks for ``at``, each as a step; a hook stops the run by raising."""
        for hook in self.spec.hooks:
            if hook.at != at:
                continue
            run = self._run
            context = HookContext(
                at=at, action=action, deployment=self.deployment, blueprint=self.spec.name, version=self.spec.version,
                params=self.params.masked(),
                addresses={m: tuple(a) for m, a in (run.addresses if run else {}).items()},
                outputs=_mask(run.outputs if run else {}),
                hosts=run.inventory.hosts if run and run.inventory else (),
            )  # fmt: skip
            with self.step(f"hook.{at}.{hook.call}"):
                _hooks.call(hook.call, context, self.redactor)

    def module_dir(self, module: str) -> Path:
        """Where the blueprint's module instance ``module`` has its Terraform files."""
        return self.spec.module_dir(self.spec.modules[module].source)

    def workdir(self, module: str) -> Path:
        return self.settings.state_dir / "work" / self.deployment / module

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A directory in the run's private directory for plan files (they hold variable values, secrets too)."""
        directory = Path(tempfile.mkdtemp(prefix="plan-", dir=self.private))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def lock_taken(self, module: str, lock_id: str) -> None:
        """A Terraform command took a state lock: the journal notes its id, for the recovery if the run dies."""
        if self.journal is not None:
            self.journal.lock_taken(module, lock_id)

    # -- recovery -----------------------------------------------------------------------------------

    def recover(self, *, full: bool) -> None:
        """Clean up after a run on this deployment that died (see :mod:`umc_infra._recovery`).

        ``full`` (provision, destroy): also record it abandoned and remove the VMs it left that no state
        knows; plan and drift only release its state locks and repair damaged state, which they need to read.
        """
        dead = self.dead
        if dead is None:
            return
        with self.step("recover"):
            how = "died" if dead.died else f"{dead.run.outcome if dead.run else 'failed'} while Terraform worked"
            self.emit(OutputLine(deployment=self.deployment, step="recover",
                                 line=f"the last run ({dead.describe()}) {how}; cleaning up after it"))  # fmt: skip
            record = self.p.records.get(self.deployment)
            if full and record is not None and dead.run is not None and dead.died:
                abandoned = dead.run.model_copy(update={
                    "outcome": "abandoned", "finished_at": datetime.now(UTC),
                    "error": "the run's process died before it finished; the next run cleaned up after it",
                })  # fmt: skip
                state = "interrupted" if record.state == "provisioning" else record.state
                self.p.records.update_run(record, abandoned, state=state)
            modules = [m for m in dict.fromkeys((*(record.modules if record else ()), *self.spec.modules))
                       if m in self.spec.modules]  # fmt: skip
            orphans: list[str] = []
            for module in modules:
                self.release_stale_lock(module, dead)
                if full and dead.new_vms(module):
                    known = self.terraform.state_vms(self.init_only(module), module=module)
                    orphans += [vm for vm in dead.new_vms(module) if vm not in known]
            if orphans:
                self.remove_orphans(orphans, dead)
            self.dead = None

    def init_only(self, module: str) -> Path:
        """The module's working directory, initialised, for commands that need no inputs (state, locks)."""
        workdir = self.workdir(module)
        self.terraform.prepare(self.module_dir(module), workdir, module=module, inputs={})
        self.terraform.init(workdir, module=module)
        return workdir

    def release_stale_lock(self, module: str, dead: _recovery.DeadRun) -> None:
        """Release the module's state lock in DynamoDB if the dead run left it."""
        if not _tflock.applies(self.settings) or dead.since is None:
            return
        lock = _tflock.read(self.settings, self.deployment, module)
        if lock is None:
            return
        stale = _tflock.is_stale(lock, recorded=dead.lock_ids, who=dead.who if dead.died else None,
                                 since=dead.since, in_flight=dead.in_flight(module))  # fmt: skip
        if stale and _private.working_in(self.workdir(module)):
            return  # a live process works in the module's directory (the dead run's Terraform still saving, a
            # person): Terraform's -lock-timeout waits for it rather than breaking its lock
        if not stale:
            raise RecoveryError(
                f"module {module!r} of deployment {self.deployment!r} has a Terraform state lock ({lock.id}, held by "
                f"{lock.who} since {lock.created}) that the run which died did not take. If no Terraform runs on "
                f"it, release it with `terraform force-unlock {lock.id}`; nothing was changed",
                step="recover",
            )
        told = f"releasing the state lock {lock.id} of module {module!r} that the run left"
        self.emit(OutputLine(deployment=self.deployment, step="recover", line=told))
        self.terraform.force_unlock(self.init_only(module), module=module, lock_id=lock.id)

    def remove_orphans(self, vms: list[str], dead: _recovery.DeadRun) -> None:
        """Remove VMs the dead run created that Terraform's state does not know (they would be duplicates)."""
        datacenter = self.settings.vsphere_datacenter
        if not self.settings.vsphere_credentials or not datacenter:
            raise RecoveryError(
                f"the last run of deployment {self.deployment!r} ({dead.describe()}) died while creating VMs; "
                f"these may exist in vCenter but not in Terraform's state: {', '.join(vms)}. Set "
                "UMC_VSPHERE_CREDENTIALS (and UMC_VSPHERE_DATACENTER) so umc_infra removes them, or remove them "
                "by hand; nothing was changed",
                step="recover",
            )
        user, password = _vcenter.credentials(self.settings, self.secret_source)
        self.redactor.add(password)
        with _vcenter.connect(self.settings, user, password) as si:
            for path in vms:
                vm = _vcenter.find_vm(si, datacenter, path)
                if vm is not None:
                    self.emit(
                        OutputLine(
                            deployment=self.deployment,
                            step="recover",
                            line=f"removing VM {path}: the run that died created it, no state knows it",
                        )
                    )
                    _vcenter.remove_vm(si, vm)

    def addresses(self, *, dry_run: bool = False) -> None:
        with self.step("addresses"):
            site = _ipam.Site.of(self.settings)
            _ipam.check_given(self.spec, self.run.value, site=site)
            for name, module in self.spec.modules.items():
                if module.addresses is None:
                    continue
                count = int(self.run.value(module.addresses.count))
                given = self.run.value(module.addresses.given) if module.addresses.given else []
                self.run.addresses[name] = _ipam.allocate(
                    self.p.store, pool=self.settings.ip_pool, deployment=self.deployment, module=name,
                    count=count, given=[str(a) for a in given], dry_run=dry_run, site=site,
                )  # fmt: skip

    def release_removed_addresses(self) -> None:
        """After the apply: free the addresses no VM uses any more (a scale-down, a VM given a new address)."""
        with self.step("addresses.release"):
            for name, module in self.spec.modules.items():
                if module.addresses is not None:
                    _ipam.release_unused(self.p.store, deployment=self.deployment, module=name,
                                         keep=self.run.addresses[name])  # fmt: skip

    def prepare(self, module: str) -> tuple[Path, dict[str, SecretStr]]:
        """Working dir with the module, vars and backend, initialised; returns it and the secret inputs."""
        self.check_space()
        plain, secret = _split(self.run.inputs(self.spec, module))
        workdir = self.workdir(module)
        self.terraform.prepare(self.module_dir(module), workdir, module=module,
                               inputs=plain)  # fmt: skip
        self.terraform.init(workdir, module=module)
        return workdir, secret

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

    def read_outputs(self, module: str, workdir: Path) -> None:
        raw = self.terraform.outputs(workdir, module=module)
        self.redactor.add(*(str(o["value"]) for o in raw.values() if o.get("sensitive") and o.get("value")))
        self.run.outputs[module] = {
            k: SecretStr(str(o["value"])) if o.get("sensitive") else o["value"] for k, o in raw.items()
        }

    def known_hosts(self, inventory: Inventory, *, recreated: set[str] | tuple[str, ...]) -> str:
        """Check each host's SSH host keys against their pin (pinning new VMs); the ``known_hosts`` for SSH.

        A VM's id comes from its module's ``ids`` output where the module has one: a VM rebuilt under the
        same name is then known to be new.
        """
        hosts: list[tuple[str, str, str | None]] = []
        for host in inventory.hosts:
            spec = next((h for h in self.spec.hosts if h.module == host.module), None)
            outputs = self.run.outputs.get(host.module, {})
            names = outputs.get(spec.names) if spec is not None else None
            ids = outputs.get("ids")
            vm_id = None
            if isinstance(names, list) and isinstance(ids, list) and len(ids) == len(names) and host.name in names:
                vm_id = str(ids[names.index(host.name)])
            hosts.append((host.name, host.ip, vm_id))
        return _hostkeys.known_hosts(self.p.store, self.deployment, hosts, recreated=recreated,
                                     port=self.settings.ssh_port)  # fmt: skip

    def playbook_vars(self, play: Any) -> dict[str, Any]:
        return {var: self.run.value(value) for var, value in play.vars.items()}

    def ansible(self) -> Ansible:
        """The run's Ansible: its playbooks share SSH connections (removed when the run ends)."""
        if self._ansible is None:
            self._ansible = self.cleanup.enter_context(Ansible(
                self.settings, self.spec.playbook_file, on_event=self.on_event, redactor=self.redactor,
                deployment=self.deployment, cancel=self.p.cancel, private_dir=self.private,
            ))  # fmt: skip
        return self._ansible

    # -- plan ---------------------------------------------------------------------------------------

    def plan(self, *, check_configuration: bool) -> PlanResult:
        self.recover(full=False)
        record = self.p.records.get(self.deployment)
        exists = record is not None and record.state != "destroyed"
        self.addresses(dry_run=True)  # the addresses it would claim, unclaimed
        resources: list[ResourceChange] = []
        with self.scratch() as scratch:
            for module in self.spec.modules:
                with self.step(f"terraform.plan.{module}"):
                    workdir, secret = self.prepare(module)
                    resources += self.terraform.plan(workdir, scratch / f"{module}.tfplan", module=module,
                                                     secret_inputs=secret).resources  # fmt: skip
                    self.read_outputs(module, workdir)
        configuration: list[ConfigChange] = []
        if check_configuration and exists and record is not None and record.hosts and self.spec.ansible:
            configuration = self.check_configuration(Inventory(hosts=record.hosts))
        return PlanResult(
            deployment=self.deployment, blueprint=self.spec.name, version=self.spec.version,
            params=self.params.masked(), exists=exists, previous_version=record.version if record else None,
            resources=tuple(resources), configuration=tuple(configuration),
            fingerprint=_fingerprint(self.params.masked(), resources),
        )  # fmt: skip

    def check_configuration(self, inventory: Inventory) -> list[ConfigChange]:
        assert self.spec.ansible is not None
        self.run.inventory = inventory
        ansible = self.ansible()
        key = self.run.value(self.spec.ansible.ssh_private_key)
        with self.step("ssh"):
            known = self.known_hosts(inventory, recreated=())
        changes: list[ConfigChange] = []
        for play in self.spec.playbooks:
            if not inventory.in_group(play.hosts):
                continue
            with self.step(f"ansible.check.{play.playbook}"):
                result = ansible.run(play.playbook, inventory=inventory, hosts=play.hosts, user=self.spec.ansible.user,
                                     ssh_key=key, variables=self.playbook_vars(play), check=True,
                                     known_hosts=known)  # fmt: skip
            changes += [ConfigChange(playbook=play.playbook, host=h, task=t) for h, t in result.changed_tasks]
        return changes

    # -- provision ----------------------------------------------------------------------------------

    def provision(
        self,
        *,
        plan: PlanResult | None,
        allow_destroy: bool,
        on_failure: Literal["keep", "destroy"],
        retry: Literal["failed", "all"],
    ) -> ProvisionResult:
        self.recover(full=True)
        records = self.p.records
        now = datetime.now(UTC)
        existing = records.get(self.deployment)
        brand_new = existing is None or existing.state == "destroyed"
        self.previous_run = existing.last_run if existing else None
        record = existing or DeploymentRecord(
            deployment=self.deployment, blueprint=self.spec.name, version=self.spec.version, state="provisioning",
            params=self.params.masked(), created_at=now, updated_at=now,
        )  # fmt: skip
        journal = self.journal = Journal.start(records, record, action="provision", blueprint_version=self.spec.version,
                                               state="provisioning" if brand_new else record.state)  # fmt: skip
        changes: dict[str, ChangeCounts] = {}
        applied: list[str] = []
        try:
            result = self._provision(plan, allow_destroy, changes, applied, retry)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt | Cancelled)
            state = "interrupted" if interrupted else "failed"
            rollback: UmcInfraError | None = None
            if on_failure == "destroy" and brand_new and not interrupted and applied:
                try:
                    self._destroy_modules(applied)
                    _ipam.release(self.p.store, deployment=self.deployment)
                    state = "destroyed"
                except UmcInfraError as failed:
                    rollback = failed
            journal.failed(
                exc, redactor=self.redactor, timings=self.timings, failed_step=self.failed_step, changes=changes,
                failed_hosts=tuple(dict.fromkeys(h for h, _, _ in getattr(exc, "failures", ()))),
                record_changes={"state": state if brand_new or state == "interrupted" else record.state},
            )  # fmt: skip
            if rollback is not None:
                cause, undo = error_text(exc, self.redactor), error_text(rollback, self.redactor)
                raise RollbackFailed(
                    f"deployment {self.deployment!r} failed ({cause}), and removing what it made failed too "
                    f"({undo}); what exists is kept and recorded as failed: run destroy once the cause is fixed",
                    cause=cause,
                    rollback=undo,
                    step=rollback.step,
                ) from exc
            raise
        with self.step("record"):
            journal.finish(
                "succeeded", timings=result.timings, changes=changes,
                record_changes={"state": "active", "version": self.spec.version, "blueprint": self.spec.name,
                                "params": result.params, "hosts": result.hosts, "outputs": result.outputs,
                                "modules": tuple(self.spec.modules)},
            )  # fmt: skip
        return result

    def _provision(
        self,
        reviewed: PlanResult | None,
        allow_destroy: bool,
        changes: dict[str, ChangeCounts],
        applied: list[str],
        retry: str,
    ) -> ProvisionResult:
        self.addresses()
        self.hooks("before_terraform", "provision")
        with self.scratch() as scratch:
            # Plan every module first: the destroy policy and a reviewed plan are checked before anything applies.
            planned: dict[str, tuple[Path, dict[str, Any], TerraformPlan]] = {}
            for module in self.spec.modules:
                try:
                    inputs = self.run.inputs(self.spec, module)
                except KeyError:
                    continue  # reads outputs of a module not applied yet: planned after it
                with self.step(f"terraform.plan.{module}"):
                    assert self.journal is not None
                    self.journal.working(module)  # its locks count as this run's, should it die
                    workdir, secret = self.prepare(module)
                    planfile = scratch / f"{module}.tfplan"
                    planned[module] = (planfile, inputs, self.terraform.plan(workdir, planfile, module=module,
                                                                             secret_inputs=secret))  # fmt: skip
            with self.step("policy"):
                self.check_policy([c for _, _, found in planned.values() for c in found.resources], reviewed,
                                  allow_destroy)  # fmt: skip
            for module in self.spec.modules:
                with self.step(f"terraform.apply.{module}"):
                    inputs = self.run.inputs(self.spec, module)
                    workdir = self.workdir(module)
                    if module not in planned or planned[module][1] != inputs:
                        workdir, secret = self.prepare(module)
                        found = self.terraform.plan(workdir, scratch / f"{module}.tfplan", module=module,
                                                    secret_inputs=secret)  # fmt: skip
                        self.check_policy(list(found.resources), None, allow_destroy)
                        planned[module] = (scratch / f"{module}.tfplan", inputs, found)
                    planfile, _, found = planned[module]
                    applied.append(module)
                    changes[module] = ChangeCounts()
                    if not found.resources:
                        self.read_outputs(module, workdir)
                    # Nothing to change, but an interrupted apply can leave outputs unwritten: apply then too.
                    declared = _blueprint.module_interface(self.module_dir(module)).outputs
                    if found.resources or not declared <= set(self.run.outputs.get(module, {})):
                        assert self.journal is not None
                        self.journal.applying(module, found.new_vms)  # for the recovery, should this run die
                        changes[module] = self.terraform.apply_plan(workdir, planfile, module=module)
                        self.journal.landed(module)
                        self.read_outputs(module, workdir)
        self.release_removed_addresses()

        with self.step("inventory"):
            self.run.inventory = _inventory.build(self.spec, self.run.outputs)
        self.hooks("after_terraform", "provision")
        played: dict[str, PlaybookResult] = {}
        if self.spec.playbooks and self.spec.ansible is not None:
            self.hooks("before_ansible", "provision")
            with self.step("ssh"):
                self.p._wait_for_ssh(self.run.inventory)
                # VMs this run created or replaced are pinned anew; every other must show its pinned key.
                recreated = {vm.rsplit("/", 1)[-1] for _, _, found in planned.values() for vm in found.new_vms}
                known = self.known_hosts(self.run.inventory, recreated=recreated)
            ansible = self.ansible()
            key = self.run.value(self.spec.ansible.ssh_private_key)
            resume = self.resume_point(changes, retry)
            for play in self.spec.playbooks:
                only: tuple[str, ...] | None = None
                if resume is not None:
                    if play.playbook != resume[0]:
                        continue  # it succeeded everywhere in the failed run, and nothing changed since
                    only, resume = resume[1], None
                with self.step(f"ansible.{play.playbook}"):
                    played[play.playbook] = ansible.run(
                        play.playbook, inventory=self.run.inventory, hosts=play.hosts, user=self.spec.ansible.user,
                        ssh_key=key, variables=self.playbook_vars(play), only=only, known_hosts=known,
                    )  # fmt: skip
            self.hooks("after_ansible", "provision")
        self.hooks("after_provision", "provision")
        outputs = {
            name: MASK if out.sensitive else _mask(self.run.value(out.value)) for name, out in self.spec.outputs.items()
        }
        return ProvisionResult(
            deployment=self.deployment, blueprint=self.spec.name, version=self.spec.version,
            params=self.params.masked(), hosts=self.run.inventory.hosts, outputs=outputs, terraform=changes,
            ansible=played, timings=self.timings, started_at=self.started_at, finished_at=datetime.now(UTC),
        )  # fmt: skip

    def resume_point(self, changes: dict[str, ChangeCounts], retry: str) -> tuple[str, tuple[str, ...]] | None:
        """Where a retry of failed hosts starts: the failed playbook and its failed hosts, or None.

        Only when the previous run failed in a playbook and Terraform changed nothing since.
        """
        previous = self.previous_run
        if (
            retry != "failed" or previous is None or previous.outcome != "failed" or not previous.failed_hosts
            or not (previous.failed_step or "").startswith("ansible.")
            or any(c != ChangeCounts() for c in changes.values())
        ):  # fmt: skip
            return None
        playbook = (previous.failed_step or "").removeprefix("ansible.")
        if playbook not in [p.playbook for p in self.spec.playbooks]:
            return None
        return playbook, previous.failed_hosts

    def check_policy(self, found: list[ResourceChange], reviewed: PlanResult | None, allow_destroy: bool) -> None:
        if reviewed is not None:
            now = _fingerprint(self.params.masked(), found)
            if reviewed.deployment != self.deployment or now != reviewed.fingerprint:
                before = {(r.module, r.address, r.action) for r in reviewed.resources}
                after = {(r.module, r.address, r.action) for r in found}
                differs = sorted(before ^ after)
                raise PlanChanged(
                    f"deployment {self.deployment!r} changed since the plan was reviewed; nothing was applied. "
                    + ("Differences: " + ", ".join(f"{m}: {a} {c}" for m, a, c in differs) if differs
                       else "The same resources, with other attribute changes or params.")
                    + " Plan and review again.",
                    step="plan",
                )  # fmt: skip
        doomed = [f"{r.module}: {r.address} ({r.action})" for r in found if r.action in ("delete", "replace")]
        if doomed and not allow_destroy:
            raise DestroyNotAllowed(
                f"this change would delete or replace {len(doomed)} resource(s) in deployment {self.deployment!r}: "
                + ", ".join(doomed)
                + "; nothing was applied. Pass allow_destroy=True if that is intended.",
                resources=doomed,
                step="plan",
            )

    # -- destroy ------------------------------------------------------------------------------------

    def destroy(self) -> DestroyResult:
        self.recover(full=True)
        record = self.p.records.get(self.deployment)
        assert record is not None
        journal = self.journal = Journal.start(self.p.records, record, action="destroy",
                                               blueprint_version=record.version)  # fmt: skip
        try:
            self.hooks("before_destroy", "destroy")
            counts = self._destroy_modules(list(record.modules or self.spec.modules))
            with self.step("addresses"):
                released = _ipam.release(self.p.store, deployment=self.deployment)
                _hostkeys.forget(self.p.store, self.deployment)
            self.hooks("after_destroy", "destroy")
        except BaseException as exc:
            journal.failed(exc, redactor=self.redactor, timings=self.timings, failed_step=self.failed_step)
            raise
        journal.finish("succeeded", timings=self.timings, changes=counts,
                       record_changes={"state": "destroyed", "hosts": (), "outputs": {}})  # fmt: skip
        shutil.rmtree(self.settings.state_dir / "work" / self.deployment, ignore_errors=True)
        return DestroyResult(deployment=self.deployment, already_destroyed=False, terraform=counts,
                             released_addresses=tuple(released))  # fmt: skip

    def _destroy_modules(self, modules: list[str]) -> dict[str, ChangeCounts]:
        """Destroy modules in reverse order, each with the inputs it was last applied with."""
        counts: dict[str, ChangeCounts] = {}
        self.check_space()
        for module in reversed(modules):
            if module not in self.spec.modules:
                continue
            with self.step(f"terraform.destroy.{module}"):
                self.run.addresses[module] = _ipam.held(self.p.store, deployment=self.deployment, module=module)
                self._read_outputs_needed_by(module, {module})
                plain, secret = _split(self.run.inputs(self.spec, module))
                if self.journal is not None:
                    self.journal.working(module)
                workdir = self.workdir(module)
                self.terraform.prepare(self.module_dir(module), workdir,
                                       module=module, inputs=plain)  # fmt: skip
                self.terraform.init(workdir, module=module)
                counts[module] = self.terraform.apply(workdir, module=module, secret_inputs=secret, destroy=True)
        return counts

    def _read_outputs_needed_by(self, module: str, seen: set[str]) -> None:
        """Read the outputs of the earlier modules ``module``'s inputs use (destroy runs in reverse: they exist)."""
        while True:
            try:
                self.run.inputs(self.spec, module)
                return
            except KeyError as missing:
                needed = str(missing.args[0])
                if needed not in self.spec.modules or needed in seen:
                    raise UmcInfraError(
                        f"cannot work out the inputs of module {module!r} to destroy it (needs {missing})",
                        step="destroy",
                    ) from None
                seen.add(needed)
                self.run.addresses[needed] = _ipam.held(self.p.store, deployment=self.deployment, module=needed)
                self._read_outputs_needed_by(needed, seen)
                workdir, _ = self.prepare(needed)
                self.read_outputs(needed, workdir)

    # -- drift --------------------------------------------------------------------------------------

    def drift(self, record: DeploymentRecord) -> DriftReport:
        self.recover(full=False)
        compute: list[ResourceChange] = []
        with self.scratch() as scratch:
            for module in self.spec.modules:
                self.run.addresses[module] = _ipam.held(self.p.store, deployment=self.deployment, module=module)
                with self.step(f"terraform.drift.{module}"):
                    workdir, secret = self.prepare(module)
                    compute += self.terraform.plan(workdir, scratch / f"{module}.tfplan", module=module,
                                                   secret_inputs=secret, refresh_only=True).resources  # fmt: skip
                    self.read_outputs(module, workdir)
        configuration: list[ConfigChange] = []
        if record.hosts and self.spec.ansible is not None:
            configuration = self.check_configuration(Inventory(hosts=record.hosts))
        return DriftReport(deployment=self.deployment, compute=tuple(compute), configuration=tuple(configuration),
                           checked_at=datetime.now(UTC))  # fmt: skip


def _recorded_params(record: DeploymentRecord) -> dict[str, Any]:
    """The params a deployment was made with, less the secret ones (never recorded)."""
    return {k: v for k, v in record.params.items() if v != MASK}


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value


def _provisioner(settings: Settings | None, on_event: EventCallback | None) -> Provisioner:
    return Provisioner(settings=settings, on_event=on_event)


def provision(
    blueprint: str,
    params: Mapping[str, Any],
    *,
    deployment: str,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
    plan: PlanResult | None = None,
    allow_destroy: bool = False,
    on_failure: Literal["keep", "destroy"] = "keep",
    lock_timeout_s: float | None = None,
    retry: Literal["failed", "all"] = "failed",
) -> ProvisionResult:
    """Provision ``deployment`` from a named blueprint: sugar over :meth:`Provisioner.provision`.

    Example:
        >>> result = provision("web-server", {"instances": 2}, deployment="team-x-web")  # doctest: +SKIP
        >>> [h.ip for h in result.hosts]                                               # doctest: +SKIP
    """
    return _provisioner(settings, on_event).provision(
        blueprint, params, deployment=deployment, plan=plan, allow_destroy=allow_destroy, on_failure=on_failure,
        lock_timeout_s=lock_timeout_s, retry=retry,
    )  # fmt: skip


def plan(
    blueprint: str,
    params: Mapping[str, Any],
    *,
    deployment: str,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
    lock_timeout_s: float | None = None,
) -> PlanResult:
    """What ``provision`` would change: sugar over :meth:`Provisioner.plan`."""
    return _provisioner(settings, on_event).plan(
        blueprint, params, deployment=deployment, lock_timeout_s=lock_timeout_s
    )


def destroy(
    deployment: str, *, settings: Settings | None = None, on_event: EventCallback | None = None
) -> DestroyResult:
    """Remove a deployment's VMs and addresses; the record stays, marked destroyed."""
    return _provisioner(settings, on_event).destroy(deployment)


def drift(
    deployment: str,
    *,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
    lock_timeout_s: float | None = None,
) -> DriftReport:
    """Compute and configuration drift of a deployment."""
    return _provisioner(settings, on_event).drift(deployment, lock_timeout_s=lock_timeout_s)


def deployments(*, settings: Settings | None = None) -> list[DeploymentRecord]:
    """Every deployment's record in the state backend."""
    return _provisioner(settings, None).deployments()


def status(deployment: str, *, settings: Settings | None = None) -> DeploymentRecord:
    """A deployment's record."""
    return _provisioner(settings, None).status(deployment)
