"""How a child blueprint extends its parent.

``extends: <parent>`` takes the parent's params, secrets, modules, hosts, playbooks, outputs, hooks and
ansible settings. The child may add any of them. It may override defaults, descriptions and module
inputs, and narrow a param's constraints, but never widen them. Its playbooks and hooks come after the
parent's.
"""

from __future__ import annotations

from typing import Any

from umc_infra.blueprint.model import Blueprint, ParamSpec
from umc_infra.errors import BlueprintProblem

_APPENDED = ("hosts", "playbooks", "hooks")
_MERGED = ("secrets", "outputs")
_FIXED = ("type", "items", "format", "secret")


def merge(parent: Blueprint, child: dict[str, Any]) -> tuple[dict[str, Any], list[BlueprintProblem]]:
    """The child's raw mapping with the parent's merged in, and every constraint the child widens."""
    base = parent.model_dump(mode="python", exclude_unset=True, exclude={"override", "extends"})
    merged: dict[str, Any] = {**base, **{k: v for k, v in child.items() if k not in ("params", "modules", *_APPENDED,
                                                                                  *_MERGED)}}  # fmt: skip
    problems: list[BlueprintProblem] = []
    params = dict(base.get("params", {}))
    for name, spec in (child.get("params") or {}).items():
        if name in parent.params and isinstance(spec, dict):
            problems += _widened(name, parent.params[name], spec)
            params[name] = {**params[name], **spec}
        else:
            params[name] = spec
    merged["params"] = params
    modules = dict(base.get("modules", {}))
    for name, spec in (child.get("modules") or {}).items():
        if name in modules and isinstance(spec, dict):
            inputs = {**modules[name].get("inputs", {}), **(spec.get("inputs") or {})}
            modules[name] = {**modules[name], **spec, "inputs": inputs}
        else:
            modules[name] = spec
    merged["modules"] = modules
    for key in _APPENDED:
        merged[key] = [*base.get(key, []), *(child.get(key) or [])]
    for key in _MERGED:
        merged[key] = {**base.get(key, {}), **(child.get(key) or {})}
    return merged, problems


def _widened(name: str, parent: ParamSpec, child: dict[str, Any]) -> list[BlueprintProblem]:
    """How a child's param entry widens or changes its parent's constraints (empty if it only narrows)."""
    where = f"params.{name}"
    problems = []

    def widen(key: str, message: str) -> None:
        problems.append(BlueprintProblem(where=f"{where}.{key}", message=f"widens the parent's constraint: {message}"))

    for key in _FIXED:
        if key in child and child[key] != getattr(parent, key):
            problems.append(BlueprintProblem(where=f"{where}.{key}", message=f"cannot change {key!r} of an inherited "
                                             f"param (parent: {getattr(parent, key)!r})"))  # fmt: skip
    for key, lower_is_wider in (("min", True), ("min_length", True), ("max", False), ("max_length", False)):
        before = getattr(parent, key)
        if key in child and before is not None:
            after = child[key]
            if after is None or (isinstance(after, int | float) and (after < before) == lower_is_wider
                                 and after != before):  # fmt: skip
                widen(key, f"{key} {after!r} where the parent has {before!r}")
    if "values" in child and parent.values is not None:
        added = [v for v in (child["values"] or []) if v not in parent.values]
        if added or not child["values"]:
            widen("values", f"adds {added!r}" if added else "removes the allowed values")
    if "pattern" in child and parent.pattern is not None and child["pattern"] != parent.pattern:
        widen("pattern", "a new pattern cannot be proven narrower; keep the parent's and narrow with values, "
              "min_length or max_length")  # fmt: skip
    if "choices" in child and parent.choices is not None and child["choices"] != parent.choices:
        widen("choices", f"{child['choices']!r} where the parent names the site's {parent.choices}")
    if child.get("multiline") is True and not parent.multiline:
        widen("multiline", "allows newlines where the parent does not")
    return problems
