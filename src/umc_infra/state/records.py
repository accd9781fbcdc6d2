"""Deployment records: what was made, from which blueprint and version, by whom, and every run's outcome.

Stored in the state backend beside Terraform's state (``deployments/<name>/record.json``), so every
machine that shares the backend sees the same records. Secret params and sensitive outputs are masked
before a record is written.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from umc_infra.ansible.inventory import Host
from umc_infra.errors import StateBackendError
from umc_infra.state.store import StateStore, parse_document
from umc_infra.terraform.plan import ChangeCounts

Outcome = Literal["running", "succeeded", "failed", "interrupted", "cancelled", "abandoned"]
"""``abandoned``: the run's process died (SIGKILL, a lost machine); the next run found out and recorded it."""
State = Literal["provisioning", "active", "failed", "interrupted", "destroyed"]


_CI_VARIABLES: tuple[tuple[tuple[str, ...], str, dict[str, str]], ...] = (
    (("GITLAB_CI", "CI_JOB_ID"), "GITLAB_USER_LOGIN", {
        "ci_job_id": "CI_JOB_ID", "ci_pipeline_id": "CI_PIPELINE_ID", "ci_project": "CI_PROJECT_PATH",
        "ci_job_url": "CI_JOB_URL",
    }),
    (("GITHUB_RUN_ID",), "GITHUB_ACTOR", {
        "ci_job_id": "GITHUB_JOB", "ci_pipeline_id": "GITHUB_RUN_ID", "ci_project": "GITHUB_REPOSITORY",
    }),
)  # fmt: skip
"""Per CI system: the variables any of which says its job runs, the user's variable, and each CI field's variable."""


class Actor(BaseModel):
    """Who ran it: a person on a machine, or a CI job."""

    model_config = ConfigDict(frozen=True)

    user: str
    host: str
    ci_job_id: str | None = None
    ci_pipeline_id: str | None = None
    ci_project: str | None = None
    ci_job_url: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Actor:
        """GitLab CI (``CI_JOB_ID`` ...), GitHub Actions (``GITHUB_RUN_ID`` ...), else the local user."""
        env = os.environ if env is None else env
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        for markers, user_variable, fields in _CI_VARIABLES:
            if any(env.get(marker) for marker in markers):
                found = {field: env.get(variable) for field, variable in fields.items()}
                return cls.model_validate(found | {"user": env.get(user_variable, user), "host": socket.gethostname()})
        return cls(user=user, host=socket.gethostname())


class InFlight(BaseModel):
    """What a run's Terraform was doing on one module when its record was last written.

    Written before an apply starts and cleared when it ends, so the run after one that died knows which
    VMs may exist that Terraform's state never recorded, and which state locks it left behind.
    """

    model_config = ConfigDict(frozen=True)

    new_vms: tuple[str, ...] = ()
    """VMs the apply was to create (``folder/name``)."""
    lock_ids: tuple[str, ...] = ()
    """Ids of the Terraform state locks its commands took (S3 backend)."""


class RunRecord(BaseModel):
    """One provision, destroy or repair run."""

    model_config = ConfigDict(frozen=True)

    action: Literal["provision", "destroy"]
    outcome: Outcome
    actor: Actor
    started_at: datetime
    finished_at: datetime | None = None
    blueprint_version: str | None = None
    failed_step: str | None = None
    failed_hosts: tuple[str, ...] = ()
    """Hosts a playbook failed on (a later run with ``retry="failed"`` resumes there)."""
    error: str | None = None
    """The error's message (already free of secret values)."""
    timings: dict[str, float] = Field(default_factory=dict)
    changes: dict[str, ChangeCounts] = Field(default_factory=dict)
    in_flight: dict[str, InFlight] = Field(default_factory=dict)
    """Per module, what its Terraform was doing (see :class:`InFlight`); empty when nothing was."""
    terraform_who: str | None = None
    """The ``user@host`` Terraform writes into the state locks this run's commands take."""
    params_digest: str | None = None
    """A digest of the (masked) params the run was asked for: a retry resumes only for the same params."""
    requested_by: str | None = None
    """Who asked for the run (a portal user, a CI user), where the caller said; ``actor`` is who ran it."""
    ticket: str | None = None
    """The ticket the run was asked for in, where the caller said."""


class DeploymentRecord(BaseModel):
    """Everything known about a deployment."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    blueprint: str
    version: str
    state: State
    params: dict[str, Any]
    hosts: tuple[Host, ...] = ()
    outputs: dict[str, Any] = Field(default_factory=dict)
    modules: tuple[str, ...] = ()
    """Terraform module instances, in apply order (destroy goes in reverse)."""
    created_at: datetime
    updated_at: datetime
    runs: tuple[RunRecord, ...] = ()
    blueprint_snapshot: dict[str, Any] | None = None
    """The resolved blueprint as deployed (its ``extends`` merged): destroy and drift work on what was deployed,
    even after the blueprint changed or narrowed a param."""

    @property
    def last_run(self) -> RunRecord | None:
        """The newest run."""
        return self.runs[-1] if self.runs else None


def _key(deployment: str) -> str:
    return f"deployments/{deployment}/record.json"


_log = logging.getLogger("umc_infra")


class Records:
    """Read and write deployment records in a state store."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"Records({self._store!r})"

    def get(self, deployment: str) -> DeploymentRecord | None:
        """The record of ``deployment``, or None if it was never provisioned here.

        Raises:
            StateBackendError: The record is corrupt (names the document), or the backend cannot be read.
        """
        data = self._store.get(_key(deployment))
        return self._parse(deployment, data) if data is not None else None

    def _parse(self, deployment: str, data: bytes) -> DeploymentRecord:
        fix = (
            f"restore it from the backend's earlier versions (S3 object versioning) or a backup of {self._store!r}; "
            "if the deployment no longer exists, remove the document"
        )
        return parse_document(DeploymentRecord, data, key=_key(deployment), fix=fix, step="records")

    def put(self, record: DeploymentRecord) -> None:
        """Write (replace) a record."""
        self._store.put(_key(record.deployment), record.model_dump_json(indent=2).encode())

    def all(self) -> list[DeploymentRecord]:
        """Every deployment's record, by name; a corrupt record is left out with a warning (``umc_infra`` logger)."""
        found = []
        for key in self._store.list("deployments"):
            if key.endswith("/record.json"):
                deployment = key.split("/")[1]
                data = self._store.get(key)
                if data is None:
                    continue  # removed since the listing
                try:
                    found.append(self._parse(deployment, data))
                except StateBackendError as exc:
                    _log.warning("left out deployment %s: %s", deployment, exc)
        return sorted(found, key=lambda r: r.deployment)

    def update_run(self, record: DeploymentRecord, run: RunRecord, **changes: Any) -> DeploymentRecord:
        """The record with its last run replaced by ``run`` (or ``run`` appended if it is new), saved."""
        runs = list(record.runs)
        if runs and runs[-1].started_at == run.started_at and runs[-1].action == run.action:
            runs[-1] = run
        else:
            runs.append(run)
        updated = record.model_copy(update={"runs": tuple(runs), "updated_at": datetime.now(UTC), **changes})
        self.put(updated)
        return updated
