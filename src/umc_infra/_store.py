"""The state backend for what umc_infra shares between machines: records and IP allocations.

``local`` keeps files under the state directory (one machine); ``s3`` keeps objects in the state
bucket beside Terraform's state (every machine that shares the bucket sees the same). ``create`` is
atomic on both (``O_EXCL``; S3 ``If-None-Match: *``), which is what makes allocations safe.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from umc_infra._errors import StateBackendError, UmcInfraError
from umc_infra._settings import Settings

_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
PREFIX = "umc"


def _check(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key:
        raise UmcInfraError(f"invalid state key {key!r}", step="store")
    return key


class StateStore(Protocol):
    """Small JSON documents by key."""

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def create(self, key: str, data: bytes) -> bool:
        """Write only if absent; False if the key exists."""
        ...

    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...


class LocalStore:
    """Files under ``<root>/``; writes are atomic (write, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check(key)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = self._aside(path, data)
            try:
                os.replace(partial, path)
            except OSError:
                os.unlink(partial)
                raise

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write aside, then hard-link into place: the name appears with its content or not at all,
            # so a concurrent reader never sees an empty claim.
            partial = self._aside(path, data)
            try:
                os.link(partial, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(partial)
            return True

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._path(key).unlink(missing_ok=True)

    @staticmethod
    def _aside(path: Path, data: bytes) -> str:
        """``data`` in a new file beside ``path``; removed again if it cannot be written whole (disk full)."""
        fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError:
            os.unlink(partial)
            raise
        return partial

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StateBackendError(
                f"state directory {self.root} cannot store {key!r}: {exc.strerror or exc}; free space or fix "
                "its permissions, then run again (nothing was half-written)",
                step="store",
            ) from None

    def list(self, prefix: str) -> list[str]:
        base = self.root / _check(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )


@contextlib.contextmanager
def _s3_errors(bucket: str, key: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise StateBackendError(f"S3 bucket {bucket!r} refused {key!r}: {code}", step="store") from None
    except BotoCoreError as exc:
        raise StateBackendError(
            f"S3 state backend unreachable for bucket {bucket!r} ({type(exc).__name__}); check AWS_ENDPOINT_URL "
            "and credentials",
            step="store",
        ) from None


class S3Store:
    """Objects under ``umc/`` in the state bucket."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r})"

    def _key(self, key: str) -> str:
        return f"{PREFIX}/{_check(key)}"

    def get(self, key: str) -> bytes | None:
        with _s3_errors(self.bucket, key):
            try:
                body: bytes = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except self._s3.exceptions.NoSuchKey:
                return None
            return body

    def put(self, key: str, data: bytes) -> None:
        with _s3_errors(self.bucket, key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ServerSideEncryption="AES256")

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        with _s3_errors(self.bucket, key):
            try:
                self._s3.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*", ServerSideEncryption="AES256"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "ConditionalRequestConflict"}:
                    return False
                raise
            return True

    def delete(self, key: str) -> None:
        with _s3_errors(self.bucket, key):
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with _s3_errors(self.bucket, prefix):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/{_check(prefix.rstrip('/'))}/"):
                keys += [obj["Key"].removeprefix(f"{PREFIX}/") for obj in page.get("Contents", [])]
        return sorted(keys)


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the state backend (credentials from the usual AWS variables)."""
    import boto3
    from botocore.config import Config

    secret = settings.s3_secret_access_key
    session = boto3.session.Session(
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
    )
    timeout = settings.state_timeout_s
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": 3})
    return session.client("s3", endpoint_url=settings.s3_endpoint, config=config)


def open_store(settings: Settings) -> StateStore:
    """The store the settings name.

    Raises:
        UmcInfraError: The S3 backend is chosen but no bucket is set.

    """
    if settings.backend == "s3":
        if not settings.state_bucket:
            raise UmcInfraError("UMC_BACKEND=s3 needs UMC_STATE_BUCKET", step="store")
        return S3Store(s3_client(settings), settings.state_bucket)
    return LocalStore(settings.state_dir / "state")
