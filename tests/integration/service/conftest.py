"""The service's integration tests run on the sandbox's PostgreSQL (Debian's server, on loopback).

Each test gets a database of its own on it, made as the sandbox's service role and dropped afterwards, so the
tests never see each other's jobs, and the sandbox's own ``umc`` database is left to the service it runs.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from pydantic import SecretStr

from umc_infra.sandbox import SandboxInfo


@pytest.fixture(scope="session")
def postgres_server(info: SandboxInfo) -> str:
    """``postgresql://umc:<pw>@127.0.0.1:<port>``: the sandbox's server as its service role (no database part)."""
    return info.database_url.get_secret_value().rsplit("/", 1)[0]


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[SecretStr]:
    """A new, empty database on ``server``, dropped (with whatever still holds it) afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # a generated name, not input
    try:
        yield SecretStr(f"{server}/{name}")
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(postgres_server: str) -> Iterator[SecretStr]:
    """A database of the test's own on the sandbox's server."""
    with fresh_database(postgres_server) as url:
        yield url
