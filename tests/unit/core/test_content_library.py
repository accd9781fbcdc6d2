"""UMC_VSPHERE_CONTENT_LIBRARY: a library by name, whose items the template settings then name."""

import pytest

from umc_infra import load_settings
from umc_infra.errors import SettingsError
from umc_infra.settings import SITE_FIELDS

HOSTILE = ['a"b', "${var.vsphere_password}", "lib\nx", "../lib", "a/../b", "/lib", " lib", "lib%{x}"]


def test_the_library_is_unset_by_default_and_a_site_setting():
    assert load_settings().vsphere_content_library == ""
    assert SITE_FIELDS["content_library"] == "vsphere_content_library"
    # Without a library the templates stay inventory paths.
    assert load_settings({"vsphere_template": "templates/umc-linux"}).vsphere_template == "templates/umc-linux"


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_library_names_are_refused_naming_the_setting(monkeypatch, value):
    monkeypatch.setenv("UMC_VSPHERE_CONTENT_LIBRARY", value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert [p.field for p in refused.value.problems] == ["UMC_VSPHERE_CONTENT_LIBRARY"]


@pytest.mark.parametrize("value", [*HOSTILE, "templates/umc-linux"])
@pytest.mark.parametrize("variable", ["UMC_VSPHERE_TEMPLATE", "UMC_VSPHERE_WINDOWS_TEMPLATE"])
def test_with_a_library_the_templates_are_item_names_and_anything_else_is_refused_naming_it(
    monkeypatch, variable, value
):
    monkeypatch.setenv("UMC_VSPHERE_CONTENT_LIBRARY", "UMC Templates")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert [p.field for p in refused.value.problems] == [variable]


def test_with_a_library_an_item_name_is_taken(monkeypatch):
    monkeypatch.setenv("UMC_VSPHERE_CONTENT_LIBRARY", "UMC Templates")
    monkeypatch.setenv("UMC_VSPHERE_TEMPLATE", "umc-linux 2026.11")
    settings = load_settings()
    assert (settings.vsphere_content_library, settings.vsphere_template) == ("UMC Templates", "umc-linux 2026.11")
