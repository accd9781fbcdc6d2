"""``blueprints validate`` and where blueprints come from: a search-path directory, overrides of built-in ones."""

import copy
import shutil

import yaml

from tests.unit.core.test_blueprint import BASE
from tests.unit.core.test_catalog import content_dir
from umc_infra import Settings
from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.validate import validate

CHILD = {"name": "child", "version": "1.0.0", "description": "c", "extends": "demo"}


def check(settings: Settings, path=None):
    return validate(Catalog.from_settings(settings), settings, path=path, tools=False)


def ours(report) -> list:
    """The problems of these tests' blueprints (the installed package's lab-web misses its parent under a
    test's UMC_CONTENT_DIR)."""
    return [p for p in report.problems if "umc_lab_blueprints" not in str(p.file)]


def test_a_directory_on_the_search_path_is_not_its_own_rival(tmp_path):
    """`validate DIR` with DIR on UMC_BLUEPRINT_PATH: one source, so `child` finds its parent `demo` once."""
    site = content_dir(tmp_path / "site", copy.deepcopy(BASE), CHILD)
    settings = Settings(blueprint_path=[site])
    for given in (site, site / "blueprints", site / "blueprints" / "child.yaml"):
        report = check(settings, given)
        assert report.problems == (), [str(p) for p in report.problems]
    # The control: the same files in a second directory are a real second source, and the clash shows.
    twin = tmp_path / "twin"
    shutil.copytree(site, twin)
    clash = check(settings, twin)
    assert any("is defined by" in p.message and "and path" in p.message for p in clash.problems), clash.problems


def test_validate_reports_an_override_of_a_built_in_blueprint_without_consent(tmp_path):
    builtin = content_dir(tmp_path / "builtin", copy.deepcopy(BASE))
    site = content_dir(tmp_path / "site", copy.deepcopy(BASE) | {"override": True})
    refused = check(Settings(content_dir=builtin, blueprint_path=[site]))
    (problem,) = ours(refused)
    assert problem.where == "demo" and "UMC_BLUEPRINT_OVERRIDES" in problem.message
    allowed = check(Settings(content_dir=builtin, blueprint_path=[site], blueprint_overrides=["demo"]))
    assert ours(allowed) == [] and "demo" in allowed.blueprints


def test_validating_a_directory_reports_the_override_it_would_make(tmp_path):
    """Before the directory is published on the search path: the file and line of its ``override: true``."""
    builtin = content_dir(tmp_path / "builtin", copy.deepcopy(BASE))
    site = content_dir(tmp_path / "site", copy.deepcopy(BASE) | {"override": True})
    demo = site / "blueprints" / "demo.yaml"
    line = next(i for i, text in enumerate(demo.read_text().splitlines(), 1) if text.startswith("override:"))
    (problem,) = check(Settings(content_dir=builtin), site).problems
    assert (problem.where, problem.file, problem.line) == ("override", str(demo), line)
    assert f"would replace the built-in one ({builtin / 'blueprints' / 'demo.yaml'})" in problem.message
    assert check(Settings(content_dir=builtin, blueprint_overrides=["demo"]), site).problems == ()
    demo.write_text(yaml.safe_dump(copy.deepcopy(BASE) | {"name": "demo"}))  # no override: nothing to consent to
    assert check(Settings(content_dir=builtin), site).problems == ()
