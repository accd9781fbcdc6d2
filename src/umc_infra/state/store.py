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

The S3 store lives in :mod:`umc_infra.state.s3`; :func:`open_store` opens the one the settings name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from umc_infra.errors import InvalidStateKey, ParamProblem, SettingsError, StateBackendError
from umc_infra.private import make_private_dirs
from umc_infra.settings import Settings

_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
M = TypeVar("M", bound=BaseModel)


def check_key(key: str) -> str:
    """``key`` if it is a valid state key (lowercase names joined by ``/``, no ``..``).

    Raises:
        InvalidStateKey: It is not.
    """
    if not _KEY.fullmatch(key) or ".." in key:
        raise InvalidStateKey(
            f"invalid state key {key!r}: keys are lowercase names (a-z 0-9 . _ -) joined by /", step="store"
        )
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
        return self.root / check_key(key)

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
            make_private_dirs(path.parent)
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
        base = self.root / check_key(prefix.rstrip("/"))
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
        make_private_dirs(self.root)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def _install(self, path: Path, data: bytes) -> None:
        make_private_dirs(path.parent)
        partial = self._aside(path, data)
        try:
            os.replace(partial, path)
        except OSError:
            os.unlink(partial)
            raise

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


def open_store(settings: Settings) -> StateStore:
    """The store the settings name; an S3 backend's conditional writes are checked once per process.

    Raises:
        SettingsError: The S3 backend is chosen but no bucket is set.
        StateBackendError: The S3 endpoint cannot be reached, or ignores conditional writes.

    """
    if settings.backend == "s3":
        if not settings.state_bucket:
            needs = ParamProblem(field="UMC_STATE_BUCKET", message="not set, and UMC_BACKEND is s3",
                                 allowed="the S3 bucket for state and records, or UMC_BACKEND=local")  # fmt: skip
            raise SettingsError([needs])
        # Imported here, not at the top: the s3 module builds on this one (Versioned, check_key).
        from umc_infra.state.s3 import open_s3_store

        return open_s3_store(settings, settings.state_bucket)
    return LocalStore(settings.state_dir / "state")
