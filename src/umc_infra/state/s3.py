"""The S3 state backend: documents as objects under ``umc/`` in the state bucket.

Conditional writes are S3's: ``create`` is a PUT with ``If-None-Match: *``, ``replace`` and ``delete_if``
send the ETag read last in ``If-Match`` (see :mod:`umc_infra.state.store`). An S3-compatible service
that ignores these conditions would let two runs hold one deployment or one address:
:func:`open_s3_store` probes them once per process and endpoint (:func:`conditional_write_problems`)
and refuses such a backend.

:func:`aws_client` makes the boto3 clients of the state backend: S3 here, DynamoDB for Terraform's lock
table (:mod:`umc_infra.terraform.statelock`).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from umc_infra.errors import StateBackendError, UmcInfraError
from umc_infra.settings import Settings
from umc_infra.state.store import StateStore, Versioned, check_key

PREFIX = "umc"


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


# A condition that did not hold (412), or a concurrent conditional write of the same key that won (409).
_REFUSED = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
# ``If-Match`` on a key that is gone.
_GONE = frozenset({"NoSuchKey", "404"})


def _refused(exc: Exception, *, gone_too: bool) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code")
    return code in _REFUSED or (gone_too and code in _GONE)


class S3Store:
    """Objects under ``umc/`` in the state bucket, encrypted at rest (SSE-KMS with ``kms_key_id``, else SSE-S3).

    The version of an object is its ETag.
    """

    def __init__(self, client: Any, bucket: str, *, kms_key_id: str | None = None) -> None:
        self._s3 = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r})"

    def _key(self, key: str) -> str:
        return f"{PREFIX}/{check_key(key)}"

    def get(self, key: str) -> bytes | None:
        """The document at ``key``, or None."""
        found = self.get_versioned(key)
        return found.data if found is not None else None

    def get_versioned(self, key: str) -> Versioned | None:
        """The document at ``key`` with its version, or None."""
        with _s3_errors(self.bucket, key):
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            except self._s3.exceptions.NoSuchKey:
                return None
            return Versioned(response["Body"].read(), str(response["ETag"]))

    def put(self, key: str, data: bytes) -> None:
        """Write (replace) the document at ``key``."""
        self._put(key, data)

    def create(self, key: str, data: bytes) -> str | None:
        """Write only if absent: the new version, or None if the key exists."""
        return self._put(key, data, if_none_match="*")

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        """Compare-and-swap: the new version, or None if ``version`` is not current (or the key is gone)."""
        return self._put(key, data, if_match=version)

    def _put(
        self, key: str, data: bytes, *, if_none_match: str | None = None, if_match: str | None = None
    ) -> str | None:
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if self.kms_key_id:
            request |= {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        else:
            request["ServerSideEncryption"] = "AES256"
        if if_none_match is not None:
            request["IfNoneMatch"] = if_none_match
        if if_match is not None:
            request["IfMatch"] = if_match
        with _s3_errors(self.bucket, key):
            try:
                response = self._s3.put_object(**request)
            except Exception as exc:
                if _refused(exc, gone_too=if_match is not None):
                    return None
                raise
            return str(response["ETag"])

    def delete(self, key: str) -> None:
        """Remove the document at ``key`` (absent is fine)."""
        with _s3_errors(self.bucket, key):
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_if(self, key: str, *, version: str) -> bool:
        """Compare-and-delete: whether the document at ``version`` was removed."""
        with _s3_errors(self.bucket, key):
            try:
                self._s3.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=version)
            except Exception as exc:
                if _refused(exc, gone_too=True):
                    return False
                raise
            return True

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        keys: list[str] = []
        with _s3_errors(self.bucket, prefix):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/{check_key(prefix.rstrip('/'))}/"):
                keys += [obj["Key"].removeprefix(f"{PREFIX}/") for obj in page.get("Contents", [])]
        return sorted(keys)


def conditional_write_problems(store: StateStore) -> list[str]:
    """Which conditional writes ``store`` does not honour (empty: all of them hold).

    Probes under a new key ``probe/<uuid>`` and removes it again: a second ``create`` must be refused,
    ``replace`` and ``delete_if`` with a wrong version refused, ``replace`` and ``delete_if`` with the
    current version accepted.

    Raises:
        StateBackendError: The store cannot be reached or refuses the probe's writes outright.
    """
    key = f"probe/{uuid.uuid4().hex}"
    wrong = f'"{"0" * 32}"'  # shaped like an ETag, and no SHA-256 either
    token = uuid.uuid4().hex
    problems: list[str] = []

    def current() -> str:
        found = store.get_versioned(key)
        if found is None:
            raise StateBackendError(f"the probe document {key} vanished while probing {store!r}", step="store")
        return found.version

    try:
        if store.create(key, f"probe 1 {token}".encode()) is None:
            return [f"a create (If-None-Match: *) of the new key {key} was refused"]
        if store.create(key, f"probe 2 {token}".encode()) is not None:
            problems.append("If-None-Match: * on PUT was ignored (a second create of the same key was accepted)")
        if store.replace(key, f"probe 3 {token}".encode(), version=wrong) is not None:
            problems.append("If-Match on PUT was ignored (a replace with a wrong version was accepted)")
        if store.replace(key, f"probe 4 {token}".encode(), version=current()) is None:
            problems.append("a replace with the current version (If-Match on PUT) was refused")
        if store.delete_if(key, version=wrong) or store.get(key) is None:
            problems.append("If-Match on DELETE was ignored (a delete with a wrong version removed the key)")
        elif not store.delete_if(key, version=current()):
            problems.append("a delete with the current version (If-Match on DELETE) was refused")
    finally:
        with contextlib.suppress(UmcInfraError):
            store.delete(key)
    return problems


def aws_client(settings: Settings, service: str) -> Any:
    """A boto3 client of the state backend (``s3``, or ``dynamodb`` for Terraform's lock table).

    Credentials are the settings' S3 key, else the usual AWS ways; requests have the state timeout.
    """
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
    return session.client(service, endpoint_url=settings.s3_endpoint, config=config)


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the state backend."""
    return aws_client(settings, "s3")


_probed: set[tuple[str | None, str]] = set()
_probing = threading.Lock()


def open_s3_store(settings: Settings, bucket: str) -> S3Store:
    """The S3 store of ``bucket``; its conditional writes are checked once per process and endpoint.

    Raises:
        StateBackendError: The S3 endpoint cannot be reached, or ignores conditional writes.
    """
    store = S3Store(s3_client(settings), bucket, kms_key_id=settings.state_kms_key_id)
    where = (settings.s3_endpoint, bucket)
    with _probing:
        if where not in _probed:
            problems = conditional_write_problems(store)
            if problems:
                endpoint = settings.s3_endpoint or f"the AWS endpoint of region {settings.s3_region}"
                raise StateBackendError(
                    f"the S3 endpoint {endpoint} (bucket {bucket!r}) does not honour conditional "
                    f"writes: {'; '.join(problems)}. Deployment leases and address claims depend on them (without "
                    "them two runs could change one deployment, or two deployments take one address); use an S3 "
                    "service that honours If-None-Match and If-Match on PUT and DELETE (AWS S3 does)",
                    step="store",
                )
            _probed.add(where)
    return store
