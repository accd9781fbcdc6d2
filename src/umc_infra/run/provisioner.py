"""The facade: :class:`Provisioner` and the module-level functions, sugar over it.

It opens a run (:class:`~umc_infra.run.session.Session`): the blueprint and params checked, the deployment's
lease taken, a private directory made, a run that died before found; then hands the session to the
operation (:mod:`.plan`, :mod:`.apply`, :mod:`.destroy`, :mod:`.drift`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from umc_infra import private as _private
from umc_infra import vcenter
from umc_infra.ansible import hostkeys
from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.model import Blueprint, ChoiceKind
from umc_infra.errors import DeploymentNotFound, ParamProblem, ParamsError
from umc_infra.events import EventCallback, ignore
from umc_infra.params import check_deployment, check_request, validate
from umc_infra.process import sigterm_as_interrupt
from umc_infra.run import apply as _apply
from umc_infra.run import destroy as _destroy
from umc_infra.run import drift as _drift
from umc_infra.run import plan as _plan
from umc_infra.run import policy
from umc_infra.run.options import RunOptions
from umc_infra.run.recovery import dead_run
from umc_infra.run.results import DestroyResult, DriftReport, PlanResult, ProvisionResult
from umc_infra.run.session import Session
from umc_infra.run.tools import RealTools, Tools
from umc_infra.secrets.auth import credentials
from umc_infra.secrets.redact import Redactor
from umc_infra.secrets.source import SecretSource
from umc_infra.secrets.vault import VaultSource
from umc_infra.settings import Settings, load_settings
from umc_infra.state import lease as _lease
from umc_infra.state.lease import LockInfo
from umc_infra.state.records import DeploymentRecord, Records
from umc_infra.state.store import StateStore, open_store

Operation = Literal["plan", "provision", "destroy", "drift"]
_SECRET_PLACEHOLDER = "recorded-secret-placeholder"


class Provisioner:
    """Plans, provisions, destroys and checks deployments from blueprints.

    Args:
        settings: Site settings; default from the environment (``UMC_*``, ``VAULT_*``).
        secret_source: Where secrets come from; default Vault through hvac.
        store: The state backend for records, leases and address claims; default from the settings.
        tools: Terraform, Ansible and SSH; default the real ones (tests pass fakes).
        on_event: Called with each typed progress event.
        cancel: Set it (from any thread) to stop the run at the next step, or the running tool gracefully.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        secret_source: SecretSource | None = None,
        store: StateStore | None = None,
        tools: Tools | None = None,
        on_event: EventCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self._secret_source = secret_source
        self._store = store
        self._tools = tools or RealTools()
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

    def choices(self, blueprint: str) -> dict[ChoiceKind, tuple[str, ...]]:
        """The site's names for each kind of ``choices`` the blueprint's params declare (:func:`vcenter.choices`).

        For :func:`~umc_infra.params.validate` and :func:`~umc_infra.params.form_schema` (``choices=``); read from
        vCenter and kept ``UMC_VCENTER_CHOICES_TTL`` seconds.

        Raises:
            SettingsError: ``UMC_VSPHERE_CREDENTIALS`` or ``UMC_VSPHERE_SERVER`` is not set.
            SecretError, VCenterError: The credentials cannot be read, or vCenter refuses.
        """
        kinds = [spec.choices for spec in self.blueprint(blueprint).params.values() if spec.choices]
        return vcenter.choices(self.settings, self._secret_source or VaultSource(self.settings), kinds)

    # -- records, leases, host keys -----------------------------------------------------------------

    def deployments(self) -> list[DeploymentRecord]:
        """Every deployment's record, destroyed ones included."""
        return self.records.all()

    def status(self, deployment: str) -> DeploymentRecord:
        """A deployment's record.

        Raises:
            DeploymentNotFound: No record in this backend.
        """
        _check_name(deployment, step="records")
        record = self.records.get(deployment)
        if record is None:
            raise DeploymentNotFound(f"no deployment {deployment!r} in the {self.settings.backend} backend",
                                     step="records")  # fmt: skip
        return record

    def break_lock(self, deployment: str, *, force: bool = False) -> LockInfo | None:
        """Remove the lease of a run that is gone (or any lease, with ``force``); returns who held it.

        Raises:
            DeploymentLocked: Its holder looks alive and ``force`` is not set.
            StateBackendError: The lease document is corrupt and ``force`` is not set.
        """
        _check_name(deployment, step="lock")
        return _lease.break_lock(self.store, deployment, force=force)

    def forget_host_keys(self, deployment: str, host: str | None = None) -> list[str]:
        """Forget the pinned SSH host keys of one VM (or of every VM) of a deployment; the hosts forgotten.

        Only for a VM rebuilt on purpose outside umc_infra: the next run pins whatever answers at its address.
        """
        _check_name(deployment, step="hostkeys")
        return hostkeys.forget(self.store, deployment, host)

    # -- operations ---------------------------------------------------------------------------------

    def plan(
        self,
        blueprint: str,
        params: Mapping[str, Any] | None = None,
        *,
        deployment: str | None = None,
        options: RunOptions | None = None,
    ) -> PlanResult:
        """What ``provision`` would change: per resource, per param and (for existing hosts) per task.

        Changes nothing. It holds the deployment's lease while it plans, as every operation does: it waits
        for a running provision (up to ``options.lock_timeout_s``) rather than read half-written files.
        """
        options = options or RunOptions()
        spec = self.blueprint(blueprint)
        with self._session(spec, _merged(spec, params, options), deployment or blueprint, "plan", options) as s:
            return _plan.plan(s.session, s.record, check_configuration=True)

    def provision(
        self,
        blueprint: str,
        params: Mapping[str, Any] | None = None,
        *,
        deployment: str | None = None,
        options: RunOptions | None = None,
    ) -> ProvisionResult:
        """Create, update or converge a deployment; running it again converges the same VMs.

        Args:
            blueprint: The blueprint's name.
            params: Its parameters. On an existing deployment, those left out keep the value they have
                (unless ``options.reset``); secret params must always be given.
            deployment: The deployment's name; default: the blueprint's name.
            options: Reviewed plan, destroy policy, failure handling, retry, reset, lock timeout.

        Raises:
            BlueprintNotFound, BlueprintError, ParamsError: before anything is created.
            DeploymentLocked: another run kept the deployment for the whole timeout.
            DestroyNotAllowed, PlanChanged: before the module concerned is applied (the error says which
                modules were applied before it).
            SecretError, AddressError, TerraformError, PlaybookError, Cancelled: naming the failed step.
        """
        options = options or RunOptions()
        spec = self.blueprint(blueprint)
        with self._session(spec, _merged(spec, params, options), deployment or blueprint, "provision",
                           options) as s:  # fmt: skip
            return _apply.provision(s.session, options)

    def destroy(self, deployment: str, *, options: RunOptions | None = None) -> DestroyResult:
        """Remove everything a deployment made; the record stays, marked destroyed. Again: a no-op.

        It works on the blueprint as it was deployed (its snapshot in the record), so a blueprint changed
        since (a narrowed param, a removed module input) does not stand in the way.

        Raises:
            DeploymentNotFound: No record of it.
        """
        options = options or RunOptions()
        # Before the early return: a bad request is refused even for a destroyed deployment.
        _refuse(check_request(requested_by=options.requested_by, ticket=options.ticket), step="params")
        record = self.status(deployment)
        if record.state == "destroyed":
            return DestroyResult(deployment=deployment, already_destroyed=True, terraform={}, released_addresses=())
        spec = self._deployed(record)
        with self._session(spec, _recorded(spec), deployment, "destroy", options) as s:
            return _destroy.destroy(s.session, options)

    def drift(self, deployment: str, *, options: RunOptions | None = None) -> DriftReport:
        """Compute drift (Terraform refresh) and configuration drift (Ansible check mode), in one report."""
        options = options or RunOptions()
        record = self.status(deployment)
        if record.state == "destroyed":
            raise DeploymentNotFound(f"deployment {deployment!r} is destroyed", step="drift")
        spec = self._deployed(record)
        with self._session(spec, _recorded(spec), deployment, "drift", options) as s:
            return _drift.drift(s.session, record)

    def _deployed(self, record: DeploymentRecord) -> Blueprint:
        """The blueprint as the deployment was made from it (its snapshot), found in today's sources."""
        if record.blueprint_snapshot is None:  # recorded before snapshots were kept
            return self.blueprint(record.blueprint)
        roots: tuple[Any, ...] = ()
        with contextlib.suppress(Exception):  # the blueprint may be gone: its modules then come from built-in
            roots = self.blueprint(record.blueprint).roots
        if not roots and self.catalog.sources:
            roots = (self.catalog.sources[0].root,)
        return Blueprint.model_validate({**record.blueprint_snapshot, "roots": roots})

    @contextlib.contextmanager
    def _session(
        self,
        spec: Blueprint,
        params: Callable[[DeploymentRecord | None], dict[str, Any]],
        deployment: str,
        operation: Operation,
        options: RunOptions,
    ) -> Iterator[_Opened]:
        """A run: params checked, then the deployment's lease, a private directory, a dead run found."""
        asked = check_request(requested_by=options.requested_by, ticket=options.ticket)
        _refuse(check_deployment(deployment) + asked, step="params", blueprint=spec.name)
        records = self.records
        validate(spec, params(records.get(deployment)), deployment)  # bad input fails before any wait
        settings = self.settings
        redactor = Redactor(credentials(settings))  # every credential of every Vault auth method
        session = Session(
            settings=settings, store=self.store, tools=self._tools,
            secret_source=self._secret_source or VaultSource(settings), on_event=self._on_event, cancel=self.cancel,
            deployment=deployment, redactor=redactor,
        )  # fmt: skip
        session.spec = spec
        timeout = settings.lock_timeout_s if options.lock_timeout_s is None else options.lock_timeout_s
        with session.cleanup:  # the run's SSH connections and other scratch, whatever happens
            # Private directories of runs that died are swept first; tools of a dead run on this deployment
            # get their grace to stop (Terraform writes its state) before this run touches its state.
            _private.sweep(deployment=deployment)
            # SIGTERM (a CI runner cancelling the job) stops the run like Ctrl-C: tools stop, the record says so.
            with sigterm_as_interrupt(), _lease.locked(
                self.store, deployment, operation=operation, timeout_s=timeout, ttl_s=settings.lease_ttl_s,
                on_lost=self.cancel.set,
            ) as lease:  # fmt: skip
                record = records.get(deployment)  # read again, holding the lease
                with session.step("params"):
                    session.params = validate(spec, params(record), deployment)
                session.private = session.cleanup.enter_context(_private.run_directory(deployment))
                session.dead = dead_run(record, lease.previous)
                yield _Opened(session, record)


class _Opened:
    """A session and the deployment's record when it opened."""

    def __init__(self, session: Session, record: DeploymentRecord | None) -> None:
        self.session = session
        self.record = record


def _check_name(deployment: str, *, step: str) -> None:
    _refuse(check_deployment(deployment), step=step)


def _refuse(problems: list[ParamProblem], *, step: str, blueprint: str | None = None) -> None:
    if problems:
        raise ParamsError(problems, blueprint=blueprint, step=step)


def _merged(
    spec: Blueprint, given: Mapping[str, Any] | None, options: RunOptions
) -> Callable[[DeploymentRecord | None], dict[str, Any]]:
    """The params of a plan or provision, given the deployment's record: those given over those it has."""
    unchecked: Any = given  # callers may pass anything: validate() names what is wrong
    if unchecked is not None and not isinstance(unchecked, Mapping):
        return lambda record: unchecked
    return lambda record: policy.params_to_use(spec, dict(given or {}), record, reset=options.reset)


def _recorded(spec: Blueprint) -> Callable[[DeploymentRecord | None], dict[str, Any]]:
    """The params a deployment was made with; secret ones (never recorded) get placeholders."""

    def params(record: DeploymentRecord | None) -> dict[str, Any]:
        recorded = policy.params_to_use(spec, {}, record, reset=False)
        return recorded | {n: _SECRET_PLACEHOLDER for n, p in spec.params.items() if p.secret}

    return params


def _provisioner(settings: Settings | None, on_event: EventCallback | None) -> Provisioner:
    return Provisioner(settings=settings, on_event=on_event)


def provision(
    blueprint: str,
    params: Mapping[str, Any] | None = None,
    *,
    deployment: str | None = None,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
    options: RunOptions | None = None,
) -> ProvisionResult:
    """Provision a deployment from a named blueprint: sugar over :meth:`Provisioner.provision`.

    Example:
        >>> result = provision("web-server", {"instances": 2})  # doctest: +SKIP
        >>> [h.ip for h in result.hosts]                        # doctest: +SKIP
    """
    return _provisioner(settings, on_event).provision(blueprint, params, deployment=deployment, options=options)


def plan(
    blueprint: str,
    params: Mapping[str, Any] | None = None,
    *,
    deployment: str | None = None,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
    options: RunOptions | None = None,
) -> PlanResult:
    """What ``provision`` would change: sugar over :meth:`Provisioner.plan`."""
    return _provisioner(settings, on_event).plan(blueprint, params, deployment=deployment, options=options)


def destroy(
    deployment: str,
    *,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
    options: RunOptions | None = None,
) -> DestroyResult:
    """Remove a deployment's VMs and addresses; the record stays, marked destroyed."""
    return _provisioner(settings, on_event).destroy(deployment, options=options)


def drift(
    deployment: str,
    *,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
    options: RunOptions | None = None,
) -> DriftReport:
    """Compute and configuration drift of a deployment."""
    return _provisioner(settings, on_event).drift(deployment, options=options)


def deployments(*, settings: Settings | None = None) -> list[DeploymentRecord]:
    """Every deployment's record in the state backend."""
    return _provisioner(settings, None).deployments()


def status(deployment: str, *, settings: Settings | None = None) -> DeploymentRecord:
    """A deployment's record."""
    return _provisioner(settings, None).status(deployment)
