"""Sessions: tests (unit + integration on the sandbox), units (unit tests on every Python here), lint, typecheck,
demo, bench, constraints. Every install uses constraints.txt: the tested set."""

import glob
import os
import shutil
import subprocess
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = False

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")
# pyenv keeps each version in a directory of its own, off PATH unless selected: look there too.
for bin_dir in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin"))):
    os.environ["PATH"] += os.pathsep + bin_dir
PYTHONS = [v for v in ("3.11", "3.12", "3.13", "3.14", "3.15") if shutil.which(f"python{v}")]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests; the integration tests bring the sandbox up once (as root).

    Without arguments, in two phases on one sandbox (brought up first, stopped at the end if this session
    started it): every case not marked ``serial`` on two workers (three were measured: 19 min 58 s against
    20 min 11 s, the two cores being the limit), a test file per worker (a module's shared
    deployments stay in one process; each file has its own deployment names and address range), then the
    ``serial`` cases one by one (faults of the whole sandbox: the simulator killed, S3 frozen, the guest agent
    held). Arguments go to one plain pytest run. The blueprint package in tests/fixtures is installed as a
    user would install one (not editable). (pytest-xdist 3.8's ``--dist loadgroup`` did not keep an
    ``xdist_group`` together under pytest 9.2 here, so the serial cases are a phase of their own.)
    """
    session.install(*CONSTRAINTS, "-e", ".[test]", "./tests/fixtures/umc-lab-blueprints")
    if session.posargs:
        session.run("pytest", *session.posargs)
        return
    status = subprocess.run([f"{session.bin}/umc-infra", "sandbox", "status"], capture_output=True, check=False)
    session.run("umc-infra", "sandbox", "up")
    failed = []
    try:
        for phase, argv in (
            ("parallel", ["-n", "2", "--dist", "loadfile", "-m", "not serial"]),
            ("serial", ["-m", "serial"]),
        ):
            try:
                session.run("pytest", *argv, "tests")
            except CommandFailed:
                failed.append(phase)
    finally:
        if status.returncode != 0:  # it was not running: this session started it
            session.run("umc-infra", "sandbox", "down")
    if failed:
        session.error(f"tests failed in the {' and '.join(failed)} phase")


@nox.session(python=PYTHONS)
def units(session: nox.Session) -> None:
    """The unit tests (no sandbox) on every Python from 3.11 up that this machine has."""
    session.install(*CONSTRAINTS, "-e", ".[test]", "./tests/fixtures/umc-lab-blueprints")
    session.run("pytest", *(session.posargs or ["tests/unit"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Bring the sandbox up and provision the web-server blueprint on it (2 VMs, nginx, pages)."""
    session.install(*CONSTRAINTS, "-e", ".[sandbox]")
    session.run("umc-infra", "sandbox", "demo")
    session.log(
        'The sandbox keeps running: eval "$(umc-infra sandbox env)" to use it, umc-infra sandbox down to stop it.'
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """umc-infra against the raw Terraform and Ansible CLIs on the sandbox, and the service's API under load;
    writes benchmarks/results/latest.json."""
    session.install(*CONSTRAINTS, "-e", ".[sandbox,service]", "httpx2")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python=PYTHON)
def constraints(session: nox.Session) -> None:
    """Rewrite constraints.txt from a fresh install of the dev set (after a change of pyproject.toml's ranges)."""
    session.install("-e", ".[dev]", "./tests/fixtures/umc-lab-blueprints", "nox")
    frozen = session.run("pip", "freeze", "--exclude-editable", silent=True) or ""
    path = Path("constraints.txt")
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    pins = sorted(line for line in str(frozen).splitlines() if "==" in line and not line.startswith("umc-"))
    path.write_text("\n".join([*header, *pins]) + "\n")
