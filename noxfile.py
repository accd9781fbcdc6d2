"""Sessions: tests (unit + integration on the sandbox), lint, typecheck, demo, bench."""

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests; the integration tests bring the sandbox up once (as root).

    The blueprint package in tests/fixtures is installed as a user would install one (not editable).
    """
    session.install("-e", ".[test]", "./tests/fixtures/umc-lab-blueprints")
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Bring the sandbox up and provision the web-server blueprint on it (2 VMs, nginx, pages)."""
    session.install("-e", ".[sandbox]")
    session.run("umc-infra", "sandbox", "demo")
    session.log(
        'The sandbox keeps running: eval "$(umc-infra sandbox env)" to use it, umc-infra sandbox down to stop it.'
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """umc-infra against the raw Terraform and Ansible CLIs on the sandbox; writes benchmarks/results/latest.json."""
    session.install("-e", ".[sandbox]")
    session.run("python", "benchmarks/bench.py", *session.posargs)
