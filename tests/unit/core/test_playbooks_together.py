"""Several playbooks in one ``ansible-playbook`` run (a blueprint's ``ansible.one_run``), with the real Ansible.

The plays connect locally (``connection: local``) and run only action plugins, so nothing is reached over SSH;
everything else is what a run on VMs does: ansible-runner, the launcher, the private dir, the event stream.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from umc_infra import PlaybookError, Settings, TaskResult
from umc_infra.ansible import runner as _runner
from umc_infra.ansible.inventory import Host, Inventory
from umc_infra.ansible.runner import Ansible, Play
from umc_infra.process import Redactor

BASE = """
- name: base
  hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: fail where asked
      ansible.builtin.fail: {msg: "base broke on {{ inventory_hostname }}"}
      when: inventory_hostname in (fail_on | default([]))
    - name: base sees its var
      ansible.builtin.debug: {msg: "base {{ umc_base_var }}"}
      changed_when: true
"""
WEB = """
- name: web
  hosts: web
  connection: local
  gather_facts: false
  tasks:
    - name: web sees both vars
      ansible.builtin.debug: {msg: "web {{ umc_web_var }} {{ umc_base_var }}"}
"""
INVENTORY = Inventory(hosts=(Host(name="h-1", ip="127.0.1.241", groups=("app",), module="vm"),
                             Host(name="h-2", ip="127.0.1.242", groups=("web",), module="vm")))  # fmt: skip
KEY = SecretStr("-----BEGIN OPENSSH PRIVATE KEY-----\nkey-canary-7c2d\n-----END OPENSSH PRIVATE KEY-----")


def run_together(tmp_path: Path, events: list, **base_vars: object) -> dict[str, _runner.PlaybookResult]:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir(exist_ok=True)
    (playbooks / "base.yml").write_text(BASE)
    (playbooks / "web.yml").write_text(WEB)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    ansible = Ansible(Settings(), lambda name: playbooks / f"{name}.yml", on_event=events.append,
                      redactor=Redactor([KEY]), deployment="together", private_dir=run_dir)  # fmt: skip
    plays = [Play(playbook="base", hosts="all", variables={"umc_base_var": "b-1", **base_vars}),
             Play(playbook="web", hosts="web", variables={"umc_web_var": "w-1"})]  # fmt: skip
    with ansible:
        return ansible.run_together(plays, inventory=INVENTORY, user="root", ssh_key=KEY)


def test_playbooks_run_together_each_with_its_own_results(tmp_path):
    events: list = []
    played = run_together(tmp_path, events)
    assert set(played) == {"base", "web"}
    assert {h: (s.ok, s.changed) for h, s in played["base"].hosts.items()} == {"h-1": (1, 1), "h-2": (1, 1)}
    assert {h: (s.ok, s.changed) for h, s in played["web"].hosts.items()} == {"h-2": (1, 0)}
    assert sorted(played["base"].changed_tasks) == [("h-1", "base sees its var"), ("h-2", "base sees its var")]
    ran = {(e.playbook, e.host, e.task) for e in events if isinstance(e, TaskResult) and e.status != "started"}
    assert ("web", "h-2", "web sees both vars") in ran and not any(p == "web" and h == "h-1" for p, h, _ in ran)
    assert any("web w-1 b-1" in getattr(e, "line", "") for e in events)  # every play sees every var
    assert played["base"].seconds > 0 and played["web"].seconds > 0


def test_no_playbook_runs_after_one_that_failed_on_any_host(tmp_path):
    events: list = []
    with pytest.raises(PlaybookError) as failed:
        run_together(tmp_path, events, fail_on=["h-1"])
    assert (failed.value.playbook, failed.value.step) == ("base", "ansible.base")
    assert [(h, t) for h, t, _ in failed.value.failures] == [("h-1", "fail where asked")]  # not the gate's
    ran = [(e.playbook, e.host, e.task) for e in events if isinstance(e, TaskResult)]
    assert ("base", "h-2", "base sees its var") in ran  # h-2 passed base, yet web never ran
    assert not [r for r in ran if r[0] == "web" or r[2] == "web sees both vars"]
    assert not any("earlier playbook failed" in getattr(e, "line", "") for e in events)  # the gate stays quiet


def test_vars_given_two_values_are_refused_before_anything_runs(tmp_path):
    events: list = []
    with pytest.raises(PlaybookError, match="umc_web_var"):
        run_together(tmp_path, events, umc_web_var="other")
    assert events == []
