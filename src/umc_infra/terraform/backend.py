"""Where a module's Terraform state lives: the backend block and its ``-backend-config`` values.

``s3``: the state bucket, one key per deployment and module, Terraform's DynamoDB lock table; ``local``:
files under the state directory.
"""

from __future__ import annotations

from typing import Any

from umc_infra.settings import Settings

BACKEND_FILE = "umc_backend.tf.json"
"""The file in a module's working directory that holds the backend block."""


def state_key(deployment: str, module: str) -> str:
    """The S3 key of a module's state (the backend's ``key``)."""
    return f"deployments/{deployment}/{module}.tfstate"


def backend(settings: Settings, *, deployment: str, module: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The backend block (for ``umc_backend.tf.json``) and its ``-backend-config`` values."""
    if settings.backend == "s3":
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
