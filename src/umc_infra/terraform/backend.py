"""Where a module's Terraform state lives: the backend block and its ``-backend-config`` values.

``s3``: the state bucket, one key per deployment and module, Terraform's DynamoDB lock table; ``local``:
files under the state directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from umc_infra.settings import Settings

BACKEND_FILE = "umc_backend.tf.json"
"""The file in a module's working directory that holds the backend block."""


_log = logging.getLogger("umc_infra")


def state_key(deployment: str, module: str) -> str:
    """The S3 key of a module's state (the backend's ``key``)."""
    return f"deployments/{deployment}/{module}.tfstate"


MODERN_S3 = (1, 6, 0)
"""From this Terraform version on the S3 backend takes an ``endpoints`` block, ``use_path_style`` and
``skip_requesting_account_id``; older versions know only ``endpoint``, ``dynamodb_endpoint``, ``force_path_style``."""


def backend(
    settings: Settings, *, deployment: str, module: str, version: tuple[int, int, int] = MODERN_S3
) -> tuple[dict[str, Any], dict[str, str]]:
    """The backend block (for ``umc_backend.tf.json``) and its ``-backend-config`` values.

    With an S3 endpoint of the site's own (an S3-compatible store, the sandbox), every AWS service Terraform
    might call (S3, DynamoDB, and from 1.6 IAM and STS for an account lookup) is pointed at it, the account
    lookup and the instance metadata check are off: a run never tries an address the settings did not name.

    Args:
        settings: The state backend's settings.
        deployment: The deployment.
        module: The module of the deployment.
        version: The Terraform version in use: the S3 backend's settings changed in 1.6.
    """
    if settings.backend == "s3":
        block: dict[str, Any] = {}
        config = {
            "bucket": settings.state_bucket or "",
            "key": state_key(deployment, module),
            "region": settings.s3_region,
            "encrypt": "true",
        }
        if settings.lock_table:
            config["dynamodb_table"] = settings.lock_table
        if settings.state_kms_key_id:
            config["kms_key_id"] = settings.state_kms_key_id
        if settings.s3_endpoint:
            config.update(skip_credentials_validation="true", skip_metadata_api_check="true",
                          skip_region_validation="true")  # fmt: skip
            if version >= MODERN_S3:
                block["endpoints"] = dict.fromkeys(("s3", "dynamodb", "iam", "sts"), settings.s3_endpoint)
                config.update(use_path_style="true", skip_requesting_account_id="true")
            else:
                config.update(endpoint=settings.s3_endpoint, dynamodb_endpoint=settings.s3_endpoint,
                              force_path_style="true")  # fmt: skip
        return {"terraform": {"backend": {"s3": block}}}, config
    path = settings.state_dir / "state" / "terraform" / deployment / f"{module}.tfstate"
    return {"terraform": {"backend": {"local": {}}}}, {"path": str(path)}


def repair_local_state(path: Path, errored: Path | None = None) -> bool:
    """Put a sound state in place of a local state file left empty or cut short; True if it did.

    Terraform rewrites a local state file in place; killed, or out of space, in the middle, it leaves it
    empty or cut. The best replacement is a non-empty ``errored.tfstate`` (the state Terraform could not save,
    written to its working directory), then its ``.backup`` (the state before that process's first write:
    what the apply made after that is not in it, and is found as VMs the state does not know).
    """
    if not path.exists() or sound_state(path):
        return False
    for candidate, what in ((errored, "the state Terraform could not save"), (path.with_name(path.name + ".backup"),
                                                                               "Terraform's backup")):  # fmt: skip
        if candidate is not None and candidate.exists() and sound_state(candidate):
            _log.warning("state file %s was left damaged; put %s in its place", path, what)
            candidate.replace(path)
            path.chmod(0o600)
            return True
    _log.warning("state file %s is damaged and has no usable replacement: removed, as if it never existed", path)
    path.unlink()
    return True


def sound_state(path: Path) -> bool:
    """Whether a state file holds a JSON object (not empty, not cut short)."""
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False
