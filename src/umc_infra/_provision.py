"""The orchestrator: sequences the stages, nothing more.

``blueprint -> params -> secrets -> addresses -> terraform per module -> inventory -> ssh -> playbooks
-> record -> ProvisionResult``. Each stage is its own module with a typed interface.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra import _blueprint, _inventory, _ipam, _params, _secrets
from umc_infra._ansible import Ansible, PlaybookResult
from umc_infra._blueprint import Blueprint, Content, Format, Literal_, Value
from umc_infra._errors import ComponentFailed, UmcInfraError
from umc_infra._events import EventCallback, StepFinished, StepStarted, ignore
from umc_infra._inventory import Host, Inventory
from umc_infra._params import MASK, ResolvedParams
from umc_infra._process import Redactor
from umc_infra._secrets import Secrets, SecretSource, VaultSource
from umc_infra._settings import Settings
from umc_infra._store import StateStore, open_store
from umc_infra._terraform import ChangeCounts, Terraform

# site.<key> -> Settings field
SITE_FIELDS = {
    "vsphere_server": "vsphere_server",
    "allow_unverified_ssl": "vsphere_allow_unverified_ssl",
    "datacenter": "vsphere_datacenter",
    "cluster": "vsphere_cluster",
    "host": "vsphere_host",
    "datastore": "vsphere_datastore",
    "network": "vsphere_network",
    "folder": "vsphere_folder",
    "template": "vsphere_template",
    "domain": "vsphere_domain",
    "ip_gateway": "ip_gateway",
    "ip_netmask": "ip_netmask",
    "dns_servers": "dns_servers",
    "customize_timeout": "customize_timeout",
    "wait_for_guest_net_timeout": "wait_for_guest_net_timeout",
    "time_sync_service": "time_sync_service",
    "client_source_addresses": "client_source_addresses",
}


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


class Provisioner:
    """Turns a blueprint and parameters into configured VMs.

    Args:
        settings: Site settings; default from the environment (``UMC_*``, ``VAULT_*``).
        secret_source: Where secrets come from; default Vault through hvac.
        store: The state backend for records and IP allocations; default from the settings.
        on_event: Called with each typed progress event.

    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        secret_source: SecretSource | None = None,
        store: StateStore | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.content = Content.locate(self.settings.content_dir)
        self._secret_source = secret_source
        self._store = store
        self._on_event = on_event or ignore

    def __repr__(self) -> str:
        return f"Provisioner(content={str(self.content.root)!r}, backend={self.settings.backend!r})"

    def blueprint(self, name: str) -> Blueprint:
        """Load and check a blueprint."""
        return _blueprint.load(name, self.content)

    def provision(self, blueprint: str, params: Mapping[str, Any], *, deployment: str) -> ProvisionResult:
        """Create or converge ``deployment`` from ``blueprint`` with ``params``.

        Raises:
            BlueprintNotFound, BlueprintError, ParamsError: before anything is created.
            SecretError, AddressError, TerraformError, PlaybookError: naming the step that failed.

        """
        started_at = datetime.now(UTC)
        timings: dict[str, float] = {}
        step_of = self._stepper(str(deployment), timings)

        with step_of("blueprint"):
            spec = self.blueprint(blueprint)
        with step_of("params"):
            resolved = _params.validate(spec, dict(params) if isinstance(params, Mapping) else params, deployment)
        credentials = (self.settings.vault_token, self.settings.vault_secret_id, self.settings.vault_jwt)
        redactor = Redactor([*resolved.secret_values(), *(c for c in credentials if c is not None)])
        with step_of("secrets"):
            source = self._secret_source or VaultSource(self.settings)
            secrets = _secrets.resolve(spec, resolved, source)
        redactor.add(*secrets.all())
        run = _Run(self.settings, resolved, secrets)
        store = self._store or open_store(self.settings)

        with step_of("addresses"):
            for name, module in spec.modules.items():
                if module.addresses is not None:
                    count = int(run.value(module.addresses.count))
                    given = run.value(module.addresses.given) if module.addresses.given else []
                    run.addresses[name] = _ipam.allocate(
                        store, pool=self.settings.ip_pool, deployment=resolved.deployment, module=name,
                        count=count, given=[str(a) for a in given],
                    )  # fmt: skip

        terraform = Terraform(self.settings, on_event=self._on_event, redactor=redactor, deployment=resolved.deployment)
        changes: dict[str, ChangeCounts] = {}
        with step_of("terraform.version"):
            terraform.check_version()
        for name, module in spec.modules.items():
            with step_of(f"terraform.{name}"):
                inputs = {key: run.value(value) for key, value in module.inputs.items()}
                workdir = self.settings.state_dir / "work" / resolved.deployment / name
                terraform.prepare(
                    self.content.modules / module.source, workdir, module=name,
                    inputs={k: v for k, v in inputs.items() if not isinstance(v, SecretStr)},
                )  # fmt: skip
                terraform.init(workdir, module=name)
                changes[name] = terraform.apply(
                    workdir,
                    module=name,
                    secret_inputs={k: v for k, v in inputs.items() if isinstance(v, SecretStr)},
                )
                raw = terraform.outputs(workdir, module=name)
                redactor.add(*(str(o["value"]) for o in raw.values() if o.get("sensitive") and o.get("value")))
                run.outputs[name] = {
                    k: SecretStr(str(o["value"])) if o.get("sensitive") else o["value"] for k, o in raw.items()
                }

        with step_of("inventory"):
            run.inventory = _inventory.build(spec, run.outputs)
        played: dict[str, PlaybookResult] = {}
        if spec.playbooks and spec.ansible is not None:
            with step_of("ssh"):
                self._wait_for_ssh(run.inventory)
            ansible = Ansible(
                self.settings,
                self.content.playbooks,
                on_event=self._on_event,
                redactor=redactor,
                deployment=resolved.deployment,
            )
            ssh_key = run.value(spec.ansible.ssh_private_key)
            for play in spec.playbooks:
                with step_of(f"ansible.{play.playbook}"):
                    played[play.playbook] = ansible.run(
                        play.playbook,
                        inventory=run.inventory,
                        hosts=play.hosts,
                        user=spec.ansible.user,
                        ssh_key=ssh_key,
                        variables={var: run.value(value) for var, value in play.vars.items()},
                    )

        outputs = {name: MASK if out.sensitive else _mask(run.value(out.value)) for name, out in spec.outputs.items()}
        result = ProvisionResult(
            deployment=resolved.deployment,
            blueprint=spec.name,
            version=spec.version,
            params=resolved.masked(),
            hosts=run.inventory.hosts,
            outputs=outputs,
            terraform=changes,
            ansible=played,
            timings=timings,
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )
        with step_of("record"):
            store.put(f"deployments/{resolved.deployment}/record.json", result.model_dump_json(indent=2).encode())
        return result

    def _stepper(self, deployment: str, timings: dict[str, float]) -> Any:
        on_event = self._on_event

        @contextlib.contextmanager
        def step(name: str) -> Iterator[None]:
            on_event(StepStarted(deployment=deployment, step=name))
            started = time.monotonic()
            ok = False
            try:
                yield
                ok = True
            finally:
                seconds = time.monotonic() - started
                timings[name] = round(seconds, 3)
                on_event(StepFinished(deployment=deployment, step=name, seconds=seconds, ok=ok))

        return step

    def _wait_for_ssh(self, inventory: Inventory) -> None:
        """Wait until every host answers with an SSH banner."""
        deadline = time.monotonic() + self.settings.ssh_wait_timeout_s
        waiting = {h.name: h.ip for h in inventory.hosts}
        while waiting:
            for name, ip in list(waiting.items()):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((ip, self.settings.ssh_port), 2) as sock,
                ):
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


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value


def provision(
    blueprint: str,
    params: Mapping[str, Any],
    *,
    deployment: str,
    settings: Settings | None = None,
    on_event: EventCallback | None = None,
) -> ProvisionResult:
    """Provision ``deployment`` from a named blueprint: sugar over :class:`Provisioner`.

    Example:
        >>> result = provision("web-server", {"instances": 2}, deployment="team-x-web")  # doctest: +SKIP
        >>> [h.ip for h in result.hosts]                                               # doctest: +SKIP

    """
    return Provisioner(settings=settings, on_event=on_event).provision(blueprint, params, deployment=deployment)
