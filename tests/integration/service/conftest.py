"""A throwaway PostgreSQL server for the service's integration tests (until the sandbox runs one).

The server comes from Debian's postgresql-15 binaries, runs as the ``postgres`` user when the tests run as
root (PostgreSQL refuses root), listens on 127.0.0.1 on a free port with password authentication, and is
removed at the end. Each test gets a fresh database on it. To use the sandbox's server instead, replace
``postgres_server`` with one that yields ``SandboxInfo.database_url``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """``postgresql://umc:<pw>@127.0.0.1:<port>`` of a server made for this test run (no database part)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}): apt-get install postgresql-15")
    root = Path(tempfile.mkdtemp(prefix="umc-service-pg-"))
    data, password = root / "data", secrets.token_hex(16)
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pw", "postgres", "postgres")
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "umc", "--auth=scram-sha-256",
                                 f"--pwfile={root / 'pw'}", "--no-sync", "-E", "UTF8"]),
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    (root / "pw").unlink()
    port = _free_port()
    server = subprocess.Popen(
        _as_postgres([str(PG_BIN / "postgres"), "-D", str(data), "-k", str(root), "-h", "127.0.0.1", "-p", str(port),
                      "-c", "fsync=off", "-c", "max_connections=60"]),
        stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"), start_new_session=True,
    )  # fmt: skip
    url = f"postgresql://umc:{password}@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"{url}/postgres", connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not start: {(root / 'server.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)  # fast shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: str) -> SecretStr:
    """A fresh, empty database on the throwaway server."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # a generated name, not input
    return SecretStr(f"{postgres_server}/{name}")
