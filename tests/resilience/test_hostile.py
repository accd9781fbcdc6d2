"""Hostile params: injection strings for HCL, YAML, Jinja and the shell, generated with hypothesis.

Every value is either refused with ParamsError (naming the field), or accepted and passed on verbatim.
Terraform gets it as JSON and Ansible as ``!unsafe`` text, so it is never interpreted. Accepted hostile values
are also provisioned for real: a page title served verbatim, notes that reach the vCenter annotation and the
guest byte for byte; refused names and params create nothing, through the API and the ``umc-infra`` command.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
import urllib.request

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, is_trusted_as_template
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.integration.test_site_rules import annotation
from umc_infra import ParamsError, Settings, destroy, provision, status
from umc_infra.ansible.runner import unsafe_vars_yaml
from umc_infra.blueprint.catalog import Catalog
from umc_infra.params import _CONTROL, DEPLOYMENT, validate

from .conftest import assert_agree, assert_no_secret, run_dirs, scanned_places, umc_infra, vm_names

INJECTIONS = [
    '${file("/etc/passwd")}', "%{ if true }x%{ endif }", "${jsonencode(var.vsphere_password)}",  # HCL
    "!!python/object/apply:os.system ['id']", "&a [*a, *a]", "{x: 1}", "- - -", "? key",  # YAML
    "{{ lookup('pipe', 'id') }}", "{% raw %}{{ 7*7 }}{% endraw %}", "{{ ''.__class__.__mro__ }}",  # Jinja
    "$(id)", "`id`", "; rm -rf /", "| cat /etc/shadow", "&& reboot", "$HOME", "\\$x",  # shell
    "'", '"', "\\", "../../etc/passwd", "%s%n", "\x00", "a\nb", "a\rb", "\u202e", "<script>x</script>",
    # YAML 1.1 would read these as another type or fail on them: a boolean, null, octal and sexagesimal numbers,
    # a date, a float, the value and merge keys
    "true", "no", "Off", "null", "~", "0123", "12:30", "0x1F", "2001-12-14", ".inf", "1_000", "=", "<<",
]  # fmt: skip
CATALOG = Catalog.from_settings(Settings())
BLUEPRINTS = [CATALOG.load(name) for name in CATALOG.names()]


def hostile_value() -> st.SearchStrategy:
    injection = st.sampled_from(INJECTIONS)
    mixed = st.lists(st.one_of(injection, st.text(max_size=6)), min_size=1, max_size=4).map("".join)
    return st.one_of(injection, mixed, st.lists(injection, max_size=3), st.integers(-3, 99), st.booleans())


def strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    return []


@pytest.mark.parametrize("blueprint", BLUEPRINTS, ids=lambda b: b.name)
def test_hostile_params_are_refused_or_passed_on_verbatim(blueprint, tmp_path):
    tried = {"refused": 0, "accepted": 0}
    extra_vars = tmp_path / "vars.yml"
    templar = Templar(loader=DataLoader())

    # Every text param at once set to a word YAML 1.1 reads as a boolean: passed on as that text, never as True
    literal = {name: "true" for name, spec in blueprint.params.items() if spec.type == "string" and not spec.secret}

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @example(literal)
    @given(st.fixed_dictionaries({}, optional={name: hostile_value() for name in blueprint.params}))
    def case(params):
        try:
            resolved = validate(blueprint, params, "res-hostile")
        except ParamsError as refused:
            assert refused.problems and all(p.field.startswith(("params.", "deployment")) for p in refused.problems)
            tried["refused"] += 1
            return
        tried["accepted"] += 1
        values = {k: v.get_secret_value() if hasattr(v, "get_secret_value") else v
                  for k, v in resolved.values.items()}  # fmt: skip
        assert json.loads(json.dumps(values)) == values  # to Terraform: JSON, byte for byte
        extra_vars.write_text(unsafe_vars_yaml(values))
        # loaded as ansible-playbook loads ``--extra-vars @file``: templates in it would be trusted, but for !unsafe
        loaded = DataLoader().load_from_file(str(extra_vars), cache="none", trusted_as_template=True)
        assert loaded == values  # to Ansible: the same values back
        for text in strings_in(loaded):  # never templated by Jinja: a string Ansible would template is not trusted
            assert not is_trusted_as_template(text) or not templar.is_template(text), text

    case()
    assert tried["refused"] > 0


def test_an_accepted_hostile_title_is_served_verbatim(info, site, secrets):
    started = time.time()
    title = "{{ lookup('pipe', 'id') }} ${file(\"/etc/passwd\")} $(id) `id` '\" \\ ; rm -rf / {% raw %} &a *a"
    d = "res-hostile-web"
    result = provision("web-server", {"instances": 1, "site_title": title}, deployment=d, settings=site)
    (host,) = result.hosts
    with urllib.request.urlopen(f"http://{host.ip}/", timeout=10) as response:
        body = response.read().decode()
    assert any(shown in body for shown in (title, html.escape(title), html.escape(title, quote=False)))
    assert "uid=0" not in body and "root:x:0:0" not in body
    assert_agree(info, site, d, vms=1, module="web")
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0, module="web")
    assert_no_secret(secrets, body, directories=scanned_places(site), since=started)


XML_ILLEGAL = "vCenter keeps its notes in XML, which has no \ufffe"
"""Accepted by the params today, but an XML document cannot carry U+FFFE (nor U+FFFF)."""


def notes() -> st.SearchStrategy[str]:
    """Free text as people paste it, and worse: injections, tabs and newlines, any printable unicode."""
    pieces = [i for i in INJECTIONS if not _CONTROL.search(i)] + ["\n", "\t", "ünïcødé 日本語 🚀 «»", "\u2028", " "]
    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8)
    return st.lists(st.one_of(st.sampled_from(pieces), text), min_size=1, max_size=8).map("".join)


def test_hostile_notes_reach_vcenter_and_the_guest_verbatim(sandbox, info, site, secrets):
    """A handful of drawn notes, each an update of the same VM: each reaches the vCenter annotation (Terraform) and
    /etc/umc/notes (Ansible) exactly as given, or is refused with nothing changed."""
    started = time.time()
    d = "res-notes"
    seen = {"current": "set first"}
    (host,) = provision("linux-server", {"instances": 1, "notes": seen["current"]}, deployment=d, settings=site).hosts

    @settings(max_examples=3, phases=[Phase.explicit, Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @example(XML_ILLEGAL)
    @example("")  # notes cleared
    @given(notes())
    def update(text: str) -> None:
        try:
            result = provision("linux-server", {"instances": 1, "notes": text}, deployment=d, settings=site)
        except ParamsError as refused:  # then nothing changed
            assert [p.field for p in refused.problems] == ["params.notes"]
            text = seen["current"]
        else:
            assert result.hosts == (host,) and result.terraform["vm"].add == result.terraform["vm"].remove == 0
            seen["current"] = text
        assert annotation(info, host.name) == (text or " ")  # vSphere keeps "no notes" as one space
        assert (sandbox.guest_root(host.ip) / "etc" / "umc" / "notes").read_bytes() == text.encode()
        assert status(d, settings=site).params["notes"] == text

    update()
    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)
    assert_no_secret(secrets, directories=scanned_places(site), since=started)


def hostile_names() -> st.SearchStrategy[str]:
    """Deployment names with something a name must not hold (the pattern refuses them all)."""
    injection = st.sampled_from(INJECTIONS)
    names = st.one_of(injection, injection.map(lambda i: f"res-{i}"), injection.map(lambda i: f"res-x{i}-1"))
    return names.filter(lambda name: not re.fullmatch(DEPLOYMENT, name))


def test_hostile_names_and_params_are_refused_with_nothing_created(info, site):
    """Through the API (a drawn handful of names) and the ``umc-infra`` command: refused before anything exists.
    No VM, no record, lease, claim or working directory, no private directory of a run."""
    before = vm_names(info, "res-")
    refused: list[str] = []

    @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(hostile_names())
    def refuse(name: str) -> None:
        with pytest.raises(ParamsError) as error:
            provision("linux-server", {"instances": 1}, deployment=name, settings=site)
        assert [p.field for p in error.value.problems] == ["deployment"]
        refused.append(name)

    refuse()
    assert refused
    command = umc_infra(info, site, "provision", "linux-server", "-d", "res-$(id)", "-p", "instances=1", "--output",
                        "json")  # fmt: skip
    assert command.returncode == 2, command.stderr
    assert [p["field"] for p in json.loads(command.stdout)["error"]["problems"]] == ["deployment"]
    params = ["admin_user=root", 'ip_addresses=["../../etc/passwd"]', "instances=${x}", 'notes=${file("x")}\x07']
    flags = [flag for param in params for flag in ("-p", param)]
    command = umc_infra(info, site, "provision", "linux-server", "-d", "res-refused", *flags, "--output", "json")
    assert command.returncode == 2, command.stderr
    fields = sorted(p["field"] for p in json.loads(command.stdout)["error"]["problems"])
    assert fields == ["params.admin_user", "params.instances", "params.ip_addresses.0", "params.notes"]
    assert vm_names(info, "res-") == before
    assert [p for p in site.state_dir.rglob("*") if p.is_file()] == []  # no record, lease, claim, state or plan
    assert run_dirs(os.getpid()) == []
