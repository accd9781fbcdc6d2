"""Values reach Ansible as unsafe text; the inventory carries no secrets."""

import yaml
from pydantic import SecretStr

from umc_infra.ansible.inventory import build
from umc_infra.ansible.runner import unsafe_vars_yaml
from umc_infra.blueprint.model import Blueprint


class _Unsafe(str):
    pass


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!unsafe", lambda loader, node: _Unsafe(loader.construct_scalar(node)))


def test_every_string_at_any_depth_is_unsafe():
    text = unsafe_vars_yaml({
        "title": "{{ lookup('pipe', 'id') }}",
        "hosts": ["127.0.1.10", "{% raw %}"],
        "nested": {"k": "${x}"},
        "port": 80,
        "on": True,
        "password": SecretStr("p'a\"s$s"),
    })  # fmt: skip
    data = yaml.load(text, Loader=_Loader)
    assert data["title"] == "{{ lookup('pipe', 'id') }}" and isinstance(data["title"], _Unsafe)
    assert all(isinstance(h, _Unsafe) for h in data["hosts"])
    assert isinstance(data["nested"]["k"], _Unsafe)
    assert data["port"] == 80 and data["on"] is True
    assert data["password"] == "p'a\"s$s" and isinstance(data["password"], _Unsafe)


BLUEPRINT = Blueprint.model_validate({
    "name": "demo", "version": "1.0.0", "description": "d",
    "modules": {"db": {"source": "x"}, "web": {"source": "x"}},
    "hosts": [{"module": "db", "groups": ["db"]}, {"module": "web", "groups": ["web", "linux"]}],
})  # fmt: skip


def test_inventory_from_outputs():
    inventory = build(BLUEPRINT, {
        "db": {"names": ["x-db-1"], "ips": ["127.0.1.10"]},
        "web": {"names": ["x-web-1", "x-web-2"], "ips": ["127.0.1.11", "127.0.1.12"]},
    })  # fmt: skip
    assert [h.name for h in inventory.in_group("web")] == ["x-web-1", "x-web-2"]
    assert [h.ip for h in inventory.in_group("all")] == ["127.0.1.10", "127.0.1.11", "127.0.1.12"]
    doc = inventory.to_ansible(user="root", port=22, python="/usr/bin/python3")
    assert doc["all"]["hosts"]["x-db-1"]["ansible_host"] == "127.0.1.10"
    assert set(doc["all"]["children"]) == {"db", "web", "linux"}


def test_inventory_refuses_bad_outputs():
    import pytest

    from umc_infra import InventoryError
    from umc_infra.cli.common import exit_code

    for outputs, message in [
        ({"db": {"names": ["a"], "ips": []}, "web": {"names": [], "ips": []}}, "same length"),
        ({"db": {"names": ["a;b"], "ips": ["127.0.1.1"]}, "web": {"names": [], "ips": []}}, "invalid host name"),
        ({"db": {"names": ["a"], "ips": [""]}, "web": {"names": [], "ips": []}}, "no usable IP"),
    ]:
        with pytest.raises(InventoryError, match=message) as refused:
            build(BLUEPRINT, outputs)
        assert "exist" in str(refused.value)  # found after the apply: the VMs are there (not "nothing created")
        assert exit_code(refused.value) == 1  # not the bad-input code 2, which says nothing was created


def test_ansible_loads_every_value_back_as_it_was_empty_strings_included(tmp_path):
    """Loaded the way ansible-playbook loads ``--extra-vars @file``: ``!unsafe ""`` alone would come back None."""
    from ansible.parsing.dataloader import DataLoader

    values = {"notes": "", "title": "{{ x }}", "items": ["", "a"], "nested": {"empty": ""}, "n": 0}
    path = tmp_path / "vars.yml"
    path.write_text(unsafe_vars_yaml(values))
    assert DataLoader().load_from_file(str(path), cache="none", trusted_as_template=True) == values
