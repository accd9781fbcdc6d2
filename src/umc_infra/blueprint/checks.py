"""Checking a resolved blueprint before anything runs: every reference, module, playbook, param and hook.

Each reference is checked by its kind (:mod:`umc_infra.blueprint.references`) where it stands; module
variables and outputs come from the modules' ``*.tf`` files; modules may be listed in any order, as long as
they do not read each other's outputs in a cycle.
"""

from __future__ import annotations

from umc_infra.blueprint.content import ModuleInterface, module_interface
from umc_infra.blueprint.model import HOOK_GROUP, NUMBER_TYPES, Blueprint, Value
from umc_infra.blueprint.references import (
    Format,
    Use,
    check_reference,
    dependency_order,
    is_secret,
    references_in,
)
from umc_infra.errors import BlueprintError, BlueprintProblem

_NAME_PARAM_TYPES = ("string", "integer", "enum")
"""The param types a format (a name) may hold."""


def check(blueprint: Blueprint) -> list[BlueprintProblem]:
    """Every broken reference in a resolved blueprint, every module input missing, param unused, hook missing."""
    problems: list[BlueprintProblem] = []
    interfaces = _interfaces(blueprint, problems)
    outputs = {name: interface.outputs for name, interface in interfaces.items()}
    used: set[str] = set()

    def reads(where: str, value: Value, use: Use) -> None:
        """Check what a value standing at ``use`` reads."""
        for ref in references_in(value):
            if ref.kind == "params":
                used.add(ref.name or "")
            message = check_reference(ref, blueprint, use=use, outputs=outputs)
            if message is not None:
                problems.append(BlueprintProblem(where=where, message=message))
        if isinstance(value, Format):
            problems.extend(_format_problems(blueprint, value, where))

    for name, module in blueprint.modules.items():
        for key, value in module.inputs.items():
            reads(f"modules.{name}.inputs.{key}", value, "input")
        if module.addresses is not None:
            reads(f"modules.{name}.addresses.count", module.addresses.count, "address")
            if module.addresses.given is not None:
                reads(f"modules.{name}.addresses.given", module.addresses.given, "address")
    try:
        dependency_order(blueprint)
    except BlueprintError as exc:
        problems += exc.problems
    problems += _host_problems(blueprint, outputs)
    for i, play in enumerate(blueprint.playbooks):
        where = f"playbooks[{i}]"
        if not blueprint.playbook_file(play.playbook).is_file():
            searched = ", ".join(str(root / "playbooks") for root in blueprint.roots)
            problems.append(BlueprintProblem(where=f"{where}.playbook", message=f"playbook {play.playbook!r} not "
                                             f"found in {searched}"))  # fmt: skip
        if play.hosts not in blueprint.groups:
            problems.append(BlueprintProblem(where=f"{where}.hosts", message=f"unknown group {play.hosts!r}; groups: "
                                             f"{', '.join(sorted(blueprint.groups))}"))  # fmt: skip
        for var, value in play.vars.items():
            reads(f"{where}.vars.{var}", value, "var")
        problems += [BlueprintProblem(where=f"{where}.secret_vars", message=f"{var!r} is not one of its vars")
                     for var in play.secret_vars if var not in play.vars]  # fmt: skip
    for out_name, output in blueprint.outputs.items():
        reads(f"outputs.{out_name}", output.value, "output")
    if blueprint.playbooks and blueprint.ansible is None:
        problems.append(BlueprintProblem(where="ansible", message="a blueprint with playbooks needs "
                                         "'ansible: {ssh_private_key: secrets.<name>}'"))  # fmt: skip
    if blueprint.ansible is not None:
        reads("ansible.ssh_private_key", blueprint.ansible.ssh_private_key, "ssh_key")
    problems += _secret_problems(blueprint, interfaces, used)
    problems += [
        BlueprintProblem(where=f"params.{name}.at_most", message=f"{spec.at_most!r} is not an integer or number "
                         "param of this blueprint")
        for name, spec in blueprint.params.items()
        if spec.at_most is not None and getattr(blueprint.params.get(spec.at_most), "type", None) not in NUMBER_TYPES
    ]  # fmt: skip
    problems += [
        BlueprintProblem(where=f"params.{name}", message="is never used (by a module input, address, secret path, "
                         "playbook var or output)")
        for name in blueprint.params if name not in used
    ]  # fmt: skip
    return problems + _check_hooks(blueprint)


def _interfaces(blueprint: Blueprint, problems: list[BlueprintProblem]) -> dict[str, ModuleInterface]:
    """Each module's interface (a module not found or not readable is left out), and its inputs checked against it."""
    interfaces: dict[str, ModuleInterface] = {}
    for name, module in blueprint.modules.items():
        where = f"modules.{name}"
        module_dir = blueprint.module_dir(module.source)
        if not module_dir.is_dir() or not list(module_dir.glob("*.tf")):
            searched = ", ".join(str(root / "modules") for root in blueprint.roots)
            problems.append(BlueprintProblem(where=f"{where}.source",
                                             message=f"module {module.source!r} not found in {searched}"))  # fmt: skip
            continue
        try:
            interface = interfaces[name] = module_interface(module_dir)
        except BlueprintError as exc:
            problems.append(BlueprintProblem(where=f"{where}.source", message=str(exc)))
            continue
        for unknown in sorted(set(module.inputs) - interface.variables):
            problems.append(BlueprintProblem(where=f"{where}.inputs.{unknown}", message=f"module {module.source!r} "
                                             f"has no variable {unknown!r}"))  # fmt: skip
        for missing in sorted(interface.required - set(module.inputs)):
            problems.append(BlueprintProblem(where=f"{where}.inputs", message=f"module {module.source!r} needs "
                                             f"variable {missing!r} (it has no default)"))  # fmt: skip
    return interfaces


def _host_problems(blueprint: Blueprint, outputs: dict[str, frozenset[str]]) -> list[BlueprintProblem]:
    problems: list[BlueprintProblem] = []
    for i, hosts in enumerate(blueprint.hosts):
        if hosts.module not in blueprint.modules:
            problems.append(BlueprintProblem(where=f"hosts[{i}].module", message=f"unknown module {hosts.module!r}"))
            continue
        problems += [
            BlueprintProblem(where=f"hosts[{i}]", message=f"module {hosts.module!r} has no output {output!r}")
            for output in (hosts.names, hosts.ips)
            if hosts.module in outputs and output not in outputs[hosts.module]
        ]  # fmt: skip
    return problems


def _format_problems(blueprint: Blueprint, fmt: Format, where: str) -> list[BlueprintProblem]:
    """A format is a name: its params must be plain strings, integers or enums, never secrets."""
    problems: list[BlueprintProblem] = []
    for field in fmt.fields():
        param = blueprint.params.get(field)
        if field == "deployment" or param is None:
            continue  # an unknown param is a reference problem
        if param.type not in _NAME_PARAM_TYPES:
            problems.append(BlueprintProblem(where=where, message=f"format {fmt.format!r}: param {field!r} must be a "
                                             "string, integer or enum"))  # fmt: skip
        elif param.secret:
            problems.append(BlueprintProblem(where=where, message=f"format {fmt.format!r}: param {field!r} is secret "
                                             "and cannot be part of a name"))  # fmt: skip
    return problems


def _secret_problems(
    blueprint: Blueprint, interfaces: dict[str, ModuleInterface], used: set[str]
) -> list[BlueprintProblem]:
    """Secrets reach only sensitive module variables; a secret's Vault path only holds plain names."""
    problems: list[BlueprintProblem] = []
    for name, interface in interfaces.items():
        module = blueprint.modules[name]
        for input_name, value in module.inputs.items():
            secret = next((r for r in references_in(value) if is_secret(r, blueprint)), None)
            if secret is not None and input_name in interface.variables and input_name not in interface.sensitive:
                problems.append(BlueprintProblem(where=f"modules.{name}.inputs.{input_name}", message=(
                    f"receives a secret ({secret}), but variable {input_name!r} of module {module.source!r} is not "
                    "declared `sensitive = true`: Terraform would show its value in plans (the old one too, after "
                    "a rotation) and in errors")))  # fmt: skip
    for secret_name in blueprint.secrets:
        for placeholder in blueprint.secret_ref(secret_name).placeholders():
            used.add(placeholder)
            param = blueprint.params.get(placeholder)
            if placeholder != "deployment" and (param is None or param.secret or param.type not in ("string", "enum")):
                message = f"placeholder {{{placeholder}}} must be 'deployment' or a non-secret string or enum param"
                problems.append(BlueprintProblem(where=f"secrets.{secret_name}", message=message))
    return problems


def _check_hooks(blueprint: Blueprint) -> list[BlueprintProblem]:
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group=HOOK_GROUP)}
    return [
        BlueprintProblem(where=f"hooks[{i}].call", message=f"no hook {hook.call!r} is installed (entry points in "
                         f"group {HOOK_GROUP!r}: {', '.join(sorted(installed)) or 'none'})")
        for i, hook in enumerate(blueprint.hooks)
        if hook.call not in installed
    ]  # fmt: skip
