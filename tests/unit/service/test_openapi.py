"""The API's OpenAPI document is published in docs/openapi.json: a portal team builds against that file, so it
must be exactly what `umc-infra serve` answers at /openapi.json.

After a change of the API: ``UMC_WRITE_OPENAPI=1 pytest tests/unit/service/test_openapi.py`` rewrites it.
"""

import json
import os
from pathlib import Path

from umc_infra.service.app import create_app

from .conftest import make_service

PUBLISHED = Path(__file__).parents[3] / "docs" / "openapi.json"


def test_the_published_openapi_document_is_what_the_api_serves():
    service, *_ = make_service()
    served = json.loads(json.dumps(create_app(service).openapi()))
    if os.environ.get("UMC_WRITE_OPENAPI"):
        PUBLISHED.write_text(json.dumps(served, indent=2, sort_keys=True) + "\n")
    assert json.loads(PUBLISHED.read_text()) == served, (
        "docs/openapi.json is not the API's document: UMC_WRITE_OPENAPI=1 pytest tests/unit/service/test_openapi.py"
    )


def test_the_fixed_outline_is_in_it():
    paths = json.loads(PUBLISHED.read_text())["paths"]
    assert {"/api/blueprints", "/api/deployments", "/api/deployments/{name}", "/api/jobs/{job}",
            "/api/jobs/{job}/events", "/api/audit", "/api/plans"} <= set(paths)  # fmt: skip
    assert set(paths["/api/deployments"]) == {"get", "post"} and "delete" in paths["/api/deployments/{name}"]
    assert "202" in paths["/api/deployments"]["post"]["responses"]
