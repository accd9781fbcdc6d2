"""The state backend for what umc_infra shares between machines: records, leases and IP allocations.

``local`` keeps files under the state directory (one machine); ``s3`` keeps objects in the state
bucket beside Terraform's state (every machine that shares the bucket sees the same).

Besides plain ``get``/``put``/``delete``, every store has conditional writes, which is what makes
deployment leases and address claims safe when many runs share the backend:

- ``create``: write only if the key is absent (S3 ``If-None-Match: *``; locally a hard link, which fails
  if the name exists);
- ``replace`` and ``delete_if``: compare-and-swap and compare-and-delete against the version read
  with ``get_versioned`` (S3: the object's ETag with ``If-Match``; locally: the SHA-256 of the content,
  checked and changed under an exclusive ``flock`` on ``<root>/.lock``).

A content hash as the version would allow ABA (A, then B, then A again looks unchanged) only if the
same bytes came back; every conditionally written document carries a unique id or a fresh timestamp,
so they do not. The local backend never spans machines, so a ``flock`` on one machine is enough there.

An S3-compatible service that ignores these conditions would let two runs hold one deployment or one
address: :func:`open_store` probes them once per process and endpoint (:func:`conditional_write_problems`)
and refuses such a backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from umc_infra.errors import StateBackendError, UmcInfraError
from umc_infra.settings import Settings

_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
PREFIX = "umc"
M = TypeVar("M", bound=BaseModel)


def _check(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key:
        raise UmcInfraError(f"invalid state key {key!r}", step="store")
    return key


class Versioned(NamedTuple):
    """A document and the version that ``replace`` and ``delete_if`` compare against."""

    data: bytes
    version: str


class StateStore(Protocol):
    """Small JSON documents by key, with conditional writes."""

    def get(self, key: str) -> bytes | None:
        """The document at ``key``, or None."""

    def get_versioned(self, key: str) -> Versioned | None:
        """The document and its current version; None if the key is absent."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write (replace) the document at ``key``."""

    def create(self, key: str, data: bytes) -> str | None:
        """Write only if absent: the new version, or None if the key exists."""
        ...

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        """Compare-and-swap: the new version, or None if the key's version is not ``version`` or it is gone."""
        ...

    def delete(self, key: str) -> None:
        """Remove the document at ``key`` (absent is fine)."""

    def delete_if(self, key: str, *, version: str) -> bool:
        """Compare-and-delete: True if the key had ``version`` and is gone now."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""


def parse_document(model: type[M], data: bytes, *, key: str, fix: str, step: str) -> M:
    """A stored document as its model, or a StateBackendError that names the document and what to do.

    Only locations and pydantic's messages go into the error, never the document's values.

    Raises:
        StateBackendError: The document is not valid JSON or not a valid ``model``.
    """
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise StateBackendError(
            f"{key} in the state backend is corrupt ({where}: {first['msg']}{more}); {fix}", step=step
        ) from None


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore:
    """Files under ``<root>/``: written aside, then renamed or linked into place.

    New files are 0600 and new directories (the root included) 0700, whatever the umask.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check(key)

    def get(self, key: str) -> bytes | None:
        """The document at ``key``, or None."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def get_versioned(self, key: str) -> Versioned | None:
        """The document at ``key`` with its version, or None."""
        data = self.get(key)
        return Versioned(data, _version(data)) if data is not None else None

    def put(self, key: str, data: bytes) -> None:
        """Write (replace) the document at ``key``."""
        path = self._path(key)
        with self._errors(key), self._exclusive():
            self._install(path, data)

    def create(self, key: str, data: bytes) -> str | None:
        """Write only if absent: the new version, or None if the key exists."""
        path = self._path(key)
        with self._errors(key), self._exclusive():
            self._mkdirs(path.parent)
            # Write aside, then hard-link into place: the name appears with its content or not at all,
            # so a concurrent reader never sees an empty claim.
            partial = self._aside(path, data)
            try:
                os.link(partial, path)
            except FileExistsError:
                return None
            finally:
                os.unlink(partial)
            return _version(data)

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        """Compare-and-swap: the new version, or None if ``version`` is not current (or the key is gone)."""
        path = self._path(key)
        with self._errors(key), self._exclusive():
            current = self.get_versioned(key)
            if current is None or current.version != version:
                return None
            self._install(path, data)
            return _version(data)

    def delete(self, key: str) -> None:
        """Remove the document at ``key`` (absent is fine)."""
        with self._errors(key), self._exclusive():
            self._path(key).unlink(missing_ok=True)

    def delete_if(self, key: str, *, version: str) -> bool:
        """Compare-and-delete: whether the document at ``version`` was removed."""
        with self._errors(key), self._exclusive():
            current = self.get_versioned(key)
            if current is None or current.version != version:
                return False
            self._path(key).unlink()
            return True

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        base = self.root / _check(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Every write of this store, one at a time (threads and processes): ``flock`` on ``<root>/.lock``.

        Each call opens the lock file anew, so two threads of one process exclude each other too.
        """
        self._mkdirs(self.root)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def _install(self, path: Path, data: bytes) -> None:
        self._mkdirs(path.parent)
        partial = self._aside(path, data)
        try:
            os.replace(partial, path)
        except OSError:
            os.unlink(partial)
            raise

    @staticmethod
    def _mkdirs(directory: Path) -> None:
        """``directory`` and its missing parents, each 0700 (``Path.mkdir`` gives parents the umask's mode)."""
        missing = []
        while not directory.is_dir() and directory != directory.parent:
            missing.append(directory)
            directory = directory.parent
        for each in reversed(missing):
            each.mkdir(mode=0o700, exist_ok=True)
            os.chmod(each, 0o700)  # mkdir's mode passes through the umask; 0700 is meant whatever it is

    @staticmethod
    def _aside(path: Path, data: bytes) -> str:
        """``data`` in a new 0600 file beside ``path``; removed again if it cannot be written whole (disk full)."""
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
        return f"{PREFIX}/{_check(key)}"

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
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/{_check(prefix.rstrip('/'))}/"):
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


def open_store(settings: Settings) -> StateStore:
    """The store the settings name; an S3 backend's conditional writes are checked once per process.

    Raises:
        UmcInfraError: The S3 backend is chosen but no bucket is set.
        StateBackendError: The S3 endpoint cannot be reached, or ignores conditional writes.

    """
    if settings.backend == "s3":
        if not settings.state_bucket:
            raise UmcInfraError("UMC_BACKEND=s3 needs UMC_STATE_BUCKET", step="store")
        store = S3Store(s3_client(settings), settings.state_bucket, kms_key_id=settings.state_kms_key_id)
        where = (settings.s3_endpoint, settings.state_bucket)
        with _probing:
            if where not in _probed:
                problems = conditional_write_problems(store)
                if problems:
                    endpoint = settings.s3_endpoint or f"the AWS endpoint of region {settings.s3_region}"
                    raise StateBackendError(
                        f"the S3 endpoint {endpoint} (bucket {settings.state_bucket!r}) does not honour conditional "
                        f"writes: {'; '.join(problems)}. Deployment leases and address claims depend on them (without "
                        "them two runs could change one deployment, or two deployments take one address); use an S3 "
                        "service that honours If-None-Match and If-Match on PUT and DELETE (AWS S3 does)",
                        step="store",
                    )
                _probed.add(where)
        return store
    return LocalStore(settings.state_dir / "state")
