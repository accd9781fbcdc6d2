"""The fault and hostile-input suite: each case breaks something real on the sandbox, then checks that
nothing was lost (state consistent with vCenter, no duplicate VM, a correct record) and no secret leaked.

At the end it prints a summary: cases tried, survived.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import leaks as leaks_module
from tests.integration import conftest as integration
from tests.integration.conftest import vm_names
from tests.leaks import leaks, sandbox_secrets
from umc_infra import Settings, UmcInfraError, deployments, status
from umc_infra.private import is_running
from umc_infra.sandbox import Sandbox, SandboxInfo, _daemons, _s3
from umc_infra.state import lease as _lock
from umc_infra.state.ipam import held
from umc_infra.state.store import open_store
from umc_infra.terraform import statelock as _tflock

sandbox = integration.sandbox  # the one sandbox of the test run
info = integration.info

RESULTS: dict[str, str] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/resilience" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.serial)  # its faults are the whole sandbox's: nothing runs beside them


def pytest_runtest_logreport(report):
    counts = report.when == "call" or (report.outcome != "passed" and report.nodeid not in RESULTS)
    if "tests/resilience" in report.nodeid and counts:
        # A case marked xfail (a known library bug) was tried and did not survive: it is not a skip.
        RESULTS[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    survived = sum(outcome == "passed" for outcome in RESULTS.values())
    skipped = sum(outcome == "skipped" for outcome in RESULTS.values())
    terminalreporter.section("resilience")
    for nodeid, outcome in RESULTS.items():
        terminalreporter.write_line(f"{outcome:>8}  {nodeid.split('::', 1)[1]}")
    known = sum(outcome == "xfailed" for outcome in RESULTS.values())
    terminalreporter.write_line(f"cases tried: {len(RESULTS) - skipped}, survived: {survived}, skipped: {skipped}"
                                + (f", failing on a known library bug (xfail): {known}" if known else ""))  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(info: SandboxInfo) -> None:
    """VMs an earlier, aborted run of this suite left behind (every case's deployment starts with res-)."""
    for name in vm_names(info, "res-"):
        integration.destroy_vm(info, name)


@pytest.fixture(scope="session")
def secrets(sandbox, info: SandboxInfo) -> list[str]:
    """Every secret the sandbox holds (see :func:`tests.leaks.sandbox_secrets`)."""
    return sandbox_secrets(sandbox, info)


def site_settings(info: SandboxInfo, state_dir: Path) -> Settings:
    """A local backend in ``state_dir``, addresses outside every other suite's range (S3-backend cases use
    ``site.model_copy(update={"backend": "s3", "ip_pool": "127.0.1.220-127.0.1.229"})``)."""
    return info.settings(state_dir=state_dir, backend="local", ip_pool="127.0.1.200-127.0.1.219",
                         ssh_wait_timeout_s=60)  # fmt: skip


@pytest.fixture
def site(info: SandboxInfo, tmp_path: Path) -> Iterator[Settings]:
    """The case's own settings (:func:`site_settings`), its state in the case's temp dir.

    Afterwards the VMs of the deployments recorded there are removed: a case that failed before its destroy
    would leave them holding addresses that the next case, with a new state of its own, hands out again.
    """
    settings = site_settings(info, tmp_path / "state")
    yield settings
    remove_leftovers(info, settings)


def remove_leftovers(info: SandboxInfo, settings: Settings) -> None:
    """Remove the VMs of every deployment recorded in ``settings``' backend (those a failed case left behind)."""
    with contextlib.suppress(UmcInfraError):
        for record in deployments(settings=settings):
            for name in vm_names(info, f"{record.deployment}-"):
                integration.destroy_vm(info, name)


def scanned_places(site: Settings) -> tuple[Path, ...]:
    """Where a run could leave files (see :func:`tests.leaks.scanned_places`)."""
    return leaks_module.scanned_places(site.state_dir)


def _in_a_live_run(finding: str) -> bool:
    """A finding in the private directory of a run that is still going on in another process (another test run
    shares the machine): a file in use, not one left behind. This process's own runs are over when it scans."""
    found = re.search(r" in /dev/shm/umc-run\.(\d+)\.(\d+)\.", finding)
    return found is not None and int(found[1]) != os.getpid() and is_running(int(found[1]), int(found[2]) or None)


def assert_no_secret(secrets: list[str], *texts: str, directories: tuple[Path, ...] = (), since: float = 0.0) -> None:
    """No secret in the texts, nor in any file left under the directories."""
    found = [f for f in leaks(secrets, *texts, directories=directories, since=since) if not _in_a_live_run(f)]
    assert not found, found


def terraform_state(info: SandboxInfo, site: Settings, deployment: str, module: str) -> dict:
    """A module's Terraform state as the backend holds it (local file or S3 object); {} if none."""
    if site.backend == "s3":
        s3, _ = _s3.clients(info.s3_endpoint, info.inventory.region)
        try:
            body = s3.get_object(Bucket=info.inventory.state_bucket, Key=_tflock.state_key(deployment, module))["Body"]
        except s3.exceptions.NoSuchKey:
            return {}
        return json.loads(body.read() or b"{}")
    path = site.state_dir / "state" / "terraform" / deployment / f"{module}.tfstate"
    return json.loads(path.read_text() or "{}") if path.exists() else {}


def state_vm_names(state: dict) -> list[str]:
    return sorted(
        instance["attributes"]["name"]
        for resource in state.get("resources", [])
        if resource.get("type") == "vsphere_virtual_machine" and resource.get("mode") == "managed"  # not the template
        for instance in resource.get("instances", [])
    )  # fmt: skip


def assert_agree(
    info: SandboxInfo, site: Settings, deployment: str, *, vms: int, module: str | tuple[str, ...] = "vm"
) -> None:
    """vCenter, Terraform's state, the record, the address claims and the lease agree.

    vCenter has exactly ``vms`` VMs of the deployment, each once; the state knows exactly those; the last run
    is not left "running"; an active record lists those hosts; the deployment holds one claim per VM; nobody
    holds its lease; and no tool of a run is left running. ``module``: the blueprint's VM module, or all of them
    (``("db", "web")``).
    """
    names = vm_names(info, f"{deployment}-")
    assert len(names) == len(set(names)) == vms, names
    modules = (module,) if isinstance(module, str) else module
    assert sorted(n for m in modules for n in state_vm_names(terraform_state(info, site, deployment, m))) == names
    record = status(deployment, settings=site)
    assert record.last_run is not None and record.last_run.outcome != "running", record.last_run
    if record.state == "active":
        assert sorted(h.name for h in record.hosts) == names
    store = open_store(site)
    assert sum(len(held(store, deployment=deployment, module=m)) for m in modules) == vms
    assert _lock.holder(store, deployment) is None
    assert no_tool_left_running(deployment=deployment), tools_running(deployment)


def assert_consistent(info: SandboxInfo, site: Settings, deployment: str, *, vms: int) -> None:
    """vCenter has exactly ``vms`` VMs of the deployment, each once, and the record lists the same hosts."""
    names = vm_names(info, f"{deployment}-")
    assert len(names) == len(set(names)) == vms, names
    record = status(deployment, settings=site)
    if record.state == "active":
        assert sorted(h.name for h in record.hosts) == names


def _belongs_to(pid: str, deployment: str) -> bool:
    """Whether a tool process works for ``deployment``: Terraform and its providers run in the module's working
    directory ``<state_dir>/work/<deployment>/<module>``; ansible-playbook's arguments name the run's private
    directory, whose ``owner.json`` names the deployment (a tool whose directory is gone counts as ours)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    if f"/work/{deployment}/" in cwd + "/":
        return True
    for run_dir in {Path(*Path(a).parts[:4]) for a in cmdline.replace("@", "\0").split("\0")
                    if a.startswith("/dev/shm/umc-run.")}:  # fmt: skip
        try:
            return json.loads((run_dir / "owner.json").read_text()).get("deployment") == deployment
        except (OSError, ValueError):
            return True
    return False


def tools_running(deployment: str | None = None) -> list[str]:
    """terraform, its provider plugins and ansible-playbook processes (of ``deployment``'s runs only, if given:
    other test runs share the machine)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [Path(a).name for a in cmdline.read_bytes().decode(errors="replace").split("\0")[:2] if a]
        except OSError:
            continue
        tool = any(a == "terraform" or a.startswith("terraform-provider-") or a == "ansible-playbook" for a in argv)
        if tool and (deployment is None or _belongs_to(cmdline.parent.name, deployment)):
            found.append(" ".join(argv))
    return found


def no_tool_left_running(timeout: float = 10, *, deployment: str | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while tools_running(deployment):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """A process stopped (SIGSTOP) for the block: it holds its sockets and memory but answers nothing."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def daemon_pid(sandbox: Sandbox, name: str) -> int:
    """The pid of one of the sandbox's daemons (``vcsim``, ``vault``, ``s3``)."""
    daemon = _daemons.running(sandbox.paths.pids, name)
    assert daemon is not None, f"{name} is not running"
    return daemon.pid


def on_s3(site: Settings) -> Settings:
    """The case's settings on the sandbox's S3 backend (shared bucket and lock table), with the suite's S3 pool."""
    return site.model_copy(update={"backend": "s3", "ip_pool": "127.0.1.220-127.0.1.229"})


def forget_s3(info: SandboxInfo, deployment: str) -> None:
    """Remove what an earlier, aborted session left of ``deployment`` in the shared S3 backend: its record, lease,
    host keys and address claims, its Terraform states and state locks (its VMs are gone: see no_leftovers)."""
    s3, dynamodb = _s3.clients(info.s3_endpoint, info.inventory.region)
    bucket = info.inventory.state_bucket
    keys = [f"umc/locks/{deployment}.json"]
    for prefix in (f"deployments/{deployment}/", f"umc/deployments/{deployment}/", f"umc/hostkeys/{deployment}/"):
        keys += [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    for claim in s3.list_objects_v2(Bucket=bucket, Prefix="umc/ipam/").get("Contents", []):
        with contextlib.suppress(ValueError, AttributeError):
            body = s3.get_object(Bucket=bucket, Key=claim["Key"])["Body"].read()
            if json.loads(body).get("deployment") == deployment:
                keys.append(claim["Key"])
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
    table = info.inventory.lock_table
    for item in dynamodb.scan(TableName=table).get("Items", []):
        if item["LockID"]["S"].startswith(f"{bucket}/deployments/{deployment}/"):
            dynamodb.delete_item(TableName=table, Key={"LockID": item["LockID"]})


CHILD = textwrap.dedent("""
    import json, sys, threading
    from umc_infra import Provisioner, UmcInfraError
    operation, deployment, params, pause, where = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:5]), sys.argv[5]
    def show(event):
        data = event.model_dump(mode="json")
        print(json.dumps(data), flush=True)
        if pause and all(data.get(k) == v for k, v in pause.items()):
            pause.clear()
            sys.stdin.readline()  # the test breaks something, then lets the run go on
    def main():
        p = Provisioner(on_event=show)
        try:
            if operation == "provision":
                result = p.provision("linux-server", params, deployment=deployment)
            elif operation == "plan":
                result = p.plan("linux-server", params, deployment=deployment)
            else:
                result = p.drift(deployment)
        except UmcInfraError as exc:
            print(json.dumps({"kind": "error", "type": type(exc).__name__, "step": exc.step, "message": str(exc)}),
                  flush=True)
            return
        print(json.dumps({"kind": "result", "result": result.model_dump(mode="json")}), flush=True)
    if where == "thread":  # a worker thread provisions; the main thread only waits for it
        worker = threading.Thread(target=main)
        worker.start()
        worker.join()
    else:
        main()
""")


class Child:
    """A separate Python process running one operation (as a CI job would), its events read as JSON lines.

    ``pause`` (fields of an event) stops the run after it printed the first such event, until :meth:`go`.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        try:
            line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"child {self.pid}: no event in time; last: {self.events[-3:]}") from None
        if line is None:
            return None
        event = json.loads(line)
        self.events.append(event)
        return event

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 180) -> dict[str, Any]:
        """The first (next) event for which ``predicate`` holds; fails if the child ends first."""
        deadline = time.monotonic() + timeout
        while (event := self._next(deadline)) is not None:
            if predicate(event):
                return event
        raise AssertionError(f"child {self.pid} ended first ({self.proc.wait()}): {self.events[-3:]} {self.stderr}")

    def go(self) -> None:
        """Let a paused run go on."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self, *, timeout: float = 300) -> int:
        """Wait for the child to end; its return code (negative: killed by that signal)."""
        deadline = time.monotonic() + timeout
        while self._next(deadline) is not None:
            pass
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        return code

    @property
    def outcome(self) -> dict[str, Any] | None:
        """The ``result`` or ``error`` line the child printed last, if any."""
        return next((e for e in reversed(self.events) if e["kind"] in ("result", "error")), None)

    @property
    def text(self) -> str:
        """Everything the child printed (for the secret scan)."""
        return "\n".join(json.dumps(e) for e in self.events) + "\n" + self.stderr


def child_env(info: SandboxInfo, site: Settings, **extra: str) -> dict[str, str]:
    """The environment of a CI job on the sandbox with the case's settings (state dir, backend, pool, timeouts)."""
    return dict(os.environ) | info.environment() | {
        "UMC_STATE_DIR": str(site.state_dir), "UMC_BACKEND": site.backend, "UMC_IP_POOL": str(site.ip_pool),
        "UMC_SSH_WAIT_TIMEOUT": str(site.ssh_wait_timeout_s), "UMC_STATE_TIMEOUT": str(site.state_timeout_s),
        "UMC_LEASE_TTL": str(site.lease_ttl_s), "UMC_LOCK_TIMEOUT": str(site.lock_timeout_s),
    } | extra  # fmt: skip


def child(
    info: SandboxInfo,
    site: Settings,
    deployment: str,
    *,
    operation: str = "provision",
    params: dict[str, Any] | None = None,
    pause: dict[str, Any] | None = None,
    thread: bool = False,
    **env: str,
) -> Child:
    """A separate process running ``operation`` (provision, plan, drift) of linux-server on ``deployment``."""
    argv = [sys.executable, "-c", CHILD, operation, deployment, json.dumps(params or {"instances": 1}),
            json.dumps(pause or {}), "thread" if thread else "main"]  # fmt: skip
    proc = subprocess.Popen(argv, env=child_env(info, site, **env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    return Child(proc)


def umc_infra(info: SandboxInfo, site: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The ``umc-infra`` command with the case's settings."""
    command = Path(sys.executable).parent / "umc-infra"
    return subprocess.run([str(command), *args], env=child_env(info, site, **env), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def run_dirs(pid: int) -> list[Path]:
    """The private directories of the runs of process ``pid`` still in /dev/shm."""
    return sorted(Path("/dev/shm").glob(f"umc-run.{pid}.*"))
