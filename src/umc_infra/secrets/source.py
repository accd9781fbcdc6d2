"""Where a run's secrets come from: a :class:`SecretSource`, read by :func:`resolve` into :class:`Secrets`.

:func:`concrete_ref` fills a blueprint's secret references from its params. A failure names the reference
(``kv/data/apps/x#db_password``) and what to do, never a value.
"""

from __future__ import annotations

import re
from typing import Protocol

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra.blueprint.model import Blueprint, SecretRef
from umc_infra.errors import SecretError
from umc_infra.params import ResolvedParams

_PLACEHOLDER_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class SecretSource(Protocol):
    """Reads one key of a KV v2 secret."""

    def read(self, ref: SecretRef) -> SecretStr:
        """The value at ``ref``.

        Raises:
            SecretError: Missing, denied, deleted or unreachable.

        """
        ...


class Secrets(BaseModel):
    """Resolved secrets by name; the values show as ``**********`` everywhere."""

    model_config = ConfigDict(frozen=True)

    values: dict[str, SecretStr]

    def __getitem__(self, name: str) -> SecretStr:
        return self.values[name]

    def all(self) -> list[SecretStr]:
        """Every value, for redaction."""
        return list(self.values.values())


def concrete_ref(blueprint: Blueprint, name: str, params: ResolvedParams) -> SecretRef:
    """The reference of secret ``name`` with its placeholders filled from validated params.

    Raises:
        SecretError: A placeholder value could escape its path (``/``, ``..``, odd characters).

    """
    ref = blueprint.secret_ref(name)
    fills: dict[str, str] = {}
    for placeholder in ref.placeholders():
        value = params.deployment if placeholder == "deployment" else str(params.values[placeholder])
        if not _PLACEHOLDER_VALUE.fullmatch(value) or value in {".", ".."}:
            raise SecretError(
                f"secret {name!r}: the value of {{{placeholder}}} cannot be part of a Vault path "
                "(letters, digits, '.', '_' and '-' only)",
                reference=str(ref),
            )
        fills[placeholder] = value
    return ref.model_copy(update={"path": ref.path.format(**fills)})


def resolve(blueprint: Blueprint, params: ResolvedParams, source: SecretSource) -> Secrets:
    """Read every secret the blueprint declares."""
    return Secrets(values={name: source.read(concrete_ref(blueprint, name, params)) for name in blueprint.secrets})
