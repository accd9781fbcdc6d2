"""ansible-playbook inherits nothing, task results never reach a file, and it is armed to stop with us.

The runs here are real ansible-runner runs of a fake ``ansible-playbook`` (a Python script) that reports
what it was given: its environment, ansible-runner's ``command`` artifact, its argv, its parent-death
signal, and the known_hosts file SSH would read. It prints ansible-runner events the way Ansible's
callback plugin does, one of them a task result holding a secret.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import signal
import sys
from pathlib import Path

import ansible_runner
import pytest
from pydantic import SecretStr

from umc_infra.ansible import runner as _ansible
from umc_infra.ansible.inventory import Host, Inventory
from umc_infra.ansible.runner import Ansible, keep_event, prepare_isolated
from umc_infra.process import Redactor
from umc_infra.process_identity import process_start
from umc_infra.settings import Settings

CANARIES = {
    "VAULT_TOKEN": "hvs.canary-vault-token-5f1e",
    "UMC_VAULT_SECRET_ID": "canary-secret-id-77aa",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-9c3d",
    # ansible-runner builds its own variables from these when they are inherited
    "ANSIBLE_CALLBACK_PLUGINS": "/canary/callbacks",
    "ANSIBLE_STDOUT_CALLBACK": "canary_callback",
    "AWX_LIB_DIRECTORY": "/canary/awx-lib",
}
TASK_SECRET = "canary-task-result-31b7"

_FAKE = r"""#!{python}
import base64, ctypes, json, os, signal as signals, sys, uuid

def event(data, text):
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    end = base64.b64encode(b"{{}}").decode()
    sys.stdout.write("\x1b[K" + encoded + "\x1b[" + str(len(encoded)) + "D\x1b[K" + text + "\n")
    sys.stdout.write("\x1b[K" + end + "\x1b[" + str(len(end)) + "D\x1b[K")
    sys.stdout.flush()

signal = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0)  # PR_GET_PDEATHSIG
artifacts = os.environ.get("AWX_ISOLATED_DATA_DIR", "")
known = ""
for option in os.environ.get("ANSIBLE_SSH_ARGS", "").split():
    if option.startswith("UserKnownHostsFile=") and os.path.exists(option.split("=", 1)[1]):
        known = open(option.split("=", 1)[1]).read()
worker = None
if os.path.exists({report!r} + ".worker"):  # an Ansible worker: a session of its own, the vars file in its argv
    import subprocess
    vars_file = sys.argv[sys.argv.index("--extra-vars") + 1].lstrip("@")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", vars_file],
                              start_new_session=True).pid
report = {{
    "worker": worker,
    "env": dict(os.environ),
    "argv": sys.argv,
    "pdeathsig": signal.value,
    "sigint_ignored": signals.getsignal(signals.SIGINT) is signals.SIG_IGN,
    "command": open(os.path.join(artifacts, "command")).read() if artifacts else "",
    "known_hosts": known,
}}
with open({report!r}, "w") as handle:
    json.dump(report, handle)
event({{"uuid": str(uuid.uuid4()), "event": "runner_on_ok",
       "event_data": {{"host": "h-1", "task": "read a secret", "res": {{"changed": True, "stdout": {secret!r}}}}}}},
      "changed: [h-1]")
event({{"uuid": str(uuid.uuid4()), "event": "playbook_on_stats",
       "event_data": {{"ok": {{"h-1": 2}}, "changed": {{"h-1": 1}}, "dark": {{}}, "failures": {{}}, "skipped": {{}}}}}},
      "PLAY RECAP")
"""


@pytest.fixture
def canaries(monkeypatch):
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    return CANARIES


@pytest.fixture
def fake_playbook(tmp_path, monkeypatch):
    """A fake ansible-playbook in its own bin dir; returns the path its report is written to."""
    bin_dir = tmp_path / "venv-bin"
    bin_dir.mkdir()
    report = tmp_path / "report.json"
    fake = bin_dir / "ansible-playbook"
    fake.write_text(_FAKE.format(python=sys.executable, report=str(report), secret=TASK_SECRET))
    fake.chmod(0o755)
    monkeypatch.setattr(_ansible, "ansible_playbook", lambda: str(fake))
    return report


@pytest.fixture
def removed(monkeypatch):
    """Every file of every directory _ansible removes, with its content, as it was just before removal."""
    seen: dict[str, str] = {}
    real = shutil.rmtree

    def record(path, ignore_errors=False):
        for file in Path(path).rglob("*"):
            if file.is_file():
                seen[str(file.relative_to(path))] = file.read_text(errors="replace")
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(_ansible.shutil, "rmtree", record)
    return seen


def _run(tmp_path: Path, *, known_hosts: str | None = None, events: list | None = None):
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir(exist_ok=True)
    (playbooks / "probe.yml").write_text("- hosts: all\n  tasks: []\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    key = SecretStr("-----BEGIN OPENSSH PRIVATE KEY-----\nkey-canary-0a1b\n-----END OPENSSH PRIVATE KEY-----")
    ansible = Ansible(
        Settings(),
        lambda name: playbooks / f"{name}.yml",
        on_event=(events if events is not None else []).append,
        redactor=Redactor([key]),
        deployment="iso-unit",
        private_dir=run_dir,
    )
    inventory = Inventory(hosts=(Host(name="h-1", ip="127.0.1.241", groups=("linux",), module="vm"),))
    with ansible:
        result = ansible.run("probe", inventory=inventory, hosts="all", user="root", ssh_key=key,
                             variables={"umc_deployment": "iso-unit"}, known_hosts=known_hosts)  # fmt: skip
    return result, run_dir


def test_prepare_isolated_keeps_ours_and_what_ansible_runner_sets_and_nothing_inherited(tmp_path, canaries):
    from ansible_runner.utils import get_callback_dir

    ours = {"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
            "ANSIBLE_FORKS": "7"}  # fmt: skip
    config = ansible_runner.RunnerConfig(private_data_dir=str(tmp_path), project_dir=str(tmp_path), binary="/bin/true",
                                         cmdline="probe.yml", suppress_env_files=True, quiet=True)  # fmt: skip
    prepare_isolated(config, ours)
    env = config.env
    assert {k: env[k] for k in ours} == ours
    assert env["ANSIBLE_CALLBACK_PLUGINS"] == get_callback_dir()  # not joined with the inherited value
    assert env["ANSIBLE_STDOUT_CALLBACK"] == "awx_display"
    assert "ORIGINAL_STDOUT_CALLBACK" not in env
    assert env["AWX_ISOLATED_DATA_DIR"] == config.artifact_dir
    leaked = {k: v for k, v in env.items() for canary in canaries.values() if canary in v}
    assert leaked == {}
    assert not {"VAULT_TOKEN", "UMC_VAULT_SECRET_ID", "AWS_SECRET_ACCESS_KEY", "AWX_LIB_DIRECTORY"} & set(env)


def test_control_ansible_runner_alone_passes_the_canaries_on(tmp_path, canaries):
    """The control: without prepare_isolated, ansible-runner hands the child every inherited value."""
    config = ansible_runner.RunnerConfig(private_data_dir=str(tmp_path), project_dir=str(tmp_path), binary="/bin/true",
                                         cmdline="probe.yml", suppress_env_files=True, quiet=True)  # fmt: skip
    config.prepare()
    assert config.env["VAULT_TOKEN"] == canaries["VAULT_TOKEN"]
    assert canaries["ANSIBLE_CALLBACK_PLUGINS"] in config.env["ANSIBLE_CALLBACK_PLUGINS"]


def test_a_playbook_gets_a_minimal_environment_armed_to_stop_with_us(tmp_path, canaries, fake_playbook, removed):
    result, run_dir = _run(tmp_path)
    report = json.loads(fake_playbook.read_text())
    env = report["env"]
    everything = json.dumps(report)
    for name, value in canaries.items():
        assert value not in everything, name
    assert env["PATH"] == f"{fake_playbook.parent / 'venv-bin'}:/usr/local/bin:/usr/bin:/bin"
    assert (env["LANG"], env["LC_ALL"]) == ("C.UTF-8", "C.UTF-8")
    home = Path(env["HOME"])
    assert home.parent.parent == run_dir and home.name == "home"  # inside the playbook's private dir
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True" and env["ANSIBLE_FORKS"] == str(Settings().ansible_forks)
    assert Path(env["TMPDIR"]) == home.parent / "tmp"  # Mitogen's socket and any temp file: the run's, too
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "AWX_ISOLATED_DATA_DIR", "RUNNER_OMIT_EVENTS",
               "RUNNER_ONLY_FAILED_EVENTS"}  # fmt: skip
    assert {k for k in env if k not in allowed and not k.startswith("ANSIBLE_")} == set()
    # ansible-runner's command artifact records that environment and nothing more.
    recorded = json.loads(report["command"])["env"]
    assert set(recorded) <= set(env) and all(recorded[k] == env[k] for k in recorded)
    # Started through the launcher: the real program, armed with SIGINT as its parent-death signal.
    assert report["pdeathsig"] == signal.SIGINT
    assert Path(report["argv"][0]).name == "ansible-playbook"
    assert str(tmp_path / "playbooks" / "probe.yml") in report["argv"]
    # The play recap is read back; the task's result reached no file.
    assert result.hosts["h-1"].ok == 2 and result.hosts["h-1"].changed == 1
    assert result.changed_tasks == (("h-1", "read a secret"),)
    events = [name for name in removed if name.startswith("artifacts/") and "/job_events/" in name]
    assert len(events) == 1 and json.loads(removed[events[0]])["event"] == "playbook_on_stats"
    assert not [name for name, text in removed.items() if TASK_SECRET in text]
    assert not [name for name in removed if name.endswith(("/stdout", "/stderr"))]
    assert list(run_dir.iterdir()) == []  # the playbook's dir and the SSH control dir are gone


def test_control_the_file_check_finds_a_task_result_written(tmp_path, canaries, fake_playbook, removed, monkeypatch):
    """The control: with every event kept (ansible-runner's default), the secret task result is found on disk."""
    monkeypatch.setattr(_ansible, "keep_event", lambda event: True)
    _run(tmp_path)
    assert [name for name, text in removed.items() if TASK_SECRET in text]


def test_control_the_report_shows_a_leak_when_the_environment_is_inherited(
    tmp_path, canaries, fake_playbook, monkeypatch
):
    """The control: with isolation off (ansible-runner's own prepare), the fake sees the canaries."""
    monkeypatch.setattr(_ansible, "prepare_isolated", lambda config, env: (setattr(config, "envvars", dict(env)),
                                                                           config.prepare()))  # fmt: skip
    _run(tmp_path)
    report = fake_playbook.read_text()
    assert CANARIES["VAULT_TOKEN"] in report and CANARIES["AWS_SECRET_ACCESS_KEY"] in report


def test_pinned_host_keys_are_the_only_ones_ssh_accepts(tmp_path, fake_playbook):
    pinned = "127.0.1.241 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheUnitTestOnly\n"
    _run(tmp_path, known_hosts=pinned)
    report = json.loads(fake_playbook.read_text())
    args = report["env"]["ANSIBLE_SSH_ARGS"]
    assert "StrictHostKeyChecking=yes" in args and "GlobalKnownHostsFile=/dev/null" in args
    assert report["known_hosts"] == pinned
    _run(tmp_path)
    report = json.loads(fake_playbook.read_text())
    assert "StrictHostKeyChecking=accept-new" in report["env"]["ANSIBLE_SSH_ARGS"]
    assert report["known_hosts"] == ""  # trust on first use: a fresh file for each playbook


@pytest.mark.parametrize(
    ("event", "kept"),
    [
        ({"event": "playbook_on_stats", "event_data": {"ok": {"h": 1}}}, True),
        ({"event": "runner_on_ok", "event_data": {"res": {"stdout": TASK_SECRET}}}, False),
        ({"event": "runner_on_failed", "event_data": {"res": {"msg": TASK_SECRET}}}, False),
        ({"event": "verbose", "stdout": TASK_SECRET}, False),
        ({"event": "playbook_on_task_start", "event_data": {"task": "x"}}, False),
    ],
)
def test_only_the_play_recap_is_written(event, kept):
    assert keep_event(event) is kept


@pytest.mark.parametrize(("pinned", "enabled", "strategy"), [(True, True, "mitogen_linear"), (False, True, None),
                                                            (True, False, None)])  # fmt: skip
def test_playbooks_run_with_mitogen_when_host_keys_are_pinned_unless_turned_off(tmp_path, fake_playbook, monkeypatch,
                                                                                pinned, enabled, strategy):  # fmt: skip
    """Mitogen's strategy with pinned host keys (it checks them strictly: no trust on first use), unless
    ``UMC_ANSIBLE_MITOGEN=false``; the strategy plugins are those of the installed Mitogen."""
    monkeypatch.setenv("UMC_ANSIBLE_MITOGEN", str(enabled).lower())
    _run(tmp_path, known_hosts="127.0.1.241 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK" if pinned else None)
    env = json.loads(fake_playbook.read_text())["env"]
    assert env.get("ANSIBLE_STRATEGY") == strategy
    if strategy:
        assert (Path(env["ANSIBLE_STRATEGY_PLUGINS"]) / f"{strategy}.py").is_file()
    else:
        assert "ANSIBLE_STRATEGY_PLUGINS" not in env


def test_the_parent_death_signal_works_even_when_the_caller_ignores_sigint(tmp_path, fake_playbook):
    """A process started without job control (``cmd &`` in a script) ignores SIGINT, and an ignored signal stays
    ignored across exec: the launcher gives ansible-playbook SIGINT's default action back, or its parent-death
    signal would do nothing. Off the main thread (a worker of the service) nothing else handles SIGINT meanwhile."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(_run, tmp_path).result()
    finally:
        signal.signal(signal.SIGINT, previous)
    report = json.loads(fake_playbook.read_text())
    assert report["pdeathsig"] == signal.SIGINT and report["sigint_ignored"] is False


def test_an_ansible_worker_left_running_is_stopped_when_the_playbook_ends(tmp_path, fake_playbook):
    """A helper of ansible-playbook in a session of its own (an Ansible worker; under Mitogen one can wait forever
    for a multiplexer that is gone) is stopped when the playbook ends: nothing of the run keeps running."""
    Path(f"{fake_playbook}.worker").touch()
    _run(tmp_path)
    worker = json.loads(fake_playbook.read_text())["worker"]
    assert worker is not None
    assert process_start(worker) is None  # gone (or a zombie: its parent, the fake playbook, has ended)
