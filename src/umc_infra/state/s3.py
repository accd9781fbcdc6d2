"""The S3 state backend: documents as objects under ``umc/`` in the state bucket.

Conditional writes are S3's: ``create`` is a PUT with ``If-None-Match: *``, ``replace`` and ``delete_if``
send the ETag read last in ``If-Match`` (see :mod:`umc_infra.state.store`). An S3-compatible service
that ignores these conditions would let two runs hold one deployment or one address:
:func:`open_s3_store` probes them once per process and endpoint (:func:`conditional_write_problems`)
and refuses such a backend.

The calls are signed HTTP requests of :class:`umc_infra.state.aws.AwsClient` (no boto3 client).
"""

from __future__ import annotations

import contextlib
import threading
import uuid

from umc_infra.errors import StateBackendError, UmcInfraError
from umc_infra.settings import Settings
from umc_infra.state.aws import AwsClient, AwsReply, s3_keys
from umc_infra.state.store import StateStore, Versioned, check_key

PREFIX = "umc"


# A condition that did not hold (412), or a concurrent conditional write of the same key that won (409).
_REFUSED = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
# ``If-Match`` on a key that is gone.
_GONE = frozenset({"NoSuchKey", "404"})


class S3Store:
    """Objects under ``umc/`` in the state bucket, encrypted at rest (SSE-KMS with ``kms_key_id``, else SSE-S3).

    The version of an object is its ETag.
    """

    def __init__(self, client: AwsClient, bucket: str, *, kms_key_id: str | None = None) -> None:
        self._s3 = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r})"

    def _path(self, key: str) -> str:
        return f"/{self.bucket}/{PREFIX}/{check_key(key)}"

    def _refused(self, key: str, reply: AwsReply) -> StateBackendError:
        return StateBackendError(f"S3 bucket {self.bucket!r} refused {key!r}: {reply.code}", step="store")

    def get(self, key: str) -> bytes | None:
        """The document at ``key``, or None."""
        found = self.get_versioned(key)
        return found.data if found is not None else None

    def get_versioned(self, key: str) -> Versioned | None:
        """The document at ``key`` with its version, or None."""
        reply = self._s3.request("GET", self._path(key))
        if reply.code == "NoSuchKey":  # S3's own answer; a bare 404 comes from something that is not the bucket
            return None
        if not reply.ok:
            raise self._refused(key, reply)
        return Versioned(reply.body, reply.headers.get("ETag", ""))

    def put(self, key: str, data: bytes) -> None:
        """Write (replace) the document at ``key``."""
        self._put(key, data, {})

    def create(self, key: str, data: bytes) -> str | None:
        """Write only if absent: the new version, or None if the key exists."""
        return self._put(key, data, {"If-None-Match": "*"})

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        """Compare-and-swap: the new version, or None if ``version`` is not current (or the key is gone)."""
        return self._put(key, data, {"If-Match": version})

    def _put(self, key: str, data: bytes, condition: dict[str, str]) -> str | None:
        headers = dict(condition)
        if self.kms_key_id:
            headers |= {"x-amz-server-side-encryption": "aws:kms",
                        "x-amz-server-side-encryption-aws-kms-key-id": self.kms_key_id}  # fmt: skip
        else:
            headers["x-amz-server-side-encryption"] = "AES256"
        reply = self._s3.request("PUT", self._path(key), body=data, headers=headers)
        if reply.ok:
            etag = reply.headers.get("ETag")
            if not etag:  # the version a compare-and-swap needs (and create's "written" is its truth)
                raise StateBackendError(f"S3 bucket {self.bucket!r} wrote {key!r} without an ETag", step="store")
            return str(etag)
        if condition and (reply.code in _REFUSED or ("If-Match" in condition and reply.code in _GONE)):
            return None
        raise self._refused(key, reply)

    def delete(self, key: str) -> None:
        """Remove the document at ``key`` (absent is fine)."""
        reply = self._s3.request("DELETE", self._path(key))
        if not reply.ok and reply.code != "NoSuchKey":
            raise self._refused(key, reply)

    def delete_if(self, key: str, *, version: str) -> bool:
        """Compare-and-delete: whether the document at ``version`` was removed."""
        reply = self._s3.request("DELETE", self._path(key), headers={"If-Match": version})
        if reply.ok:
            return True
        if reply.code in _REFUSED or reply.code in _GONE:
            return False
        raise self._refused(key, reply)

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        found = s3_keys(self._s3, self.bucket, f"{PREFIX}/{check_key(prefix.rstrip('/'))}/")
        return sorted(key.removeprefix(f"{PREFIX}/") for key in found)


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


_probed: set[tuple[str | None, str]] = set()
_probing = threading.Lock()


def open_s3_store(settings: Settings, bucket: str) -> S3Store:
    """The S3 store of ``bucket``; its conditional writes are checked once per process and endpoint.

    Raises:
        StateBackendError: The S3 endpoint cannot be reached, or ignores conditional writes.
    """
    store = S3Store(AwsClient(settings, "s3"), bucket, kms_key_id=settings.state_kms_key_id)
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
