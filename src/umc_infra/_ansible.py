"""Ansible through ansible-runner, with nothing left behind.

Each run gets its own private data dir, in memory (``/dev/shm``) where the machine has it, mode
0700, removed when the run ends whatever happens: the SSH key, the vars file (secrets included), the
inventory and ansible-runner's artifacts go with it. Every value reaches Ansible as unsafe text (the
YAML ``!unsafe`` tag), so ``{{ lookup('pipe', 'id') }}`` in a parameter is shown, never run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra._errors import Cancelled, PlaybookError
from umc_infra._events import EventCallback, OutputLine, TaskResult
from umc_infra._inventory import Inventory
from umc_infra._process import Redactor, find_tool, notify_argv, run, signals_set
from umc_infra._settings import Settings

_STATUS = {
    "runner_on_start": "started",
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


class HostStats(BaseModel):
    """The play recap of one host."""

    model_config = ConfigDict(frozen=True)

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


class PlaybookResult(BaseModel):
    """What one playbook did, per host."""

    model_config = ConfigDict(frozen=True)

    playbook: str
    hosts: dict[str, HostStats]
    seconds: float
    changed_tasks: tuple[tuple[str, str], ...] = ()
    """``(host, task)`` for every task that changed (in check mode: would change)."""

    @property
    def changed(self) -> int:
        """Changed tasks over all hosts."""
        return sum(h.changed for h in self.hosts.values())


class _UnsafeDumper(yaml.SafeDumper):
    """Dumps every string with Ansible's ``!unsafe`` tag: Ansible never templates it."""


def _unsafe_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("!unsafe", value, style='"')


_UnsafeDumper.add_representer(str, _unsafe_str)


def unsafe_vars_yaml(values: Mapping[str, Any]) -> str:
    """Extra vars as YAML in which every string, at any depth, is ``!unsafe``."""
    plain = {k: (v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in values.items()}
    return yaml.dump(plain, Dumper=_UnsafeDumper, default_flow_style=False, sort_keys=True, allow_unicode=True)


def private_dir_parent() -> str | None:
    """Memory-backed ``/dev/shm`` when usable, so secrets never reach a disk; else the temp dir."""
    shm = Path("/dev/shm")  # noqa: S108 - a private 0700 dir is made inside it
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def ansible_playbook() -> str:
    """``ansible-playbook`` beside this Python (the venv umc_infra runs in), else on PATH."""
    found = find_tool("ansible-playbook")
    if found is None:
        raise PlaybookError(
            "ansible-playbook not found; install ansible-core (pip install umc-infra)",
            playbook="",
            failures=[],
            step="ansible",
        )
    return str(found)


def syntax_check(playbook: Path) -> list[tuple[str, int | None, str]]:
    """``ansible-playbook --syntax-check``: each error as (file, line, message); empty if the playbook is sound."""
    with tempfile.TemporaryDirectory(prefix="umc-syntax-") as home:
        env = {"PATH": f"{Path(ansible_playbook()).parent}:/usr/bin:/bin", "HOME": home, "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCAL_TEMP": str(Path(home) / "tmp"), "ANSIBLE_DEPRECATION_WARNINGS": "False"}  # fmt: skip
        result = run([ansible_playbook(), "--syntax-check", "-i", "localhost,", str(playbook)], step="validate.ansible",
                     env=env, cwd=playbook.parent, timeout=300, check=False)  # fmt: skip
    if result.returncode == 0:
        return []
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    errors: list[tuple[str, int | None, str]] = []
    for i, line in enumerate(lines):
        if line.startswith(("[ERROR]:", "ERROR!")):
            message = line.removeprefix("[ERROR]:").removeprefix("ERROR!").strip()
            origin = next((re.match(r"Origin: (.+?):(\d+)(?::\d+)?$", o) for o in lines[i + 1 : i + 4]
                           if o.startswith("Origin: ")), None)  # fmt: skip
            errors.append((origin[1], int(origin[2]), message) if origin else (str(playbook), None, message))
    return errors or [(str(playbook), None, f"ansible-playbook --syntax-check exited {result.returncode}")]


class Ansible:
    """Runs a blueprint's playbooks against an inventory."""

    def __init__(
        self,
        settings: Settings,
        locate: Callable[[str], Path],
        *,
        on_event: EventCallback,
        redactor: Redactor,
        deployment: str,
        cancel: threading.Event | None = None,
    ) -> None:
        self._cancel = cancel or threading.Event()
        self._settings = settings
        self._locate = locate
        self._control: Path | None = None
        self._on_event = on_event
        self._redact = redactor
        self._deployment = deployment

    def __repr__(self) -> str:
        return f"Ansible(settings={type(self._settings).__name__})"

    def __enter__(self) -> Ansible:
        """Playbooks run inside the block share SSH master connections (a 0700 dir in memory)."""
        self._control = Path(tempfile.mkdtemp(prefix="umc-ssh-", dir=private_dir_parent()))
        self._control.chmod(0o700)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._control is not None:
            shutil.rmtree(self._control, ignore_errors=True)
            self._control = None

    def _tail(self, runner: Any) -> str:
        """The last lines ansible-playbook printed (redacted), for a failure without task events."""
        try:
            lines = [line for line in runner.stdout.read().splitlines() if line.strip()]
        except (OSError, AttributeError):
            lines = []
        return f"status {runner.status}: " + self._redact(" | ".join(lines[-6:]) or "no output")

    def run(
        self,
        playbook: str,
        *,
        inventory: Inventory,
        hosts: str,
        user: str,
        ssh_key: SecretStr,
        variables: Mapping[str, Any],
        check: bool = False,
        only: Sequence[str] | None = None,
    ) -> PlaybookResult:
        """Run ``playbooks/<playbook>.yml`` on group ``hosts``.

        Raises:
            PlaybookError: A task failed or a host was unreachable (hosts, tasks and messages named).

        """
        import time

        import ansible_runner

        step = f"ansible.{'check.' if check else ''}{playbook}"
        started = time.monotonic()
        failures: list[tuple[str, str, str]] = []
        changed_tasks: list[tuple[str, str]] = []
        private = Path(tempfile.mkdtemp(prefix="umc-ansible-", dir=private_dir_parent()))
        try:
            private.chmod(0o700)
            key = private / "ssh_key"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(ssh_key.get_secret_value().rstrip("\n") + "\n")
            inventory_file = private / "inventory.yml"
            inventory_file.write_text(
                yaml.safe_dump(
                    inventory.to_ansible(
                        user=user, port=self._settings.ssh_port, python=self._settings.python_interpreter
                    )
                )
            )
            vars_file = private / "vars.yml"
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(unsafe_vars_yaml(variables))
            ssh_args = (
                f"-o UserKnownHostsFile={private / 'known_hosts'} -o StrictHostKeyChecking=accept-new "
                "-o ControlMaster=auto -o ControlPersist=60s -o ConnectTimeout=20 -o ServerAliveInterval=15"
            )
            envvars = {
                # ansible-runner finds ansible-playbook on PATH: make it the one beside this Python.
                "PATH": f"{Path(ansible_playbook()).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "ANSIBLE_PRIVATE_KEY_FILE": str(key),
                "ANSIBLE_SSH_ARGS": ssh_args,
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self._control or private / "cp"),
                "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_FORKS": str(self._settings.ansible_forks),
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_DEPRECATION_WARNINGS": "False",
            }

            def on_runner_event(event: dict[str, Any]) -> bool:
                data = event.get("event_data", {})
                status = _STATUS.get(str(event.get("event")))
                if status is not None:
                    host = str(data.get("host", "?"))
                    task = self._redact(str(data.get("task", "?")))
                    changed = bool(data.get("res", {}).get("changed")) if isinstance(data.get("res"), dict) else False
                    if status == "ok" and changed:
                        changed_tasks.append((host, task))
                    if status in ("failed", "unreachable") and not data.get("ignore_errors"):
                        res = data.get("res", {}) if isinstance(data.get("res"), dict) else {}
                        message = str(res.get("msg") or res.get("stderr") or status)
                        failures.append((host, task, self._redact(message)[:500]))
                    self._on_event(TaskResult(
                        deployment=self._deployment, playbook=playbook, host=host, task=task,
                        status="changed" if status == "ok" and changed else status,  # type: ignore[arg-type]
                    ))  # fmt: skip
                stdout = event.get("stdout")
                if stdout:
                    for line in str(stdout).splitlines():
                        if line.strip():
                            self._on_event(OutputLine(deployment=self._deployment, step=step, line=self._redact(line)))
                return True  # kept in the private dir (memory), for the play recap; removed at the end

            config = ansible_runner.RunnerConfig(
                private_data_dir=str(private),
                project_dir=str(self._locate(playbook).parent),
                playbook=self._locate(playbook).name,
                inventory=str(inventory_file),
                limit=",".join(only) if only else hosts,
                cmdline=f"--extra-vars @{vars_file}" + (" --check --diff" if check else ""),
                envvars=envvars,
                quiet=True,
                suppress_env_files=True,
                timeout=int(self._settings.ansible_timeout_s),
            )
            config.prepare()
            notify_argv(tuple(config.command))
            # ansible-runner stops ansible-playbook when cancel_callback returns True.
            interrupted = threading.Event()  # Ctrl-C or SIGTERM while the playbook runs
            runner = ansible_runner.Runner(
                config=config, event_handler=on_runner_event,
                cancel_callback=lambda: self._cancel.is_set() or interrupted.is_set(),
            )  # fmt: skip
            with signals_set(interrupted):
                runner.run()
            if interrupted.is_set():
                raise KeyboardInterrupt(f"playbook {playbook!r} interrupted; ansible-playbook was stopped")
            if runner.status == "canceled":
                raise Cancelled(f"playbook {playbook!r} was cancelled", step=step)
            stats = runner.stats or {}
            per_host: dict[str, HostStats] = {}
            for host in inventory.in_group(hosts):
                if only and host.name not in only:
                    continue
                per_host[host.name] = HostStats(
                    ok=stats.get("ok", {}).get(host.name, 0),
                    changed=stats.get("changed", {}).get(host.name, 0),
                    failed=stats.get("failures", {}).get(host.name, 0),
                    unreachable=stats.get("dark", {}).get(host.name, 0),
                    skipped=stats.get("skipped", {}).get(host.name, 0),
                )
            if runner.status != "successful" or failures:
                shown = "; ".join(f"{h}: {t}: {m}" for h, t, m in failures[:10]) or self._tail(runner)
                raise PlaybookError(
                    f"playbook {playbook!r} failed in deployment {self._deployment!r} on "
                    f"{len({h for h, _, _ in failures}) or 'some'} host(s): {shown}",
                    playbook=playbook,
                    failures=failures,
                    step=step,
                )
            return PlaybookResult(
                playbook=playbook, hosts=per_host, seconds=time.monotonic() - started,
                changed_tasks=tuple(changed_tasks),
            )  # fmt: skip
        finally:
            shutil.rmtree(private, ignore_errors=True)
