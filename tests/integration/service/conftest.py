"""The service's integration tests run on the sandbox's PostgreSQL (Debian's server, on loopback).

Each test gets a database of its own on it, made as the sandbox's service role and dropped afterwards, so the
tests never see each other's jobs, and the sandbox's own ``umc`` database is left to the service it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from umc_infra.sandbox import SandboxInfo, scratch_database

from ..conftest import free_port

UMC_INFRA = str(Path(sys.executable).parent / "umc-infra")


@pytest.fixture
def database_url(info: SandboxInfo) -> Iterator[SecretStr]:
    """A database of the test's own on the sandbox's server."""
    with scratch_database(info) as url:
        yield url


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``umc-infra <argv>`` as its own process (output to ``log``), stopped as Ctrl-C would stop it afterwards."""
    process = subprocess.Popen([UMC_INFRA, *argv], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def served(env: dict[str, str], log: Path) -> Iterator[str]:
    """``umc-infra serve`` on 127.0.0.1 and a free port; its URL once it answers."""
    url = f"http://127.0.0.1:{free_port()}"
    with running(["serve", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]], env, log) as process:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/openapi.json", timeout=2)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"umc-infra serve did not start: {log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield url


class Client:
    """A running service as its callers see it: its URL, the sandbox users' tokens, and its log."""

    def __init__(self, url: str, tokens: dict[str, str], log: Path) -> None:
        self.url, self.tokens, self.log = url, tokens, log
        self.job: int | None = None

    def call(self, method: str, path: str, user: str | None = "alice", *, headers: dict[str, str] | None = None,
             **kwargs: Any) -> requests.Response:  # fmt: skip
        sent = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return requests.request(method, f"{self.url}{path}", headers=sent | (headers or {}), timeout=60, **kwargs)

    def wait(self, job: int, user: str = "alice", timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.call("GET", f"/api/jobs/{job}", user).json()
            if found["state"] in ("succeeded", "failed", "cancelled"):
                return found
            assert time.monotonic() < deadline, f"job {job} still {found['state']}: {self.log.read_text()[-3000:]}"
            time.sleep(1)

    def events(self, job: int, user: str = "alice") -> list[tuple[int, str, dict[str, Any]]]:
        """The job's server-sent events as (id, kind, data), read as they come until the stream ends."""
        found = []
        with self.call("GET", f"/api/jobs/{job}/events", user, stream=True) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            block: dict[str, str] = {}
            for line in stream.iter_lines(decode_unicode=True):
                if line:
                    key, _, value = line.partition(": ")
                    block[key] = value
                elif block:
                    found.append((int(block["id"]), block["event"], json.loads(block["data"])))
                    block = {}
        return found
