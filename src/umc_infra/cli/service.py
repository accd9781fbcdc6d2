"""``umc-infra serve`` and ``umc-infra worker``: the self-service API and its job workers (the ``service`` extra)."""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer

from umc_infra.cli.common import guarded
from umc_infra.errors import ToolMissing

_NEEDS = ("fastapi", "uvicorn", "procrastinate", "jwt", "psycopg")


def _check_extra() -> None:
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ToolMissing(f"the service needs its optional dependencies ({', '.join(missing)} missing): "
                          "pip install 'umc-infra[service]'", step="service")  # fmt: skip


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Listen beyond loopback (put TLS in front).")
    ] = False,
) -> None:
    """Run the self-service HTTP API (settings: UMC_SERVICE_* and the library's UMC_*)."""

    def run() -> None:
        _check_extra()
        from umc_infra.service.serve import serve as run_server

        run_server(host=host, port=port, allow_remote=allow_remote)

    guarded(run, "text")


def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Jobs this worker runs at once.")] = 1,
) -> None:
    """Run a job worker: takes queued requests and runs them with the library in this process."""

    def run() -> None:
        _check_extra()
        from umc_infra.service.serve import work

        work(concurrency=concurrency)

    guarded(run, "text")
