"""The roles' OS families: each family defines the same settings, and a host gets its own family's.

The Debian path runs on the sandbox's guests (tests/integration). No RHEL machine is here, so the RHEL path is
checked by ``ansible-playbook --syntax-check`` (``blueprints validate``) and by these tests: the per-family
vars files agree on their keys, every family setting a role uses is defined (and every one defined is used),
the values are the packages, services and paths each distribution has, and the roles' own selection tasks,
run by ``ansible-playbook`` in check mode against hosts whose facts say RHEL, Rocky, AlmaLinux, Debian,
Ubuntu or SUSE, load the family's files (or refuse the host).
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from umc_infra.ansible.runner import ansible_playbook, base_env

PLAYBOOKS = Path(__file__).parents[3] / "playbooks"
ROLES = PLAYBOOKS / "roles"
CONFIGURING = ("base", "web", "db")
FAMILY_ROLES = ("os_family", *CONFIGURING)
SUPPORTED = yaml.safe_load((ROLES / "os_family" / "defaults" / "main.yml").read_text())["os_family_supported"]


def family_vars(role: str, family: str) -> dict:
    return yaml.safe_load((ROLES / role / "vars" / f"{family}.yml").read_text())


def merged(family: str) -> dict:
    return {k: v for role in FAMILY_ROLES for k, v in family_vars(role, family).items()}


def role_text(role: str) -> str:
    """Everything in a role that can use a variable: tasks, handlers, templates."""
    files = [p for d in ("tasks", "handlers", "templates") for p in sorted((ROLES / role / d).glob("*")) if p.is_file()]
    return "\n".join(p.read_text() for p in files)


def test_every_role_has_a_vars_file_for_each_supported_family_and_depends_on_the_family_role():
    assert sorted(SUPPORTED) == ["Debian", "RedHat"]
    for role in FAMILY_ROLES:
        assert sorted(p.stem for p in (ROLES / role / "vars").glob("*.yml")) == sorted(SUPPORTED), role
    for role in CONFIGURING:
        meta = yaml.safe_load((ROLES / role / "meta" / "main.yml").read_text())
        assert [d["role"] for d in meta["dependencies"]] == ["os_family"], role


@pytest.mark.parametrize("role", FAMILY_ROLES)
def test_each_family_defines_the_same_settings_under_the_roles_prefix(role):
    keys = {family: set(family_vars(role, family)) for family in SUPPORTED}
    first = keys[SUPPORTED[0]]
    for family, names in keys.items():
        assert names == first, f"{role}: {family} differs by {sorted(names ^ first)}"
    assert first and all(k.startswith(f"{role}_") for k in first), sorted(first)


def defined_elsewhere(role: str) -> set[str]:
    """Names a role sets itself: defaults, registered results, set_fact."""
    names = set(yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {})
    for path in (ROLES / role / "tasks").glob("*.yml"):
        for task in yaml.safe_load(path.read_text()) or []:
            names.update([task["register"]] if "register" in task else [])
            names.update(task.get("ansible.builtin.set_fact", {}))
    return names


@pytest.mark.parametrize("role", FAMILY_ROLES)
def test_every_family_setting_a_role_uses_is_defined_and_every_one_defined_is_used(role):
    # os_family's settings are used by the roles that depend on it.
    text = "\n".join(role_text(r) for r in (CONFIGURING if role == "os_family" else (role,)))
    used = set(re.findall(rf"\b{role}_[a-z0-9_]+\b", text)) - defined_elsewhere(role)
    family = set(family_vars(role, "RedHat"))
    assert used - family == set(), "used but in no family's vars"
    assert family - used == set(), "defined per family but never used"


def test_the_values_are_each_distributions_packages_services_and_paths():
    debian, redhat = merged("Debian"), merged("RedHat")
    expected = {  # name: (Debian, RedHat)
        "os_family_package_manager": ("apt", "dnf"),
        "os_family_service_manager": ("service", "systemd"),  # the sandbox guests have no systemd
        "base_chrony_service": ("chrony", "chronyd"),
        "base_chrony_conf": ("/etc/chrony/chrony.conf", "/etc/chrony.conf"),
        "base_sshd_service": ("ssh", "sshd"),
        "web_nginx_service": ("nginx", "nginx"),
        "web_db_client_packages": (["postgresql-client"], ["postgresql"]),
        "web_nginx_site": ("/etc/nginx/sites-available/umc.conf", "/etc/nginx/conf.d/umc.conf"),
        "db_packages": (["postgresql-15"], ["postgresql-server"]),
        "db_pg_service": ("postgresql", "postgresql"),
        "db_pg_conf_dir": ("/etc/postgresql/15/main", "/var/lib/pgsql/data"),
        "db_pg_home": ("/var/lib/postgresql", "/var/lib/pgsql"),
        "db_pg_setup_cluster": (False, True),  # RHEL's package creates no cluster: postgresql-setup --initdb
    }
    assert {k: (debian[k], redhat[k]) for k in expected} == expected
    assert "postgresql-setup" in (ROLES / "db" / "tasks" / "cluster.yml").read_text()


def test_the_rhel_settings_work_with_what_rhel_ships():
    redhat = merged("RedHat")
    # sshd keeps the first value it reads, and RHEL 9's 50-redhat.conf sets X11Forwarding yes.
    assert Path(redhat["base_sshd_dropin"]).name < "50-redhat.conf"
    pool = re.compile(redhat["base_chrony_default_pool"])
    for name in ("rhel", "rocky", "almalinux", "centos", "fedora"):
        assert pool.match(f"pool 2.{name}.pool.ntp.org iburst"), name
    assert not pool.match("server 0.debian.pool.ntp.org iburst")
    assert re.match(merged("Debian")["base_chrony_default_pool"], "pool 2.debian.pool.ntp.org iburst")
    # RHEL's nginx.conf holds a default server on every address: ours has none and reads the site's directory.
    main = (ROLES / "web" / "templates" / redhat["web_nginx_main_conf_template"]).read_text()
    assert not re.search(r"^\s*(server|listen)\b", main, re.MULTILINE)
    assert f"include {Path(redhat['web_nginx_site']).parent}/*.conf;" in main
    assert redhat["web_nginx_site_link"] is None and merged("Debian")["web_nginx_main_conf_template"] is None


# --- The selection, run by ansible-playbook -------------------------------------------------------------
HOSTS = {  # name: (os_family, distribution, major version) as the setup module reports them
    "rhel9": ("RedHat", "RedHat", "9"),
    "rocky9": ("RedHat", "Rocky", "9"),
    "alma9": ("RedHat", "AlmaLinux", "9"),
    "debian12": ("Debian", "Debian", "12"),
    "ubuntu2404": ("Debian", "Ubuntu", "24"),
    "sles15": ("Suse", "SLES", "15"),
}

PROBE = """
# Facts as the setup module would report them (the hosts are this machine, over the local connection).
- name: Pretend to be the host
  hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact:
        ansible_os_family: "{{ probe_facts[0] }}"
        ansible_distribution: "{{ probe_facts[1] }}"
        ansible_distribution_major_version: "{{ probe_facts[2] }}"
        cacheable: true
      when: probe_facts is defined
      tags: [probe]
- ansible.builtin.import_playbook: PLAYBOOKS/base.yml
- ansible.builtin.import_playbook: PLAYBOOKS/web.yml
- ansible.builtin.import_playbook: PLAYBOOKS/db.yml
- name: Report what each host loaded
  hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        content: "{{ dict(probe_keys | zip(query('ansible.builtin.vars', *probe_keys))) | to_json }}"
        dest: "{{ probe_out }}/{{ inventory_hostname }}.json"
        mode: "0600"
      check_mode: false
      tags: [probe]
"""


def controller_family() -> str | None:
    """This machine's family by its os-release, or None where neither supported family."""
    release = platform.freedesktop_os_release()
    ids = {release.get("ID", ""), *release.get("ID_LIKE", "").split()}
    return "Debian" if ids & {"debian", "ubuntu"} else "RedHat" if ids & {"rhel", "fedora", "centos"} else None


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """Runs base, web and db in check mode with only the `always` tasks (the family's) and the probe's."""
    work = tmp_path_factory.mktemp("families")
    out = work / "out"
    out.mkdir()
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {name: {**local, "probe_facts": list(facts)} for name, facts in HOSTS.items()}
    # No facts given: the role's own setup task gathers them (in check mode) from this machine.
    hosts["controller"] = local
    groups = {"web": {"hosts": dict.fromkeys(hosts)}, "db": {"hosts": dict.fromkeys(hosts)}}
    (work / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts, "children": groups}}))
    (work / "probe.yml").write_text(PROBE.replace("PLAYBOOKS", str(PLAYBOOKS)))
    keys = sorted(merged("Debian"))
    (work / "extra.json").write_text(json.dumps({"probe_keys": keys, "probe_out": str(out)}))
    home = work / "home"
    home.mkdir()
    env = base_env(home=home) | {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                                 "ANSIBLE_DEPRECATION_WARNINGS": "False"}  # fmt: skip
    argv = [ansible_playbook(), "-i", "inventory.yml", "probe.yml", "--check", "--tags", "probe", "-e", "@extra.json"]
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    loaded = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return done, loaded


@pytest.mark.parametrize("host", [h for h, (family, *_) in HOSTS.items() if family in SUPPORTED])
def test_a_host_loads_its_own_familys_settings_in_check_mode(probe, host):
    done, loaded = probe
    assert host in loaded, done.stdout[-3000:]
    assert loaded[host] == merged(HOSTS[host][0])


def test_a_host_without_facts_gathers_them_in_check_mode(probe):
    done, loaded = probe
    family = controller_family()
    if family is None:
        pytest.skip("this machine is of neither supported family")
    assert loaded["controller"] == merged(family), done.stdout[-3000:]


def test_a_host_of_another_family_is_refused_naming_it(probe):
    done, loaded = probe
    assert done.returncode != 0 and "sles15" not in loaded
    assert "This host's OS family is Suse (SLES); the umc_infra roles support Debian and RedHat." in done.stdout
