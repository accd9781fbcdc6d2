"""The two processes: the API server (uvicorn) and a worker, each built from the settings in the environment."""

from __future__ import annotations

import asyncio
import ipaddress

from umc_infra.blueprint.catalog import Catalog
from umc_infra.errors import ParamProblem, SettingsError
from umc_infra.service.app import LibraryPlanner, Service, create_app
from umc_infra.service.auth import JwtVerifier
from umc_infra.service.jobs import QUEUE, LibraryRunner, Runtime, build_app
from umc_infra.service.policy import Policy
from umc_infra.service.portal import portal_router
from umc_infra.service.settings import ServiceSettings, load_service_settings
from umc_infra.service.store import PgStore
from umc_infra.settings import SITE_FIELDS, load_settings


def _connector(settings: ServiceSettings):  # type: ignore[no-untyped-def]
    from procrastinate import PsycopgConnector

    return PsycopgConnector(conninfo=settings.database_url.get_secret_value(), min_size=1, max_size=8)


def build_service(settings: ServiceSettings | None = None) -> Service:
    """The API's service from ``UMC_SERVICE_*`` (database, issuer, policy) and ``UMC_*`` (the library's).

    Raises:
        SettingsError: A setting or the policy file is wrong (each named).
    """
    settings = settings or load_service_settings()
    library = load_settings()
    store = PgStore(settings.database_url)
    return Service(
        policy=Policy.load(settings.policy_file),
        verifier=JwtVerifier.for_issuer(settings.oidc_issuer, settings.oidc_audience),
        store=store,
        queue=build_app(_connector(settings), Runtime(store=store, runner=LibraryRunner())),
        catalog=Catalog.from_settings(library),
        planner=LibraryPlanner(),
        site={name: getattr(library, attr) for name, attr in SITE_FIELDS.items()},
    )


def check_host(host: str, *, allow_remote: bool) -> None:
    """Refuse to listen beyond loopback unless asked to (the API then needs TLS in front of it).

    Raises:
        SettingsError: ``host`` is not a loopback address and ``allow_remote`` is not set.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise SettingsError([ParamProblem(field="--host", message=f"{host} is not a loopback address",
                                          allowed="127.0.0.1 (or pass --allow-remote, behind TLS)")])  # fmt: skip


def serve(*, host: str, port: int, allow_remote: bool = False) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    check_host(host, allow_remote=allow_remote)
    settings = load_service_settings()
    app = create_app(build_service(settings))
    app.include_router(portal_router(settings))
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)


async def _work(settings: ServiceSettings, *, concurrency: int) -> None:
    store = PgStore(settings.database_url)
    policy = Policy.load(settings.policy_file)
    app = build_app(_connector(settings), Runtime(store=store, runner=LibraryRunner(), policy=policy))
    try:
        async with app.open_async():
            await store.ensure_schema()
            await app.run_worker_async(queues=[QUEUE], concurrency=concurrency, install_signal_handlers=True)
    finally:
        await store.close()


def work(*, concurrency: int = 1) -> None:
    """Run a worker until interrupted: it takes jobs from the queue and runs the library in this process."""
    settings = load_service_settings()
    load_settings()  # the library's settings must be valid before a job is taken
    asyncio.run(_work(settings, concurrency=concurrency))
