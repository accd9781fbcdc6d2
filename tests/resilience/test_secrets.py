"""Secrets on the sandbox: the scan every case relies on (and its controls), a database password rotated in
Vault, passwords that are hard to redact, and what a playbook can read of the ``umc-infra`` command's environment.

The app-stack cases share one deployment (the module's ``app`` fixture): each puts a new database password in
Vault and provisions again, an update of the same two VMs, so PostgreSQL and nginx are installed once.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest
import yaml

from tests.integration.conftest import read_secret
from tests.leaks import ArgvWatch, leaks
from umc_infra import Settings, destroy, plan, provision, status
from umc_infra.events import Event

from .conftest import (
    assert_agree,
    assert_no_secret,
    child_env,
    remove_leftovers,
    scanned_places,
    site_settings,
    umc_infra,
)

APP = "res-app"
APP_PARAMS = {"web_instances": 1}
APP_MODULES = ("db", "web")
ISO_FIXTURES = Path(__file__).parent.parent / "fixtures" / "iso-blueprints"


def canary(tail: str = "") -> str:
    """A secret-looking value no run produces by itself; its hex part is found however ``tail`` is escaped."""
    return f"canary-{token_hex(12)}{tail}"


# -- the controls: the scan finds what it looks for -------------------------------------------------------------


def test_control_the_scan_finds_a_planted_leak_that_the_old_check_missed(tmp_path):
    secret = canary("-'q\"$`\\")
    run_dir = Path("/dev/shm") / f"umc-run.{os.getpid()}.0.{token_hex(4)}"  # where a run keeps its private files
    planted = {
        "vars.json": json.dumps({"db_password": secret}),  # \" and \\
        "vars.yml": yaml.safe_dump({"db_password": secret}, default_style="'"),  # ''
        "command": f"PGPASSWORD={shlex.quote(secret)} psql",  # '"'"'
        "page.html": html.escape(secret),
        "url": urllib.parse.quote(secret, safe=""),
        "repr": repr({"db_password": secret}),
    }
    run_dir.mkdir(mode=0o700)
    try:
        for name, text in planted.items():
            (run_dir / name).write_text(text)
            assert secret not in text  # the old check (verbatim only) finds none of these
        found = leaks([secret], directories=[Path("/dev/shm")])
        assert sorted(found) == sorted(f"{secret[:4]}... in {run_dir / name}" for name in planted)
    finally:
        shutil.rmtree(run_dir)
    events = json.dumps([{"kind": "output", "line": f"password is {secret}"}])
    assert secret not in events  # the old check: `canary not in json.dumps(events)` could never fire
    assert leaks([secret], events) == [f"{secret[:4]}... in text 0"]
    with pytest.raises(ValueError, match="cannot be looked for"):
        leaks(["true"], events)  # a short secret is refused, never silently "not found"


def test_control_the_argv_watch_sees_a_secret_in_any_command_line():
    secret = canary()
    with ArgvWatch([secret]) as watch:
        shown = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)", f"--password={secret}"],
                               check=True)  # fmt: skip
    assert shown.returncode == 0 and watch.samples > 3
    [(where, argv)] = watch.found.items()
    assert where.startswith(f"{secret[:4]}... in pid ") and "--password=<SECRET>" in argv and secret not in argv


# -- app-stack: the database password --------------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    site: Settings
    deployment: str
    db: str
    """The database VM's name."""
    db_ip: str
    web_ip: str


@pytest.fixture(scope="module")
def app(sandbox, info, tmp_path_factory) -> Iterator[App]:
    """app-stack (one web VM, one database VM), made once for this module's cases, destroyed after them."""
    site = site_settings(info, tmp_path_factory.mktemp("app") / "state")
    sandbox.put_secret(f"apps/{APP}", {"db_password": canary()})
    try:
        result = provision("app-stack", APP_PARAMS, deployment=APP, settings=site)
        db = next(h for h in result.hosts if "db" in h.groups)
        web = next(h for h in result.hosts if "web" in h.groups)
        yield App(site=site, deployment=APP, db=db.name, db_ip=db.ip, web_ip=web.ip)
        destroy(APP, settings=site)
        assert_agree(info, site, APP, vms=0, module=APP_MODULES)
    finally:
        remove_leftovers(info, site)


def page(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}/", timeout=10) as response:
        return response.read().decode()


def db_accepts(db_ip: str, password: str) -> bool:
    """Whether the database lets the app role in with ``password`` (over TLS, from 127.0.0.1: an allowed client)."""
    env = {"PATH": "/usr/bin:/bin", "PGHOST": db_ip, "PGDATABASE": "app", "PGUSER": "app", "PGPASSWORD": password,
           "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "5"}  # fmt: skip
    done = subprocess.run(["psql", "-X", "-w", "-At", "-c", "SELECT 1"], env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    return done.returncode == 0 and done.stdout.strip() == "1"


def rotate(sandbox, info, app: App, password: str) -> str:
    """Put ``password`` in Vault as the app's database password; the one it replaces."""
    old = read_secret(info, f"apps/{app.deployment}")["db_password"]
    sandbox.put_secret(f"apps/{app.deployment}", {"db_password": password})
    return old


def texts_of(*models: Any, events: list[Event], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Everything a caller sees of a run: models as JSON and repr, events as JSON and repr, log records."""
    return [
        *(m.model_dump_json() for m in models), *(repr(m) for m in models),
        json.dumps([e.model_dump(mode="json") for e in events]), "\n".join(map(repr, events)), caplog.text,
    ]  # fmt: skip


def string_leaves(document: Any) -> list[str]:
    """Every string in a JSON document (keys and values)."""
    if isinstance(document, str):
        return [document]
    if isinstance(document, list):
        return [s for item in document for s in string_leaves(item)]
    if isinstance(document, dict):
        return [s for key, value in document.items() for s in (key, *string_leaves(value))]
    return []


def test_a_rotated_database_password(sandbox, info, app, secrets, caplog):
    """The password changes in Vault between two provisions: the plan says the role's password would change (and
    shows neither password), the provision sets it, the database takes the new one only, nothing shows either."""
    caplog.set_level(logging.DEBUG)
    started = time.time()
    new = canary()
    old = rotate(sandbox, info, app, new)
    events: list[Event] = []
    with ArgvWatch([old, new, *secrets]) as watch:
        reviewed = plan("app-stack", APP_PARAMS, deployment=app.deployment, settings=app.site, on_event=events.append)
        result = provision("app-stack", APP_PARAMS, deployment=app.deployment, settings=app.site,
                           on_event=events.append)  # fmt: skip
    # No VM changes, but the plan sees the database's configuration would change (its tasks are no_log)
    assert not reviewed.resources
    db_changes = [c.task for c in reviewed.configuration if (c.playbook, c.host) == ("db", app.db)]
    assert db_changes, reviewed.configuration
    assert "database: connected" in page(app.web_ip)
    assert db_accepts(app.db_ip, new) and not db_accepts(app.db_ip, old)
    assert watch.found == {}, watch.found
    record = status(app.deployment, settings=app.site)
    assert_no_secret([old, new, *secrets], *texts_of(reviewed, result, record, events=events, caplog=caplog),
                     directories=scanned_places(app.site), since=started)  # fmt: skip
    assert_agree(info, app.site, app.deployment, vms=2, module=APP_MODULES)


HARD = {
    # JSON, YAML, shell, SQL, Jinja and HCL would all mistake a part of it for syntax
    "quotes": lambda: canary("-'q\"\\$(id)`id`${x}%{y}{{ z }}$umc$ \\n"),
    "true": lambda: "true",  # a JSON literal: redacted inside Terraform's JSON output it would corrupt it
    "umc": lambda: "umc",  # in every path, argv and output line of a run
}


@pytest.mark.parametrize("kind", HARD)
def test_a_database_password_hard_to_redact(sandbox, info, app, secrets, caplog, kind):
    """A password with quotes and backslashes, the literal ``true``, a short common word: each provision succeeds
    (no refused argv, no corrupted JSON) and the database takes it. A long one is found nowhere; a short one
    cannot be scanned for as text, so: no string in the result, the record or the events is it."""
    caplog.set_level(logging.DEBUG)
    started = time.time()
    password = HARD[kind]()
    old = rotate(sandbox, info, app, password)
    scanned = [s for s in (password, old) if len(s) >= 8]
    events: list[Event] = []
    with ArgvWatch([*scanned, *secrets]) as watch:
        result = provision("app-stack", APP_PARAMS, deployment=app.deployment, settings=app.site,
                           on_event=events.append)  # fmt: skip
    assert "database: connected" in page(app.web_ip)
    assert db_accepts(app.db_ip, password) and not db_accepts(app.db_ip, old)
    record = status(app.deployment, settings=app.site)
    assert result.outputs["db_ip"] == app.db_ip and record.outputs == result.outputs  # parsed intact
    documents = [result.model_dump(mode="json"), record.model_dump(mode="json"),
                 [e.model_dump(mode="json") for e in events]]  # fmt: skip
    assert password not in [s for document in documents for s in string_leaves(document)]
    assert watch.found == {}, watch.found
    assert_no_secret([*scanned, *secrets], *texts_of(result, record, events=events, caplog=caplog),
                     directories=scanned_places(app.site), since=started)  # fmt: skip
    assert_agree(info, app.site, app.deployment, vms=2, module=APP_MODULES)


# -- what a playbook can read ----------------------------------------------------------------------------------

_INHERITING_CLI = textwrap.dedent("""
    # The control: `umc-infra` with ansible-runner's own environment handling (a copy of os.environ).
    import sys
    from umc_infra.ansible import runner as _ansible
    def inherit(config, env):
        config.envvars = dict(env)
        config.prepare()
    _ansible.prepare_isolated = inherit
    from umc_infra.cli.app import main
    main(sys.argv[1:])
""")
PROBED = ("VAULT_TOKEN", "UMC_VAULT_SECRET_ID", "AWS_SECRET_ACCESS_KEY")


def test_a_playbook_reads_nothing_of_the_commands_secret_environment(sandbox, info, site, secrets):
    """``umc-infra provision`` with the sandbox's environment exported (a CI job's Vault token, AppRole secret id,
    S3 secret key): the probe playbook's ``lookup('env', ...)`` of each is empty. The control runs the same command
    with ansible-runner's inherited environment and finds every one."""
    started = time.time()
    d = "res-env"
    env = {"UMC_BLUEPRINT_PATH": str(ISO_FIXTURES)}
    exported = {name: child_env(info, site)[name] for name in PROBED}
    assert all(len(value) >= 16 for value in exported.values())
    command = ("provision", "iso-probe", "-d", d, "-p", "instances=1", "--output", "json")
    done = umc_infra(info, site, *command, **env)
    assert done.returncode == 0, done.stderr
    [host] = json.loads(done.stdout)["hosts"]
    probe = sandbox.guest_root(host["ip"]) / "root" / "umc-env-probe"
    seen = dict(line.split("=", 1) for line in probe.read_text().splitlines())
    assert {name: seen[name] for name in PROBED} == dict.fromkeys(PROBED, "")
    assert not leaks(list(exported.values()), probe.read_text())

    control = subprocess.run([sys.executable, "-c", _INHERITING_CLI, *command], env=child_env(info, site, **env),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert control.returncode == 0, control.stderr
    seen = dict(line.split("=", 1) for line in probe.read_text().splitlines())
    assert {name: seen[name] for name in PROBED} == exported
    probe.unlink()  # the control wrote the secrets on the guest

    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site.model_copy(update={"blueprint_path": [ISO_FIXTURES]}))
    assert_agree(info, site, d, vms=0)
    assert_no_secret(secrets, done.stdout, done.stderr, control.stdout, control.stderr,
                     directories=scanned_places(site), since=started)  # fmt: skip
