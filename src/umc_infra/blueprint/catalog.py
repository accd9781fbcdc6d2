"""Where blueprints come from, and resolving one (its parent merged in by :mod:`.extends`, then checked).

Sources, searched in this order:

1. the built-in ``blueprints/`` (or ``UMC_CONTENT_DIR``);
2. each directory in ``UMC_BLUEPRINT_PATH`` (``:``-separated): ``<dir>/blueprints/*.yaml`` if there is
   such a folder, else ``<dir>/*.yaml``; its ``modules/`` and ``playbooks/`` beside them;
3. installed packages with an entry point in group ``umc_infra.blueprints``. The entry point names a
   package (or a callable returning a directory) whose folder holds ``blueprints/``, ``modules/`` and
   ``playbooks/``.

A blueprint finds modules and playbooks in its own source first, then in its parent's, then in the
built-in content. Two sources defining one name is an error naming both, unless exactly one of them
says ``override: true``. A blueprint that would replace a *built-in* one that way needs consent as well:
its name in ``UMC_BLUEPRINT_OVERRIDES`` (``settings.blueprint_overrides``); without it, loading it is an
error naming both files and the setting. A directory named twice (``UMC_BLUEPRINT_PATH`` listing it
again, or the built-in content) is one source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from umc_infra.blueprint.checks import check
from umc_infra.blueprint.content import Content
from umc_infra.blueprint.extends import merge
from umc_infra.blueprint.model import BLUEPRINT_NAME, Blueprint
from umc_infra.errors import BlueprintError, BlueprintNotFound, BlueprintProblem
from umc_infra.params import default_problems
from umc_infra.settings import Settings

ENTRY_POINT_GROUP = "umc_infra.blueprints"


class Source(BaseModel):
    """A place blueprints come from."""

    model_config = ConfigDict(frozen=True)

    label: str
    """How errors name it: ``built-in``, ``UMC_BLUEPRINT_PATH /srv/bp``, ``package umc-lab (entry point lab)``."""
    root: Path
    """Its ``modules/`` and ``playbooks/`` are here."""
    blueprints: Path
    builtin: bool = False
    """The content shipped with umc_infra (or ``UMC_CONTENT_DIR``): replacing its blueprints needs consent."""


def directory_source(directory: Path, label: str) -> Source:
    """A directory of blueprints: ``<dir>/blueprints/*.yaml`` if there is such a folder, else ``<dir>/*.yaml``."""
    nested = directory / "blueprints"
    return Source(label=label, root=directory, blueprints=nested if nested.is_dir() else directory)


def sources(settings: Settings) -> list[Source]:
    """Every blueprint source, in search order.

    Raises:
        BlueprintError: An entry point does not load or name a directory.
    """
    builtin = Content.locate(settings.content_dir)
    found = [Source(label="built-in", root=builtin.root, blueprints=builtin.blueprints, builtin=True)]
    found += [directory_source(d, f"UMC_BLUEPRINT_PATH {d}") for d in settings.blueprint_path]
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        label = f"package {ep.dist.name if ep.dist else '?'} (entry point {ep.name})"
        try:
            target = ep.load()
            root = Path(str(target.__file__)).parent if isinstance(target, ModuleType) else Path(target())
        except Exception as exc:  # a third-party package's import can raise anything
            raise BlueprintError(f"{label}: does not load ({type(exc).__name__}: {exc})") from None
        found.append(Source(label=label, root=root, blueprints=root / "blueprints"))
    return found


class Catalog:
    """The blueprints of some sources: names, where each is defined, and resolved, checked blueprints.

    Args:
        found: The sources, in search order; a later one whose blueprint directory an earlier one has is dropped.
        overrides: Names of built-in blueprints another source may replace with ``override: true``.
    """

    def __init__(self, found: Sequence[Source], *, overrides: Iterable[str] = ()) -> None:
        self.sources = tuple(_distinct(found))
        self.overrides = frozenset(overrides)
        self._files: dict[str, list[tuple[Source, Path]]] = {}
        for source in self.sources:
            for path in sorted(source.blueprints.glob("*.yaml")):
                self._files.setdefault(path.stem, []).append((source, path))

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """The catalog of every source the settings name, with the built-in blueprints they let be replaced."""
        return cls(sources(settings), overrides=settings.blueprint_overrides)

    def source_of(self, directory: Path) -> Source | None:
        """The source whose blueprints are in ``directory`` (symlinks resolved), if the catalog has one."""
        return next((s for s in self.sources if _same_dir(s.blueprints, directory)), None)

    def names(self) -> list[str]:
        """Every blueprint name (one per name, clashes included: loading one says what clashes)."""
        return sorted(n for n in self._files if re.fullmatch(BLUEPRINT_NAME, n))

    def where(self, name: str) -> tuple[Source, Path]:
        """The source and file that define ``name``.

        Raises:
            BlueprintNotFound: No source defines it (lists the names there are).
            BlueprintError: Two sources define it and not exactly one says ``override: true``; or the one that
                does would replace a built-in blueprint whose name is not in ``UMC_BLUEPRINT_OVERRIDES``.
        """
        if not isinstance(name, str) or not re.fullmatch(BLUEPRINT_NAME, name) or name not in self._files:
            raise BlueprintNotFound(
                f"no blueprint named {name!r}; available: {', '.join(self.names()) or 'none'}", step="blueprint.load"
            )
        defined = self._files[name]
        if len(defined) == 1:
            return defined[0]
        overriding = [(s, p) for s, p in defined if _says_override(p)]
        if len(overriding) == 1:
            refused = self.override_refused(name, *overriding[0])
            if refused is not None:
                raise BlueprintError(refused, step="blueprint.load")
            return overriding[0]
        both = " and ".join(f"{s.label} ({p})" for s, p in defined)
        raise BlueprintError(
            f"blueprint {name!r} is defined by {both}; rename one, or set 'override: true' in the one that should win",
            step="blueprint.load",
        )

    def override_refused(self, name: str, source: Source, path: Path) -> str | None:
        """Why the blueprint at ``path`` may not replace the built-in ``name``; None if it may, or does not try.

        A blueprint from ``UMC_BLUEPRINT_PATH`` or a package that says ``override: true`` replaces a built-in
        one only with consent: the name in ``UMC_BLUEPRINT_OVERRIDES``. Overrides between other sources
        need none.
        """
        if source.builtin or name in self.overrides or not _says_override(path):
            return None
        builtin = next((p for s, p in self._files.get(name, []) if s.builtin), None)
        if builtin is None:
            return None
        return (
            f"blueprint {name!r} from {source.label} ({path}) says 'override: true' and would replace the built-in "
            f"one ({builtin}); replacing a built-in blueprint needs consent: add {name!r} to UMC_BLUEPRINT_OVERRIDES "
            "(comma-separated names), or rename it"
        )

    def load(self, name: str) -> Blueprint:
        """The blueprint, resolved (``extends`` merged) and checked.

        Raises:
            BlueprintNotFound: No blueprint of that name.
            BlueprintError: Every problem found, each with its file and line where known.
        """
        blueprint, problems = self.resolve(name)
        if problems or blueprint is None:
            _, path = self.where(name)
            raise BlueprintError(f"blueprint {name!r} ({path}) is invalid:", problems=problems)
        return blueprint

    def resolve(self, name: str, *, chain: tuple[str, ...] = ()) -> tuple[Blueprint | None, list[BlueprintProblem]]:
        """The resolved blueprint (None if it cannot be built) and every problem found in it."""
        source, path = self.where(name)
        return self.resolve_file(path, source, chain=chain, expected_name=name)

    def resolve_file(
        self, path: Path, source: Source, *, chain: tuple[str, ...] = (), expected_name: str | None = None
    ) -> tuple[Blueprint | None, list[BlueprintProblem]]:
        """Resolve a blueprint file, which need not be in any source (``blueprints validate PATH``)."""
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            return None, [BlueprintProblem(where="", message=f"cannot be read ({type(exc).__name__})", file=str(path))]
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            return None, [BlueprintProblem(where="", message=f"not valid YAML: {exc}", file=str(path), line=line)]
        if not isinstance(raw, dict):
            return None, [BlueprintProblem(where="", message="is not a YAML mapping", file=str(path), line=1)]
        name = expected_name or str(raw.get("name", path.stem))
        files = [(path, text)]
        problems: list[BlueprintProblem] = []
        roots = [source.root]
        parent_name = raw.get("extends")
        if parent_name is not None:
            parent, parent_problems = self._parent(str(parent_name), (*chain, name))
            if parent is None:
                return None, [_at(p, files) for p in parent_problems]
            raw, narrowing = merge(parent, raw)
            problems += narrowing
            roots += parent.roots
            if parent.source is not None:
                files.append((parent.source, parent.source.read_text()))
        roots.append(self.sources[0].root if self.sources else source.root)
        try:
            blueprint = Blueprint.model_validate({**raw, "source": path, "roots": tuple(dict.fromkeys(roots))})
        except ValidationError as exc:
            problems += [
                BlueprintProblem(where=_dotted(e["loc"]), message=e["msg"].removeprefix("Value error, "))
                for e in exc.errors(include_url=False, include_input=False)
            ]
            return None, [_at(p, files) for p in problems]
        if expected_name is not None and blueprint.name != expected_name:
            problems.append(BlueprintProblem(where="name", message=f"is {blueprint.name!r}; the file name says "
                                             f"{expected_name!r}"))  # fmt: skip
        problems += check(blueprint) + default_problems(blueprint)
        return blueprint, [_at(p, files) for p in problems]

    def _parent(self, parent: str, chain: tuple[str, ...]) -> tuple[Blueprint | None, list[BlueprintProblem]]:
        if parent in chain:
            cycle = " -> ".join((*chain, parent))
            return None, [BlueprintProblem(where="extends", message=f"cyclic extends: {cycle}")]
        try:
            blueprint, problems = self.resolve(parent, chain=chain)
        except (BlueprintNotFound, BlueprintError) as exc:
            return None, [BlueprintProblem(where="extends", message=str(exc).removeprefix("[blueprint.load] "))]
        cyclic = [p for p in problems if p.where == "extends" and p.message.startswith("cyclic extends")]
        if cyclic:
            return None, [BlueprintProblem(where="extends", message=cyclic[0].message)]
        if problems or blueprint is None:
            return None, [BlueprintProblem(where="extends", message=f"parent {parent!r} is invalid: "
                                           + "; ".join(str(p) for p in problems))]  # fmt: skip
        return blueprint, []


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # a symlink loop: not the same as anything
        return False


def _distinct(found: Sequence[Source]) -> list[Source]:
    """The sources without those whose blueprint directory an earlier one already has (it would clash with itself)."""
    kept: list[Source] = []
    for source in found:
        if not any(_same_dir(source.blueprints, k.blueprints) for k in kept):
            kept.append(source)
    return kept


def _says_override(path: Path) -> bool:
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):  # loading it reports the problem
        return False
    return isinstance(raw, dict) and raw.get("override") is True


# -- where a problem is in the YAML ---------------------------------------------------------------


def _dotted(loc: Sequence[int | str]) -> str:
    """A validation error's place as the blueprint names it: ``modules.web.inputs.cpu``, ``playbooks[0].vars``.

    The form a value took (``<reference>``, ``<literal>``, ``<format>``: tags of a union) is not part of it.
    """
    text = ""
    for part in (p for p in loc if not (isinstance(p, str) and p.startswith("<"))):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _path(where: str) -> Iterator[str | int]:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", where):
        yield int(part[1:-1]) if part.startswith("[") else part


def line_of(text: str, where: str) -> tuple[int, bool] | None:
    """The 1-based line of ``where`` in a YAML text (or its deepest part there), and whether all of it was found."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    line, complete = node.start_mark.line + 1, True
    for part in _path(where):
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            key = next((k for k, _ in node.value if k.value == part), None)
            if key is not None:
                line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            complete = False
            break
        node = child
    return line, complete


def _at(problem: BlueprintProblem, files: list[tuple[Path, str]]) -> BlueprintProblem:
    """The problem with the file and line it is at: the first file that has all of its path, else the first."""
    if problem.file is not None:
        return problem
    located = [(path, line_of(text, problem.where)) for path, text in files]
    for path, found in located:
        if found is not None and found[1]:
            return problem.model_copy(update={"file": str(path), "line": found[0]})
    path, found = located[0]
    return problem.model_copy(update={"file": str(path), "line": found[0] if found else None})
