"""Terraform's command lines: pure functions, tested table-driven.

python-terraform 0.10.1 is used for what it does well, turning options into argv; its gaps are closed
here: no ``-var`` in argv (non-secret inputs go to a ``*.auto.tfvars.json``, secrets to ``TF_VAR_*`` in
the child's own environment; a map option is refused), no ``-force`` (``apply -destroy -auto-approve``).
:mod:`umc_infra.terraform.runner` runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from python_terraform import IsFlagged
from python_terraform import Terraform as _ArgvBuilder

from umc_infra.errors import UnsafeArgv

LOCK_TIMEOUT = "30s"
"""How long a command waits for the state lock: Terraform of a run that died may still be saving its state."""


def _argv(binary: str, command: str, *args: str, **options: Any) -> list[str]:
    for name, value in options.items():
        if isinstance(value, dict) and name != "backend_config":
            raise UnsafeArgv(f"refusing -{name} with a map: values go to a vars file, never argv", step="terraform")
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
