"""The state backend for the sandbox: moto's S3 and DynamoDB server, a bucket and a lock table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from umc_infra.errors import MissingDependency
from umc_infra.process import find_tool
from umc_infra.sandbox import _daemons
from umc_infra.sandbox._config import SandboxInfo, SandboxInventory, SandboxPaths

NAME = "s3"


def moto_binary() -> Path:
    """The ``moto_server`` program of ``moto[server]``."""
    found = find_tool("moto_server")
    if found is not None:
        return found
    raise MissingDependency(
        "the sandbox's state backend needs `moto_server`, which is not installed",
        fix="pip install 'umc-infra[sandbox]'",
        step="sandbox.s3",
    )


def start(*, host: str, port: int, paths: SandboxPaths) -> _daemons.Daemon:
    """Start moto's server on loopback and wait for it."""
    daemon = _daemons.start(
        NAME,
        [str(moto_binary()), "-H", host, "-p", str(port)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(paths.state_dir), "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        pids_dir=paths.pids,
        logs_dir=paths.logs,
    )
    _daemons.wait_until(lambda: _daemons.port_open(host, port), daemon=daemon, component=NAME, timeout_s=60)
    return daemon


def clients(endpoint: str, region: str) -> tuple[Any, Any]:
    """boto3 S3 and DynamoDB clients for the sandbox endpoint."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
        region_name=region,
    )
    return (
        session.client("s3", endpoint_url=endpoint),
        session.client("dynamodb", endpoint_url=endpoint),
    )


def seed(endpoint: str, inventory: SandboxInventory) -> None:
    """A versioned, encrypted state bucket and the Terraform lock table (key ``LockID``); idempotent."""
    s3, dynamodb = clients(endpoint, inventory.region)
    buckets = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if inventory.state_bucket not in buckets:
        s3.create_bucket(
            Bucket=inventory.state_bucket,
            CreateBucketConfiguration={"LocationConstraint": inventory.region},
        )
    s3.put_bucket_versioning(Bucket=inventory.state_bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=inventory.state_bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    if inventory.lock_table not in dynamodb.list_tables().get("TableNames", []):
        dynamodb.create_table(
            TableName=inventory.lock_table,
            KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )


def health(info: SandboxInfo) -> str:
    """The bucket answers HEAD and the lock table is ACTIVE."""
    inv = info.inventory
    s3, dynamodb = clients(info.s3_endpoint, inv.region)
    s3.head_bucket(Bucket=inv.state_bucket)
    table = dynamodb.describe_table(TableName=inv.lock_table)["Table"]["TableStatus"]
    return f"bucket {inv.state_bucket} and lock table {inv.lock_table} ({table})"
