"""Ansible through ansible-runner, with nothing left behind and nothing inherited.

Each playbook runs in a private directory of its own, inside the run's private directory (memory-backed,
0700): the SSH key, the vars file (secrets included), the inventory, the pinned host keys and
ansible-runner's artifacts live there and are removed when the playbook ends, whatever happens. Every
value reaches Ansible as unsafe text (the YAML ``!unsafe`` tag), so ``{{ lookup('pipe', 'id') }}`` in a
parameter is shown, never run.

``ansible-playbook`` sees none of this process's environment: it gets a PATH, a HOME inside its private
directory, a UTF-8 locale, our ``ANSIBLE_*`` settings and the variables ansible-runner sets for its own
callback plugin, nothing else. A playbook from a blueprint package cannot read the runner's Vault token or
cloud credentials with ``lookup('env', ...)``, and ansible-runner's ``artifacts/<ident>/command`` file
records only that environment. Task results stay in memory: of ansible-runner's event files only the
play recap is written. ``ansible-playbook`` is started through a launcher that arms Linux's
parent-death signal (SIGINT), so it stops when this process dies, even by SIGKILL.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra.ansible.inventory import Inventory
from umc_infra.deathsig import wrapper_script
from umc_infra.errors import Cancelled, PlaybookError
from umc_infra.events import EventCallback, OutputLine, TaskResult
from umc_infra.private import stop_leftovers, write_private
from umc_infra.process import Redactor, find_tool, notify_argv, run, signals_set
from umc_infra.settings import Settings

_STATUS = {
    "runner_on_start": "started",
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
# ansible-runner reads ``runner.stats`` back from this event's file: the only event written to disk.
_STATS_EVENT = "playbook_on_stats"
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
_TAIL_LINES = 6


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


class Play(BaseModel):
    """One playbook of a run: its name, the group it runs on and its extra vars."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    playbook: str
    hosts: str = "all"
    variables: Mapping[str, Any] = {}

    def __repr__(self) -> str:  # the vars may hold secrets
        return f"Play(playbook={self.playbook!r}, hosts={self.hosts!r})"


_GATE = "umc: after playbook "
"""The name of the play :meth:`Ansible.run_together` puts after each playbook (a playbook name follows)."""


def together_yaml(playbooks: Sequence[Path]) -> str:
    """One playbook importing ``playbooks`` in order, a gate play after each but the last.

    A gate fails every host it finds as soon as any host failed or was unreachable before it, so no later
    playbook runs: as when each playbook is a run of its own and the first failed one ends the run.
    """
    site: list[dict[str, Any]] = []
    for i, playbook in enumerate(playbooks):
        site.append({"import_playbook": str(playbook)})
        if i < len(playbooks) - 1:
            site.append({
                "name": f"{_GATE}{playbook.stem}", "hosts": "all", "gather_facts": False,
                "tasks": [{"ansible.builtin.fail": {"msg": "an earlier playbook failed"},
                           "when": "ansible_play_hosts | length < ansible_play_hosts_all | length"}],
            })  # fmt: skip
    return str(yaml.safe_dump(site, sort_keys=False))


class _UnsafeDumper(yaml.SafeDumper):
    """Dumps every string with Ansible's ``!unsafe`` tag: Ansible never templates it."""


def _unsafe_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # ansible-core 2.19 types an `!unsafe` scalar as if it were plain, quotes or not: `!unsafe "true"` loads as
    # True, "0123" as 83, "12:30" as 750, "" and "null" as None, and "=" does not load at all. Such a value (a
    # YAML 1.1 boolean, number, null, date, "=" or "<<") holds no template syntax: it goes as a quoted plain string.
    implicit: str = dumper.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    if implicit != "tag:yaml.org,2002:str":
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_scalar("!unsafe", value, style='"')


_UnsafeDumper.add_representer(str, _unsafe_str)


def unsafe_vars_yaml(values: Mapping[str, Any]) -> str:
    """Extra vars as YAML in which every string, at any depth, is ``!unsafe``."""
    plain = {k: (v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in values.items()}
    return yaml.dump(plain, Dumper=_UnsafeDumper, default_flow_style=False, sort_keys=True, allow_unicode=True)


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


def base_env(*, home: Path) -> dict[str, str]:
    """The environment of every ``ansible-playbook`` before its ``ANSIBLE_*`` settings; nothing inherited.

    PATH holds the directory of ``ansible-playbook`` (its venv) and the system's; ansible-core needs a
    UTF-8 locale.
    """
    return {
        "PATH": f"{Path(ansible_playbook()).parent}:{_SYSTEM_PATH}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def mitogen_strategy() -> dict[str, str] | None:
    """The settings that run plays with Mitogen's ``mitogen_linear`` strategy; None without Mitogen installed.

    Mitogen is found without importing it (that would import Ansible into this process).
    """
    import importlib.util

    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or spec.origin is None:
        return None
    plugins = Path(spec.origin).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


def prepare_isolated(config: Any, env: Mapping[str, str]) -> None:
    """``config.prepare()`` (an ansible-runner ``RunnerConfig``), then ``config.env``: ``env`` and nothing inherited.

    ansible-runner seeds the child's environment with a copy of ``os.environ``, and builds some of its own
    variables from inherited ones (``ANSIBLE_CALLBACK_PLUGINS``, ``ORIGINAL_STDOUT_CALLBACK``). Every
    inherited name is therefore handed to it blanked: afterwards a name with a value is ours, or one
    ansible-runner set itself (its callback plugin's directory, artifact dir, fact cache), from nothing
    inherited. ansible-runner writes ``config.env`` to ``artifacts/<ident>/command``: only this survives.
    """
    blanked = set(os.environ)
    config.envvars = dict.fromkeys(blanked, "") | dict(env)
    config.prepare()
    kept = dict(env)
    for name, value in config.env.items():
        if name in kept or value == "":
            continue
        if name not in blanked and os.environ.get(name) == value:
            continue  # appeared in os.environ while ansible-runner copied it: inherited all the same
        kept[name] = value
    config.env = kept


def keep_event(event: Mapping[str, Any]) -> bool:
    """Whether ansible-runner writes the event to its job_events dir: the play recap only (``runner.stats``).

    Every other event may carry task results (values a task read or printed, secrets included); they
    are handled in memory and never written.
    """
    return event.get("event") == _STATS_EVENT


# Collections a built-in playbook uses that ansible-core lacks, and what installs them.
_COLLECTIONS = {
    "ansible.windows": "pip install 'umc-infra[windows]' (the ansible package carries it)",
    "community.windows": "pip install 'umc-infra[windows]' (the ansible package carries it)",
}
_UNRESOLVED = re.compile(r"couldn't resolve module/action '(?P<collection>[a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+'")


def _collection_hint(message: str) -> str:
    """What to install when ``message`` says a module of a collection that is not installed could not be resolved."""
    found = _UNRESOLVED.search(message)
    if found is None:
        return ""
    collection = found["collection"]
    fix = _COLLECTIONS.get(collection, f"ansible-galaxy collection install {collection}")
    return f" (is the collection {collection} installed? Install it: {fix})"


def syntax_check(playbook: Path) -> list[tuple[str, int | None, str]]:
    """``ansible-playbook --syntax-check``: each error as (file, line, message); empty if the playbook is sound."""
    with tempfile.TemporaryDirectory(prefix="umc-syntax-") as home:
        env = base_env(home=Path(home)) | {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(Path(home) / "tmp"),
                                           "ANSIBLE_DEPRECATION_WARNINGS": "False"}  # fmt: skip
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
            message += _collection_hint(message)
            errors.append((origin[1], int(origin[2]), message) if origin else (str(playbook), None, message))
    return errors or [(str(playbook), None, f"ansible-playbook --syntax-check exited {result.returncode}")]


class Ansible:
    """Runs a blueprint's playbooks against an inventory.

    Args:
        settings: The site's settings.
        locate: The file of a playbook by name.
        on_event: Receives task results and output lines (redacted).
        redactor: Hides secret values in everything that streams out.
        deployment: The deployment the playbooks configure (for events and errors).
        private_dir: The run's private directory (0700, in memory): each playbook's files and the SSH
            control sockets are made inside it, and a run killed outright leaves them there for the
            sweep of dead runs. Keep its path short: a control socket's path must fit in 108 bytes.
        cancel: When set from another thread, the running playbook is stopped and :class:`Cancelled` raised.

    """

    def __init__(
        self,
        settings: Settings,
        locate: Callable[[str], Path],
        *,
        on_event: EventCallback,
        redactor: Redactor,
        deployment: str,
        private_dir: Path,
        cancel: threading.Event | None = None,
    ) -> None:
        self._cancel = cancel or threading.Event()
        self._settings = settings
        self._locate = locate
        self._private_dir = private_dir
        self._control: Path | None = None
        self._on_event = on_event
        self._redact = redactor
        self._deployment = deployment

    def __repr__(self) -> str:
        return f"Ansible(settings={type(self._settings).__name__})"

    def __enter__(self) -> Ansible:
        """Playbooks run inside the block share SSH master connections (a 0700 dir in the private dir)."""
        self._control = self._new_dir("ssh-")  # short: a socket path must fit in 108 bytes
        return self

    def __exit__(self, *exc: object) -> None:
        if self._control is not None:
            shutil.rmtree(self._control, ignore_errors=True)
            self._control = None

    def _new_dir(self, prefix: str) -> Path:
        """A new 0700 directory in the run's private dir."""
        directory = Path(tempfile.mkdtemp(prefix=prefix, dir=self._private_dir))
        directory.chmod(0o700)
        return directory

    def _env(self, private: Path, *, pinned: bool) -> dict[str, str]:
        """Everything ``ansible-playbook`` gets in its environment, besides ansible-runner's own variables.

        With ``pinned`` host keys in ``known_hosts``, SSH accepts those alone; without, each host's key is
        trusted on first use, for this playbook only. With pinned keys and ``ansible_mitogen`` set, the playbook
        runs with Mitogen's strategy (see :func:`mitogen_strategy`; Mitogen checks host keys strictly, so it is
        not used to trust keys on first use).
        """
        ssh_args = (
            f"-o UserKnownHostsFile={private / 'known_hosts'} -o GlobalKnownHostsFile=/dev/null "
            f"-o StrictHostKeyChecking={'yes' if pinned else 'accept-new'} "
            "-o ControlMaster=auto -o ControlPersist=60s -o ConnectTimeout=20 -o ServerAliveInterval=15"
        )
        env = base_env(home=private / "home") | {
            "TMPDIR": str(private / "tmp"),  # what ansible-playbook or Mitogen's multiplexer (a socket) make
            "ANSIBLE_PRIVATE_KEY_FILE": str(private / "ssh_key"),
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
        strategy = mitogen_strategy() if pinned and self._settings.ansible_mitogen else None
        return env | (strategy or {})

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
        known_hosts: str | None = None,
    ) -> PlaybookResult:
        """Run ``playbooks/<playbook>.yml`` on group ``hosts``.

        Args:
            playbook: The playbook's name.
            inventory: Every host of the deployment.
            hosts: The group to run on (``all``: every host).
            user: The SSH user.
            ssh_key: The SSH private key.
            variables: Extra vars; every string reaches Ansible unsafe (never templated).
            check: Check mode with diff: report what would change, change nothing.
            only: Limit the run to these hosts.
            known_hosts: The hosts' pinned SSH host keys (``known_hosts`` lines, see
                :func:`umc_infra.ansible.hostkeys.known_hosts`): SSH then refuses any other key. Without them, each
                host's key is trusted on first use within this playbook.

        Raises:
            PlaybookError: A task failed or a host was unreachable (hosts, tasks and messages named).
            Cancelled: ``cancel`` was set while the playbook ran.

        """
        play = Play(playbook=playbook, hosts=hosts, variables=variables)
        played = self.run_together([play], inventory=inventory, user=user, ssh_key=ssh_key, check=check, only=only,
                                   known_hosts=known_hosts)  # fmt: skip
        return played[playbook]

    def run_together(
        self,
        plays: Sequence[Play],
        *,
        inventory: Inventory,
        user: str,
        ssh_key: SecretStr,
        check: bool = False,
        only: Sequence[str] | None = None,
        known_hosts: str | None = None,
    ) -> dict[str, PlaybookResult]:
        """Run playbooks in order in one ``ansible-playbook`` run: one start, one connection per host for them all.

        As :meth:`run` for each, but the extra vars are those of every play together, and a play's ``hosts``
        limits nothing: each playbook's own plays must target its group, and no two plays may give one var
        different values (a blueprint's ``ansible.one_run`` is checked for this when it loads). After the first
        playbook that fails on any host, no later one runs (see :func:`together_yaml`).

        Raises:
            PlaybookError: A task failed or a host was unreachable (``playbook`` and ``step`` name the playbook), or
                two plays give one var different values.
            Cancelled: ``cancel`` was set while the playbooks ran.

        """
        import time

        import ansible_runner

        names = [play.playbook for play in plays]
        step = f"ansible.{'check.' if check else ''}{'+'.join(names)}"
        variables: dict[str, Any] = {}
        for play in plays:
            for name, value in play.variables.items():
                if name in variables and variables[name] != value:
                    raise PlaybookError(f"playbooks {', '.join(names)} cannot run together: they give var {name!r} "
                                        "different values", playbook=play.playbook, failures=[], step=step)  # fmt: skip
                variables[name] = value
        started = time.monotonic()
        current = 0  # the playbook whose plays are running
        in_gate = False
        began = [started] + [0.0] * (len(plays) - 1)
        ended = [0.0] * len(plays)
        failures: list[tuple[str, str, str]] = []
        failed_in: list[int] = []  # the playbook of each failure
        changed_tasks: list[list[tuple[str, str]]] = [[] for _ in plays]
        counted: list[dict[str, collections.Counter[str]]] = [
            collections.defaultdict(collections.Counter) for _ in plays
        ]
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        private = self._new_dir("umc-ansible-")
        try:
            write_private(private / "ssh_key", ssh_key.get_secret_value().rstrip("\n") + "\n")
            inventory_file = private / "inventory.yml"
            inventory_file.write_text(
                yaml.safe_dump(
                    inventory.to_ansible(
                        user=user, port=self._settings.ssh_port, python=self._settings.python_interpreter
                    )
                )
            )
            vars_file = private / "vars.yml"
            write_private(vars_file, unsafe_vars_yaml(variables))
            if known_hosts is not None:
                write_private(private / "known_hosts", known_hosts)
            (private / "home").mkdir(mode=0o700)
            (private / "tmp").mkdir(mode=0o700)
            launcher = wrapper_script(private, ansible_playbook(), name="ansible-playbook")

            def on_runner_event(event: dict[str, Any]) -> bool:
                nonlocal current, in_gate
                data = event.get("event_data", {})
                if event.get("event") == "playbook_on_play_start":
                    if str(data.get("play", data.get("name", ""))).startswith(_GATE):
                        in_gate, ended[current] = True, time.monotonic()
                    elif in_gate:
                        in_gate, current = False, current + 1
                        began[current] = time.monotonic()
                if in_gate:
                    return keep_event(event)  # a gate's own failure is not the playbook's
                playbook = names[current]
                status = _STATUS.get(str(event.get("event")))
                if status is not None:
                    host = str(data.get("host", "?"))
                    task = self._redact(str(data.get("task", "?")))
                    res = data.get("res") if isinstance(data.get("res"), dict) else {}
                    # A no_log task's result is censored, its "changed" with it; its line still says "changed: [host]"
                    changed = (bool(res["changed"]) if "changed" in res
                               else str(event.get("stdout", "")).lstrip().startswith("changed:"))  # fmt: skip
                    if status == "ok" and changed:
                        changed_tasks[current].append((host, task))
                    ignored = bool(data.get("ignore_errors"))
                    if status in ("failed", "unreachable") and not ignored:
                        res = data.get("res", {}) if isinstance(data.get("res"), dict) else {}
                        message = str(res.get("msg") or res.get("stderr") or status)
                        failures.append((host, task, self._redact(message)[:500]))
                        failed_in.append(current)
                    if status != "started" and not (status == "failed" and ignored):
                        counted[current][host][status] += 1
                        counted[current][host]["changed"] += status == "ok" and changed
                    duration = data.get("duration")
                    self._on_event(TaskResult(
                        deployment=self._deployment, playbook=playbook, host=host, task=task,
                        status="changed" if status == "ok" and changed else status,  # type: ignore[arg-type]
                        seconds=float(duration) if isinstance(duration, int | float) else None,
                    ))  # fmt: skip
                stdout = event.get("stdout")
                if stdout:
                    for line in str(stdout).splitlines():
                        if line.strip():
                            clean = self._redact(line)
                            tail.append(clean)
                            self._on_event(OutputLine(deployment=self._deployment, step=step, line=clean))
                return keep_event(event)

            files = [self._locate(play.playbook).absolute() for play in plays]
            if len(files) == 1:
                playbook_file = files[0]
            else:
                playbook_file = private / "together.yml"
                playbook_file.write_text(together_yaml(files))
            args = ["--extra-vars", f"@{vars_file}", *(["--check", "--diff"] if check else []), str(playbook_file)]
            config = ansible_runner.RunnerConfig(
                private_data_dir=str(private),
                project_dir=str(files[0].parent),
                binary=str(launcher),  # arms the parent-death signal, then becomes ansible-playbook
                inventory=str(inventory_file),
                limit=",".join(only) if only else plays[0].hosts if len(plays) == 1 else "all",
                cmdline=shlex.join(args),
                quiet=True,
                suppress_env_files=True,
                fact_cache_type="memory",  # facts (the hosts' environment among them) are not written either
                timeout=int(self._settings.ansible_timeout_s),
            )
            prepare_isolated(config, self._env(private, pinned=known_hosts is not None))
            # The console output shows task results too: kept in memory only. (prepare() resets this option
            # from the private dir's env/settings file, which there is none of.)
            config.suppress_output_file = True
            notify_argv(tuple(config.command))
            # ansible-runner stops ansible-playbook when cancel_callback returns True.
            interrupted = threading.Event()  # Ctrl-C or SIGTERM while the playbook runs
            runner = ansible_runner.Runner(
                config=config, event_handler=on_runner_event,
                cancel_callback=lambda: self._cancel.is_set() or interrupted.is_set(),
            )  # fmt: skip
            with signals_set(interrupted):
                runner.run()
            ended[current] = ended[current] or time.monotonic()
            what = f"playbook {names[current]!r}" if len(names) == 1 else f"playbooks {', '.join(names)}"
            if interrupted.is_set():
                raise KeyboardInterrupt(f"{what} interrupted; ansible-playbook was stopped")
            if runner.status == "canceled":
                raise Cancelled(f"{what} cancelled", step=step)
            if runner.status != "successful" or failures:
                failed = names[failed_in[0] if failed_in else current]
                shown = "; ".join(f"{h}: {t}: {m}" for h, t, m in failures[:10]) or (
                    f"status {runner.status}: " + (" | ".join(tail) or "no output")
                )
                raise PlaybookError(
                    f"playbook {failed!r} failed in deployment {self._deployment!r} on "
                    f"{len({h for h, _, _ in failures}) or 'some'} host(s): {shown}",
                    playbook=failed,
                    failures=failures,
                    step=f"ansible.{'check.' if check else ''}{failed}",
                )
            stats = runner.stats or {}
            played: dict[str, PlaybookResult] = {}
            for i, play in enumerate(plays):
                per_host: dict[str, HostStats] = {}
                for host in inventory.in_group(play.hosts):
                    if only and host.name not in only:
                        continue
                    if len(plays) == 1:  # the play recap
                        per_host[host.name] = HostStats(
                            ok=stats.get("ok", {}).get(host.name, 0),
                            changed=stats.get("changed", {}).get(host.name, 0),
                            failed=stats.get("failures", {}).get(host.name, 0),
                            unreachable=stats.get("dark", {}).get(host.name, 0),
                            skipped=stats.get("skipped", {}).get(host.name, 0),
                        )
                    else:  # the recap counts the whole run: each playbook's share, from its task results
                        count = counted[i][host.name]
                        per_host[host.name] = HostStats(
                            ok=count["ok"], changed=count["changed"], failed=count["failed"],
                            unreachable=count["unreachable"], skipped=count["skipped"],
                        )  # fmt: skip
                played[play.playbook] = PlaybookResult(
                    playbook=play.playbook, hosts=per_host, seconds=ended[i] - began[i],
                    changed_tasks=tuple(changed_tasks[i]),
                )  # fmt: skip
            return played
        finally:
            stop_leftovers(private)  # an Ansible worker the cancel's stop of the process group did not reach
            shutil.rmtree(private, ignore_errors=True)
