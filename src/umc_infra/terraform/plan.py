"""What Terraform would do, or did: the models of a plan and the parsing of ``terraform show -json``.

Pure functions of Terraform's JSON: sensitive values are masked in what they return, and handed to the
caller separately (:func:`sensitive_values`) so that the redactor learns them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra.params import MASK

UNKNOWN = "(known after apply)"


class ChangeCounts(BaseModel):
    """What an apply did."""

    model_config = ConfigDict(frozen=True)

    add: int = 0
    change: int = 0
    remove: int = 0


class AttributeChange(BaseModel):
    """One attribute's old and new value (``***`` if sensitive)."""

    model_config = ConfigDict(frozen=True)

    before: Any = None
    after: Any = None


class ResourceChange(BaseModel):
    """What Terraform would do to one resource, or what drifted."""

    model_config = ConfigDict(frozen=True)

    module: str
    address: str
    action: Literal["create", "update", "replace", "delete", "read"]
    attributes: dict[str, AttributeChange] = {}


def _action(actions: list[str]) -> str | None:
    if actions in (["delete", "create"], ["create", "delete"]):
        return "replace"
    if len(actions) == 1 and actions[0] in ("create", "update", "delete", "read"):
        return actions[0]
    return None  # no-op


def _normalized(value: Any) -> Any:
    """A value with empty parts dropped: a refresh reports ``None`` where the config says ``{}`` or ``[]``."""
    if isinstance(value, dict):
        kept = {k: n for k, v in value.items() if (n := _normalized(v)) is not None}
        return kept or None
    if isinstance(value, list):
        items = [_normalized(v) for v in value]
        return items if any(i is not None for i in items) else None
    return None if value == "" else value


def _sensitive(marks: Any, key: str) -> bool:
    return marks is True or (isinstance(marks, dict) and bool(marks.get(key)))


def resource_changes(module: str, entries: list[dict[str, Any]]) -> list[ResourceChange]:
    """Changes from ``resource_changes`` or ``resource_drift`` of ``terraform show -json``, sensitive masked."""
    found: list[ResourceChange] = []
    for entry in entries:
        change = entry.get("change", {})
        action = _action(change.get("actions", []))
        if action is None:
            continue
        attributes: dict[str, AttributeChange] = {}
        if action in ("update", "replace"):
            before, after = change.get("before") or {}, change.get("after") or {}
            unknown = change.get("after_unknown") or {}
            for key in sorted(set(before) | set(after)):
                if _normalized(before.get(key)) == _normalized(after.get(key)) and not unknown.get(key):
                    continue
                hidden = _sensitive(change.get("before_sensitive"), key) or _sensitive(
                    change.get("after_sensitive"), key
                )
                attributes[key] = AttributeChange(
                    before=MASK if hidden else before.get(key),
                    after=MASK if hidden else UNKNOWN if unknown.get(key) else after.get(key),
                )
            if action == "update" and not attributes:
                continue  # only empty-vs-missing noise (a refresh of the simulator reports such)
        found.append(
            ResourceChange(
                module=module,
                address=str(entry.get("address")),
                action=action,  # type: ignore[arg-type]
                attributes=attributes,
            )
        )
    return found


class TerraformPlan(BaseModel):
    """What a plan of one module would do."""

    model_config = ConfigDict(frozen=True)

    resources: tuple[ResourceChange, ...] = ()
    new_vms: tuple[str, ...] = ()
    """VMs it would create (``folder/name``): the journal notes them before the apply, so that a VM a killed
    run created but never got into its state is found and removed by the next run."""
    outputs: dict[str, Any] = {}
    """The module's output values as far as the plan knows them (one known only after the apply is left out);
    sensitive ones as :class:`~pydantic.SecretStr`, so no repr or log shows them."""


def _vm_of(kind: object, values: object) -> str | None:
    """``folder/name`` of a ``vsphere_virtual_machine`` from its planned or recorded values."""
    if kind != "vsphere_virtual_machine" or not isinstance(values, dict) or not values.get("name"):
        return None
    return f"{str(values.get('folder') or '').strip('/')}/{values['name']}".lstrip("/")


def counts_of(changes: list[ResourceChange] | tuple[ResourceChange, ...]) -> ChangeCounts:
    """Add/change/remove counts the way Terraform reports them (a replace is one add and one remove)."""
    return ChangeCounts(
        add=sum(c.action in ("create", "replace") for c in changes),
        change=sum(c.action == "update" for c in changes),
        remove=sum(c.action in ("delete", "replace") for c in changes),
    )


def _leaves(value: Any) -> Iterator[str]:
    """The scalar parts of a value as Terraform prints them (strings as they are, others as JSON)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None and value != "":
        yield value if isinstance(value, str) else json.dumps(value)


def _marked(value: Any, marks: Any) -> Iterator[str]:
    """The scalar parts of ``value`` marked sensitive by ``marks`` (True, or a map or list shaped like ``value``)."""
    if marks is True:
        yield from _leaves(value)
    elif isinstance(marks, dict) and isinstance(value, dict):
        for key, mark in marks.items():
            yield from _marked(value.get(key), mark)
    elif isinstance(marks, list) and isinstance(value, list):
        for item, mark in zip(value, marks, strict=False):
            yield from _marked(item, mark)


def _unknown(marks: Any) -> bool:
    """Whether an ``after_unknown`` (True, or a map or list of such marks) marks any part unknown."""
    if isinstance(marks, dict):
        return any(_unknown(m) for m in marks.values())
    if isinstance(marks, list):
        return any(_unknown(m) for m in marks)
    return marks is True


def sensitive_values(shown: Mapping[str, Any]) -> list[str]:
    """Every value ``terraform show -json`` of a plan marks sensitive (resources, drift, outputs), for the redactor."""
    changes = [e.get("change", {}) for e in (shown.get("resource_changes") or []) + (shown.get("resource_drift") or [])]
    changes += list((shown.get("output_changes") or {}).values())
    found = [
        v for c in changes for side in ("before", "after") for v in _marked(c.get(side), c.get(f"{side}_sensitive"))
    ]
    planned = (shown.get("planned_values") or {}).get("outputs") or {}
    return found + [v for output in planned.values() if output.get("sensitive") for v in _leaves(output.get("value"))]


def plan_of(module: str, shown: Mapping[str, Any], *, refresh_only: bool = False) -> TerraformPlan:
    """One module's plan from ``terraform show -json`` of its plan file: changes, or with ``refresh_only`` drift."""
    entries = shown.get("resource_drift" if refresh_only else "resource_changes") or []
    new_vms = () if refresh_only else tuple(
        vm for e in entries if _action(e.get("change", {}).get("actions", [])) in ("create", "replace")
        and (vm := _vm_of(e.get("type"), e.get("change", {}).get("after"))) is not None
    )  # fmt: skip
    planned = (shown.get("planned_values") or {}).get("outputs") or {}
    changes = shown.get("output_changes") or {}
    outputs = {
        name: SecretStr(str(output["value"])) if output.get("sensitive") else output["value"]
        for name, output in planned.items()
        if "value" in output and not _unknown((changes.get(name) or {}).get("after_unknown"))
    }  # fmt: skip
    return TerraformPlan(resources=tuple(resource_changes(module, entries)), new_vms=new_vms, outputs=outputs)


def vms_in_state(shown: Mapping[str, Any]) -> set[str]:
    """The VMs (``folder/name``) in ``terraform show -json`` of a module's state."""
    resources = (shown.get("values") or {}).get("root_module", {}).get("resources", [])
    return {vm for r in resources if (vm := _vm_of(r.get("type"), r.get("values"))) is not None}
