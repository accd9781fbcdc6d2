"""The error tree: drawn once in errors.py's docstring and true; exit codes declared by each class, shown in docs."""

import re
from pathlib import Path

import pytest
import typer

import umc_infra
from umc_infra import errors
from umc_infra.cli.common import exit_code, guarded, state
from umc_infra.errors import ExitCode, UmcInfraError

DOCS = Path(__file__).parents[2] / "docs" / "cli.md"
_BRANCH = re.compile(r"^(?P<prefix>(?:[│ ]   )*(?:[├└]── )?)(?P<name>[A-Za-z]\w*)(?:\s|$)")


def drawn_tree(docstring: str) -> list[tuple[str, str | None]]:
    """``(class, parent)`` for each line of the tree drawn in a docstring, in the order drawn."""
    lines = docstring.split("::\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    tree: list[tuple[str, str | None]] = []
    path: list[str] = []
    for line in lines:
        match = _BRANCH.match(line.removeprefix("    "))
        assert match, f"not a line of a tree: {line!r}"
        depth = len(match["prefix"]) // 4
        assert depth <= len(path), f"{match['name']} is drawn deeper than under a parent"
        del path[depth:]
        tree.append((match["name"], path[-1] if path else None))
        path.append(match["name"])
    return tree


def real_tree(module: object) -> list[tuple[str, str | None]]:
    """``(class, parent)`` for each error class of a module, in the order defined."""
    classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, UmcInfraError)]
    tree: list[tuple[str, str | None]] = []
    for cls in classes:
        (base,) = cls.__bases__  # one parent each: a tree, not a graph
        tree.append((cls.__name__, None if cls is UmcInfraError else base.__name__))
    return tree


ERRORS = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, UmcInfraError)]
LEAVES = [c for c in ERRORS if not c.__subclasses__()]


def test_the_drawn_tree_is_the_real_one():
    assert errors.__doc__
    assert drawn_tree(errors.__doc__) == real_tree(errors)


def test_a_tree_drawn_wrong_is_caught():
    """Control: a class drawn under the wrong parent, or out of order, or missing, differs from the real tree."""
    doc = errors.__doc__
    assert doc
    moved = doc.replace("    │   ├── ProcessFailed ", "    ├── ProcessFailed     ")
    swapped = doc.replace("├── ParamsError ", "├── PARAMS ").replace("├── SettingsError ", "├── ParamsError ")
    swapped = swapped.replace("├── PARAMS ", "├── SettingsError ")
    missing = re.sub(r"\n *├── ToolTooOld [^\n]*", "", doc)
    for wrong in (moved, swapped, missing):
        assert wrong != doc
        assert drawn_tree(wrong) != real_tree(errors)


def test_every_error_class_is_exported_from_the_facade():
    for cls in [*ERRORS, ExitCode, errors.BlueprintProblem, errors.ParamProblem]:
        assert cls.__name__ in umc_infra.__all__, cls.__name__
        assert getattr(umc_infra, cls.__name__) is cls, cls.__name__


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_declares_its_exit_code(cls):
    assert "exit_code" in vars(cls), (
        f"{cls.__name__} does not declare exit_code (class {cls.__name__}(..., exit_code=))"
    )
    assert isinstance(cls.exit_code, ExitCode)
    # drift and an unhealthy sandbox are results a command reports, not errors; 0 is success
    assert cls.exit_code not in (ExitCode.OK, ExitCode.DRIFT, ExitCode.UNHEALTHY)


class _Planted(UmcInfraError, exit_code=42):  # not a documented code: only the class can have told the CLI
    """An error planted by the test."""


@pytest.mark.parametrize("cls", [*LEAVES, _Planted], ids=lambda c: c.__name__)
def test_the_command_line_exits_with_the_errors_own_code(cls, monkeypatch, capsys):
    monkeypatch.setattr(state, "emitted", False)
    error = cls.__new__(cls)  # the code comes from the class: no need to build each one's arguments
    UmcInfraError.__init__(error, "planted")

    def action() -> None:
        raise error

    with pytest.raises(typer.Exit) as exited:
        guarded(action, "text")
    assert exited.value.exit_code == cls.exit_code == exit_code(error)
    capsys.readouterr()


def test_an_interrupt_exits_130_and_anything_else_1():
    assert exit_code(KeyboardInterrupt()) == ExitCode.INTERRUPTED == 130
    assert exit_code(RuntimeError("x")) == ExitCode.ERROR == 1


def exit_table(markdown: str) -> dict[int, str]:
    """code -> meaning, from the table under ``## Exit codes``."""
    section = markdown.split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"^\| *\d+ *\|", line)]
    table = {int(row.split("|")[1]): row.split("|", 2)[2] for row in rows}
    assert len(table) == len(rows), "a code is listed twice"
    return table


def named_errors(meaning: str) -> set[str]:
    return {name for name in re.findall(r"`(\w+)`", meaning) if name in vars(errors)}


def table_problems(markdown: str) -> list[str]:
    """How the docs' exit-code table differs from ExitCode and the classes' codes; empty if it does not."""
    table = exit_table(markdown)
    problems = [f"code {code} documented: {code in table}, real: {code in set(ExitCode)}"
                for code in set(table) ^ {int(c) for c in ExitCode}]  # fmt: skip
    for code, meaning in table.items():
        named = named_errors(meaning)
        problems += [f"{name} is shown under {code}" for name in named if getattr(errors, name).exit_code != code]
        if code != ExitCode.ERROR:  # the rest: "any other error"
            real = {c.__name__ for c in LEAVES if c.exit_code == code}
            problems += [f"{name} exits {code} but is not shown there" for name in sorted(real - named)]
    return problems


def test_the_documented_exit_codes_are_the_real_ones():
    assert table_problems(DOCS.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("| 8 |", "| 88 |"),  # a code that does not exist (and 8 missing)
        ("`DeploymentLocked`", "`SecretError`"),  # an error in the wrong row, and one missing from its row
        (", `PlanChanged`", ""),  # an error missing from its row
    ],
)
def test_a_wrong_exit_code_table_is_caught(old, new):
    """Control: each planted fault in the docs' table is found."""
    text = DOCS.read_text()
    assert old in text
    assert table_problems(text.replace(old, new)) != []


def test_a_class_without_a_declared_exit_code_is_caught():
    """Control: a class that does not declare its code inherits it, and the declaration check sees that."""

    class Undeclared(errors.PlanChanged):
        """Declares nothing."""

    assert Undeclared.exit_code == ExitCode.REFUSED and "exit_code" not in vars(Undeclared)
    with pytest.raises(AssertionError, match="does not declare exit_code"):
        test_every_error_class_declares_its_exit_code(Undeclared)
