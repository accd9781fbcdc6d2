"""The self-service service: an HTTP API over the library, jobs on procrastinate (PostgreSQL), OIDC callers.

An optional extra (``pip install 'umc-infra[service]'``); the core library never imports this package. Its
modules are private; this facade names what a caller builds on:

- :mod:`.settings`: :class:`ServiceSettings` (``UMC_SERVICE_*``);
- :mod:`.policy`: the policy file (departments, their blueprints, quotas and leases) and :class:`Caller`;
- :mod:`.auth`: bearer tokens verified against the issuer's keys;
- :mod:`.store`: the service's own tables (ownership, job events, audit);
- :mod:`.quota`: what a request would use, counted without Terraform;
- :mod:`.jobs`: the procrastinate app and its tasks (the worker runs the library in-process);
- :mod:`.app`: the FastAPI app.
"""

from __future__ import annotations

MISSING_EXTRA = "the service needs its optional dependencies: pip install 'umc-infra[service]'"
"""What to say when fastapi, uvicorn, procrastinate or PyJWT is missing."""
