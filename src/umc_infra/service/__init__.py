"""The self-service service: an HTTP API over the library, jobs on procrastinate (PostgreSQL), OIDC callers.

An optional extra (``pip install 'umc-infra[service]'``); the core library never imports this package (a
test checks). ``umc-infra serve`` and ``umc-infra worker`` run it. The modules behind this facade:

- :mod:`.settings`: :class:`ServiceSettings` (``UMC_SERVICE_*``);
- :mod:`.policy`: the policy file (departments, their blueprints, quotas and leases), :class:`Caller`, :class:`Access`;
- :mod:`.auth`: bearer tokens verified against the issuer's published keys;
- :mod:`.store`: the service's own tables (ownership, job events, audit) in the queue's database;
- :mod:`.quota`: what a request would use, counted without Terraform;
- :mod:`.leases`: which leases are due for a warning or their end;
- :mod:`.jobs`: the procrastinate app and its tasks (the worker runs the library in-process);
- :mod:`.app`: the FastAPI app; :mod:`.serve`: the two processes.
"""

from umc_infra.service.app import Service, create_app
from umc_infra.service.auth import JwtVerifier, TokenVerifier
from umc_infra.service.policy import Access, Caller, Policy
from umc_infra.service.serve import build_service
from umc_infra.service.settings import ServiceSettings, load_service_settings
from umc_infra.service.store import MemoryStore, PgStore, Store

__all__ = [
    "Access",
    "Caller",
    "JwtVerifier",
    "MemoryStore",
    "PgStore",
    "Policy",
    "Service",
    "ServiceSettings",
    "Store",
    "TokenVerifier",
    "build_service",
    "create_app",
    "load_service_settings",
]
