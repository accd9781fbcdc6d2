"""Hostile params: injection strings for HCL, YAML, Jinja and the shell, generated with hypothesis.

Every value is either refused with ParamsError (naming the field), or accepted and passed on verbatim.
Terraform gets it as JSON and Ansible as ``!unsafe`` text, so it is never interpreted. One accepted
hostile value is also provisioned for real and served verbatim.
"""

from __future__ import annotations

import html
import json
import urllib.request

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import is_trusted_as_template
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umc_infra import ParamsError, Settings, destroy, provision
from umc_infra.ansible.runner import unsafe_vars_yaml
from umc_infra.blueprint.catalog import Catalog
from umc_infra.params import validate

INJECTIONS = [
    '${file("/etc/passwd")}', "%{ if true }x%{ endif }", "${jsonencode(var.vsphere_password)}",  # HCL
    "!!python/object/apply:os.system ['id']", "&a [*a, *a]", "{x: 1}", "- - -", "? key",  # YAML
    "{{ lookup('pipe', 'id') }}", "{% raw %}{{ 7*7 }}{% endraw %}", "{{ ''.__class__.__mro__ }}",  # Jinja
    "$(id)", "`id`", "; rm -rf /", "| cat /etc/shadow", "&& reboot", "$HOME", "\\$x",  # shell
    "'", '"', "\\", "../../etc/passwd", "%s%n", "\x00", "a\nb", "a\rb", "\u202e", "<script>x</script>",
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

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
        for text in strings_in(loaded):
            assert not is_trusted_as_template(text)  # never templated by Jinja

    case()
    assert tried["refused"] > 0


def test_an_accepted_hostile_title_is_served_verbatim(info, site):
    title = "{{ lookup('pipe', 'id') }} ${file(\"/etc/passwd\")} $(id) `id` '\" \\ ; rm -rf / {% raw %} &a *a"
    d = "res-hostile-web"
    result = provision("web-server", {"instances": 1, "site_title": title}, deployment=d, settings=site)
    (host,) = result.hosts
    with urllib.request.urlopen(f"http://{host.ip}/", timeout=10) as response:
        body = response.read().decode()
    assert any(shown in body for shown in (title, html.escape(title), html.escape(title, quote=False)))
    assert "uid=0" not in body and "root:x:0:0" not in body
    destroy(d, settings=site)
