"""The fault and hostile-input suite: each case breaks something real on the sandbox, then checks that
nothing was lost (state consistent with vCenter, no duplicate VM, a correct record) and no secret leaked.

At the end it prints a summary: cases tried, survived.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import conftest as integration
from tests.integration.conftest import read_secret, vm_names
from umc_infra import Settings, status
from umc_infra.sandbox import SandboxInfo

sandbox = integration.sandbox  # the one sandbox of the test run
info = integration.info

RESULTS: dict[str, str] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/resilience" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_logreport(report):
    counts = report.when == "call" or (report.outcome != "passed" and report.nodeid not in RESULTS)
    if "tests/resilience" in report.nodeid and counts:
        RESULTS[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    survived = sum(outcome == "passed" for outcome in RESULTS.values())
    skipped = sum(outcome == "skipped" for outcome in RESULTS.values())
    terminalreporter.section("resilience")
    for nodeid, outcome in RESULTS.items():
        terminalreporter.write_line(f"{outcome:>8}  {nodeid.split('::', 1)[1]}")
    terminalreporter.write_line(f"cases tried: {len(RESULTS) - skipped}, survived: {survived}, skipped: {skipped}")


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(info: SandboxInfo) -> None:
    """VMs an earlier, aborted run of this suite left behind (every case's deployment starts with res-)."""
    for name in vm_names(info, "res-"):
        integration.destroy_vm(info, name)


@pytest.fixture(scope="session")
def secrets(info: SandboxInfo) -> list[str]:
    """Every credential a leak would show: vSphere password, SSH key lines, Vault token and secret id."""
    key = read_secret(info, info.inventory.vault_ansible_path)["ssh_private_key"].strip().splitlines()[1:-1]
    return [read_secret(info, info.inventory.vault_vsphere_path)["password"], *key,
            info.vault_token.get_secret_value(), info.vault_secret_id.get_secret_value()]  # fmt: skip


@pytest.fixture
def site(info: SandboxInfo, tmp_path: Path) -> Settings:
    """A local backend of the case's own, addresses outside every other suite's range."""
    return info.settings(state_dir=tmp_path / "state", backend="local", ip_pool="127.0.1.200-127.0.1.239",
                         ssh_wait_timeout_s=60)  # fmt: skip


def assert_no_secret(secrets: list[str], *texts: str, directories: tuple[Path, ...] = ()) -> None:
    """No secret in the texts, nor in any file left under the directories."""
    for text in texts:
        for secret in secrets:
            assert secret not in text
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 20_000_000:
                data = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, f"{secret[:4]}... in {path}"


def assert_consistent(info: SandboxInfo, site: Settings, deployment: str, *, vms: int) -> None:
    """vCenter has exactly ``vms`` VMs of the deployment, each once, and the record lists the same hosts."""
    names = vm_names(info, f"{deployment}-")
    assert len(names) == len(set(names)) == vms, names
    record = status(deployment, settings=site)
    if record.state == "active":
        assert sorted(h.name for h in record.hosts) == names


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """A process stopped (SIGSTOP) for the block: it holds its sockets and memory but answers nothing."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
