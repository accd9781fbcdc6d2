"""Every raise in src/ names a leaf of the error tree; every error class lives in errors.py.

A raise site is judged by what it raises, never by where it is (no list of allowed sites):

- an error of umc_infra: a leaf of :class:`UmcInfraError` (a class without subclasses), raised directly or
  returned by a function whose return annotation is one;
- a stop that is not an error (a ``BaseException`` that is not an ``Exception``: ``KeyboardInterrupt``);
- ``ValueError`` inside pydantic validation (a validator, a function passed to ``AfterValidator`` and the
  like, a function of the module they call, or a method of a pydantic model): pydantic turns it into a
  ``ValidationError``, which umc_infra reports as a ParamsError, SettingsError or BlueprintError;
- a private exception of the module (``_Missing``) that the module itself catches: control flow inside it;
- ``typer.Exit`` in the command line: how a command ends with an exit code.
"""

import ast
import builtins
import functools
import importlib
import inspect
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest
import typer

import umc_infra
from umc_infra.errors import UmcInfraError

SRC = Path(umc_infra.__file__).parent
_VALIDATORS = {"AfterValidator", "BeforeValidator", "PlainValidator", "WrapValidator"}
_VALIDATOR_DECORATORS = {"field_validator", "model_validator", "validator", "root_validator"}


@dataclass(frozen=True)
class Site:
    path: str
    line: int
    raised: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: raise {self.raised}(...): {self.why}"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def _resolve(expr: ast.expr, namespace: dict[str, object], owner: type | None) -> object:
    """What a raise's callee names: ``Name``, ``a.b.C``, or ``self.method`` / ``cls.method`` of the class."""
    if isinstance(expr, ast.Name):
        return namespace.get(expr.id, getattr(builtins, expr.id, None))
    if isinstance(expr, ast.Attribute):
        if isinstance(expr.value, ast.Name) and expr.value.id in ("self", "cls") and owner is not None:
            return inspect.getattr_static(owner, expr.attr, None)
        base = _resolve(expr.value, namespace, owner)
        return getattr(base, expr.attr, None) if base is not None else None
    return None


def _raised_class(callee: object) -> type | None:
    """The class a raise raises: the callee itself, or what a function returns (its return annotation)."""
    if isinstance(callee, staticmethod | classmethod):
        callee = callee.__func__
    if isinstance(callee, type):
        return callee
    if inspect.isfunction(callee):
        returned = typing.get_type_hints(callee).get("return")
        return returned if isinstance(returned, type) else None
    return None


Function = ast.FunctionDef | ast.AsyncFunctionDef
Raise = tuple[ast.Raise, Function | None, tuple[str, ...]]


Module = tuple[ast.Module, dict[str, object]]
"""A module's syntax tree and its namespace once imported."""


def validation_functions(modules: dict[str, Module]) -> set[tuple[str, str]]:
    """``(module, function)`` of every pydantic validator, and of every function they call, to a fixpoint.

    Validators are decorated (``@field_validator`` ...) or passed to ``AfterValidator`` and the like; a call is
    followed into any of ``modules`` (a validator may call a parser of another module).
    """
    defs = {(m, f.name): f for m, (tree, _) in modules.items() for f in ast.walk(tree) if isinstance(f, Function)}
    found: set[tuple[str, str]] = set()
    for m, (tree, _) in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in _VALIDATORS:
                found |= {(m, arg.id) for arg in node.args[:1] if isinstance(arg, ast.Name)}
            elif isinstance(node, Function):
                decorators = {ast.unparse(d).split("(")[0].split(".")[-1] for d in node.decorator_list}
                found |= {(m, node.name)} if decorators & _VALIDATOR_DECORATORS else set()
    queue = [key for key in found if key in defs]
    while queue:
        m, name = queue.pop()
        namespace = modules[m][1]
        for call in ast.walk(defs[m, name]):
            target = _resolve(call.func, namespace, None) if isinstance(call, ast.Call) else None
            key = (getattr(target, "__module__", ""), getattr(target, "__name__", ""))
            if inspect.isfunction(target) and key in defs and key not in found:
                found.add(key)
                queue.append(key)
    return found


def _caught(tree: ast.Module) -> set[str]:
    """Names the module's ``except`` clauses catch."""
    names: set[str] = set()
    for handler in ast.walk(tree):
        if isinstance(handler, ast.ExceptHandler) and handler.type is not None:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            names |= {ast.unparse(kind) for kind in kinds}
    return names


def _raises(node: ast.AST, function: Function | None = None, classes: tuple[str, ...] = ()) -> Iterator[Raise]:
    """Each raise with the function and the (nested) classes it is in."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, Function):
            yield from _raises(child, child, classes)
        elif isinstance(child, ast.ClassDef):
            yield from _raises(child, None, (*classes, child.name))
        else:
            if isinstance(child, ast.Raise):
                yield child, function, classes
            yield from _raises(child, function, classes)


def judge(module: Module, where: str, validation: set[tuple[str, str]]) -> list[Site]:
    """Every raise site of one module that breaks the rules above; ``validation``: see validation_functions."""
    tree, namespace = module
    caught = _caught(tree)
    bad: list[Site] = []
    for raise_, function, classes in _raises(tree):
        exc = raise_.exc
        if exc is None or not (isinstance(exc, ast.Call) or (isinstance(exc, ast.Name) and exc.id[:1].isupper())):
            continue  # `raise` or `raise error`: an error made elsewhere, judged where it is made
        callee = exc.func if isinstance(exc, ast.Call) else exc
        owner: object = None
        for name in classes:
            owner = getattr(owner, name, None) if owner is not None else namespace.get(name)
        owner = owner if isinstance(owner, type) else None
        raised = _raised_class(_resolve(callee, namespace, owner))
        in_validation = (owner is not None and issubclass(owner, pydantic.BaseModel)) or (
            function is not None and (namespace.get("__name__"), function.name) in validation
        )
        private = (
            raised is not None
            and raised.__name__.startswith("_")
            and raised.__module__ == namespace.get("__name__")
            and raised.__name__ in caught
        )
        why = None if private else _why(raised, validation=in_validation, cli=where.startswith("cli/"))
        if why:
            bad.append(Site(where, raise_.lineno, ast.unparse(callee), why))
    return bad


def _why(raised: type | None, *, validation: bool, cli: bool) -> str | None:
    """What is wrong with raising ``raised`` there; None if nothing."""
    if raised is None:
        return "cannot tell what it raises (name a class, or annotate the function's return)"
    if issubclass(raised, UmcInfraError):
        children = [c.__name__ for c in raised.__subclasses__() if c.__module__.startswith("umc_infra.")]
        some = ", ".join(children[:3]) + (f" and {len(children) - 3} more" if len(children) > 3 else "")
        return f"{raised.__name__} is not a leaf (it has {some}): raise a precise one" if children else None
    if not issubclass(raised, Exception):
        return None  # a stop, not an error (KeyboardInterrupt)
    if (issubclass(raised, ValueError) and validation) or (raised is typer.Exit and cli):
        return None
    return f"{raised.__name__} is not an error of umc_infra: raise a leaf of UmcInfraError"


def load(path: Path) -> Module:
    return ast.parse(path.read_text()), vars(importlib.import_module(module_name(path)))


@functools.cache
def src_modules() -> dict[str, Module]:
    return {module_name(path): load(path) for path in sources()}


def sources() -> list[Path]:
    """The modules of src/umc_infra."""
    return sorted(SRC.rglob("*.py"))


def test_every_raise_names_a_leaf():
    modules = src_modules()
    validation = validation_functions(modules)
    bad = [site for path in sources() for site in judge(modules[module_name(path)], str(path.relative_to(SRC)),
                                                        validation)]  # fmt: skip
    assert not bad, "\n".join(map(str, bad))


def test_every_error_class_lives_in_errors_py():
    outside = []
    for path in sources():
        module = importlib.import_module(module_name(path))
        outside += [
            f"{module.__name__}.{name}"
            for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, UmcInfraError) and value.__module__ == module.__name__
            and module.__name__ != "umc_infra.errors"
        ]  # fmt: skip
    assert outside == []


# -- controls: each rule catches its fault ------------------------------------------------------


def judge_planted(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **others: str) -> list[Site]:
    """Judge module ``planted`` written for the test, beside ``others`` it may import (outside src/: other tests
    scan src/)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    texts = {"planted": code, **others}
    for name, text in texts.items():
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.delitem(sys.modules, name, raising=False)
    modules = {name: (ast.parse(text), vars(importlib.import_module(name))) for name, text in texts.items()}
    return judge(modules["planted"], "planted.py", validation_functions(modules))


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("from umc_infra.errors import UmcInfraError\n\ndef f():\n    raise UmcInfraError('x')\n", "not a leaf"),
        ("from umc_infra.errors import SandboxError\n\ndef f():\n    raise SandboxError('x')\n", "not a leaf"),
        ("def f():\n    raise ValueError('x')\n", "not an error of umc_infra"),
        ("def f():\n    raise RuntimeError('x')\n", "not an error of umc_infra"),
        ("import typer\n\ndef f():\n    raise typer.Exit(3)\n", "not an error of umc_infra"),  # outside cli/
        (
            "from umc_infra.errors import ProcessError\n\ndef made():\n    return ProcessError('x')\n\n"
            "def f():\n    raise made()\n",
            "cannot tell",
        ),
        (
            "from umc_infra.errors import ProcessError\n\ndef made() -> ProcessError:\n    return ProcessError('x')\n\n"
            "def f():\n    raise made()\n",
            "not a leaf",
        ),
        (
            "from umc_infra.errors import ProcessError\n\nclass T:\n    def made(self) -> ProcessError:\n"
            "        return ProcessError('x')\n\n    def f(self):\n        raise self.made()\n",
            "not a leaf",
        ),
        ("class Oops(Exception):\n    pass\n\ndef f():\n    raise Oops()\n", "not an error of umc_infra"),
        ("class _Stop(Exception):\n    pass\n\ndef f():\n    raise _Stop()\n", "not an error of umc_infra"),  # escapes
        (
            "from pydantic import AfterValidator\n\ndef check(v):\n    return v\n\nA = AfterValidator(check)\n\n"
            "def parse(t):\n    raise ValueError('x')\n",
            "not an error of umc_infra",
        ),  # not on a validator's path
    ],
)
def test_a_planted_raise_is_caught(code, says, tmp_path, monkeypatch):
    (site,) = judge_planted(code, tmp_path, monkeypatch)
    assert says in site.why, site


@pytest.mark.parametrize(
    "code",
    [
        "from umc_infra.errors import ToolMissing\n\ndef f():\n    raise ToolMissing('x')\n",
        "from umc_infra.errors import ToolMissing\n\ndef made() -> ToolMissing:\n    return ToolMissing('x')\n\n"
        "def f():\n    raise made()\n",
        "def f():\n    raise KeyboardInterrupt('signal 15')\n",
        "from pydantic import AfterValidator\n\ndef check(v):\n    raise ValueError('x')\n\nA = AfterValidator(check)",
        "from pydantic import BaseModel\n\nclass M(BaseModel):\n    @classmethod\n    def parse(cls, t):\n"
        "        raise ValueError('x')\n",
        "def f(error):\n    raise error\n",
        "class _Stop(Exception):\n    pass\n\ndef f():\n    raise _Stop()\n\ndef g():\n    try:\n        f()\n"
        "    except _Stop:\n        pass\n",
        "from pydantic import AfterValidator\n\ndef parse(t):\n    raise ValueError('x')\n\ndef check(v):\n"
        "    parse(v)\n\nA = AfterValidator(check)\n",
    ],
)
def test_a_lawful_raise_passes(code, tmp_path, monkeypatch):
    assert judge_planted(code, tmp_path, monkeypatch) == []


def test_a_validator_may_call_a_parser_of_another_module(tmp_path, monkeypatch):
    parser = "def parse(t):\n    raise ValueError('x')\n"
    validator = "from pydantic import AfterValidator\n\nfrom planted import parse\n\n"
    validator += "def check(v):\n    return parse(v)\n"
    assert judge_planted(parser, tmp_path, monkeypatch) != []  # control: alone, nothing validates with it
    assert judge_planted(parser, tmp_path, monkeypatch, uses=validator + "\nA = AfterValidator(check)\n") == []
