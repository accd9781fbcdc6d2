"""The policy file: who belongs to which department, which blueprints a department may use, its quota and lease.

Example (YAML)::

    admin_groups: [platform-engineers]
    departments:
      cardiology:
        groups: [cardiology-it]
        blueprints: [web-server, linux-server]
        quota: {vms: 6, vcpus: 12, memory_mb: 24576}
        lease: {max_days: 30, default_days: 14, warn_days: 3}   # optional: without it, no end date

A :class:`Caller` (from a verified token) gets an :class:`Access`: its departments (through its groups) and
whether it is an admin (an admin group: sees and may act for every department).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from umc_infra.errors import ParamProblem, SettingsError
from umc_infra.settings import invalid_settings

DepartmentName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
GroupName = Annotated[str, Field(min_length=1, max_length=256)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Quota(_Model):
    """The most a department's deployments may use together."""

    vms: int = Field(ge=0)
    vcpus: int = Field(ge=0)
    memory_mb: int = Field(ge=0)


class Lease(_Model):
    """How long a department's deployments may live: a request may ask for an end date up to ``max_days`` away."""

    max_days: int = Field(ge=1)
    default_days: int = Field(ge=1)
    """The end date of a request that asks for none."""
    warn_days: int = Field(default=3, ge=0)
    """How long before the end its owners are warned."""

    @model_validator(mode="after")
    def _within_max(self) -> Self:
        if self.default_days > self.max_days:
            raise ValueError(f"default_days ({self.default_days}) is more than max_days ({self.max_days})")
        if self.warn_days >= self.max_days:
            raise ValueError(f"warn_days ({self.warn_days}) must be less than max_days ({self.max_days})")
        return self


class Department(_Model):
    """A department: the groups whose members act for it, its blueprints, quota and (optional) lease."""

    groups: tuple[GroupName, ...] = Field(min_length=1)
    blueprints: tuple[str, ...] = Field(min_length=1)
    quota: Quota
    lease: Lease | None = None


class Caller(_Model):
    """Who calls: from a verified token (``sub``, ``preferred_username``, ``groups``)."""

    subject: str
    username: str
    groups: tuple[str, ...] = ()


class Access(_Model):
    """What a caller may do: act for ``departments``; an admin sees and acts for every department."""

    caller: Caller
    departments: tuple[str, ...]
    admin: bool

    def may_see(self, department: str) -> bool:
        """Whether the caller sees the deployments, jobs and audit of ``department``."""
        return self.admin or department in self.departments


class Policy(_Model):
    """The whole policy file."""

    admin_groups: tuple[GroupName, ...] = ()
    departments: dict[DepartmentName, Department] = Field(min_length=1)

    def access(self, caller: Caller) -> Access:
        """The departments ``caller`` acts for (by its groups), and whether it is an admin."""
        groups = set(caller.groups)
        mine = tuple(name for name, dept in self.departments.items() if groups & set(dept.groups))
        return Access(caller=caller, departments=mine, admin=bool(groups & set(self.admin_groups)))

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read and check a policy file.

        Raises:
            SettingsError: The file is missing or not YAML, or a field is wrong (named:
                ``<file>: departments.x.quota.vms``).
        """
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _problem(path, "file", f"cannot be read: {exc.strerror or exc}", "a readable YAML file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else "file"
            raise _problem(path, where, "is not valid YAML", "a YAML mapping (see docs/service.md)") from None
        return cls.parse(document, source=str(path))

    @classmethod
    def parse(cls, document: object, *, source: str = "policy") -> Policy:
        """Check a policy already read (a mapping), naming ``source`` in errors.

        Raises:
            SettingsError: Each wrong field, named by its path in the document.
        """
        if not isinstance(document, dict):
            raise _problem(source, "file", "is not a mapping", "admin_groups and departments at the top")
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise invalid_settings(exc, lambda name: f"{source}: {name}") from None


def _problem(source: object, where: str, message: str, allowed: str) -> SettingsError:
    return SettingsError([ParamProblem(field=f"{source}: {where}", message=message, allowed=allowed)])
