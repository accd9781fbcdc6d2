"""``umc-infra serve`` as a process on loopback: it opens the database, makes the schema and answers."""

import os

import psycopg
import pytest
import requests
import yaml

from ...unit.service.conftest import POLICY, make_token
from .conftest import served


@pytest.fixture
def service(database_url, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    env = {**os.environ, "UMC_SERVICE_DATABASE_URL": database_url.get_secret_value(),
           "UMC_SERVICE_OIDC_ISSUER": "http://127.0.0.1:9/v1/identity/oidc",  # nothing listens: keys unreachable
           "UMC_SERVICE_OIDC_AUDIENCE": "umc-service", "UMC_SERVICE_POLICY_FILE": str(policy),
           "UMC_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    with served(env, tmp_path / "serve.log") as url:
        yield url


def test_serve_answers_on_loopback_and_refuses_without_a_valid_token(service, database_url):
    assert requests.get(f"{service}/openapi.json", timeout=5).json()["info"]["title"] == "umc-infra self-service"
    bare = requests.get(f"{service}/api/deployments", timeout=5)
    assert bare.status_code == 401 and bare.headers["WWW-Authenticate"].startswith("Bearer")
    unverifiable = requests.get(f"{service}/api/deployments", timeout=10,
                                headers={"Authorization": f"Bearer {make_token('alice')}"})  # fmt: skip
    assert unverifiable.status_code == 401
    assert "keys cannot be read" in unverifiable.json()["detail"]["message"]
    with psycopg.connect(database_url.get_secret_value()) as conn:
        found = conn.execute("SELECT to_regclass('procrastinate_jobs'), to_regclass('umc_service_audit')").fetchone()
    assert found is not None and all(found)
