"""A fake Vault: a real HTTP server on 127.0.0.1 that answers each path with a fixed status and body, and records
the requests it got (to see which auth method logged in, with what, and which token a read carried)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOKUP = "/v1/auth/token/lookup-self"
RENEW = "/v1/auth/token/renew-self"
READ = "/v1/kv/data/apps/h11"
APPROLE = "/v1/auth/approle/login"
JWT = "/v1/auth/jwt/login"
APPROLE_TOKEN = "hvs.from-approle-canary"
JWT_TOKEN = "hvs.from-jwt-canary"


def json_answer(document: object) -> tuple[bytes, str]:
    return json.dumps(document).encode(), "application/json"


def login_answer(token: str, ttl: int = 0) -> tuple[int, bytes, str]:
    return 200, *json_answer({"auth": {"client_token": token, "lease_duration": ttl, "renewable": True}})


OK = {
    LOOKUP: (200, *json_answer({"data": {"ttl": 0}})),
    READ: (200, *json_answer({"data": {"data": {"password": "s3cret"}, "metadata": {"deletion_time": ""}}})),
    APPROLE: login_answer(APPROLE_TOKEN),
    JWT: login_answer(JWT_TOKEN),
}


@dataclass(frozen=True)
class Request:
    """One request the fake got: its method, path, ``X-Vault-Token`` header and JSON body."""

    method: str
    path: str
    token: str | None
    body: dict[str, Any]


class FakeVault(ThreadingHTTPServer):
    """Answers each path with a fixed status, body and content type, optionally after a delay."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: dict[str, tuple[int, bytes, str]] = dict(OK)
        self.delay_s = 0.0
        self.requests: list[Request] = []

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (the timeout test) is expected: no traceback on another test's stderr."""

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        """The paths requested, in order."""
        return [r.path for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: FakeVault

    def _answer(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        self.server.requests.append(Request(self.command, path, self.headers.get("X-Vault-Token"), body))
        status, answer, content_type = self.server.answers.get(path, (404, *json_answer({"errors": []})))
        time.sleep(self.server.delay_s)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve() -> Iterator[FakeVault]:
    """A fake Vault serving on a thread until the block ends."""
    server = FakeVault()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
