"""The service's settings come from UMC_SERVICE_* variables; a bad or missing one is named by its variable."""

import pytest

from umc_infra.errors import SettingsError
from umc_infra.service.settings import load_service_settings

ENV = {
    "UMC_SERVICE_DATABASE_URL": "postgresql://umc:pw-canary@127.0.0.1:18432/umc",
    "UMC_SERVICE_OIDC_ISSUER": "http://127.0.0.1:18200/v1/identity/oidc/",
    "UMC_SERVICE_OIDC_AUDIENCE": "umc-service",
    "UMC_SERVICE_POLICY_FILE": "/tmp/policy.yaml",
}


def test_settings_come_from_the_environment(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_service_settings()
    assert settings.oidc_issuer == "http://127.0.0.1:18200/v1/identity/oidc"  # no trailing slash
    assert "pw-canary" not in repr(settings)
    assert load_service_settings({"oidc_audience": "other"}).oidc_audience == "other"


@pytest.mark.parametrize(("name", "value"), [
    ("UMC_SERVICE_DATABASE_URL", "mysql://x"), ("UMC_SERVICE_OIDC_ISSUER", "not a url"),
    ("UMC_SERVICE_OIDC_AUDIENCE", ""),
])  # fmt: skip
def test_a_bad_setting_is_named_by_its_variable(monkeypatch, name, value):
    for key, good in ENV.items():
        monkeypatch.setenv(key, good)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_service_settings()
    assert [p.field for p in raised.value.problems] == [name]
    assert "pw-canary" not in str(raised.value)


def test_missing_settings_are_each_named(monkeypatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SettingsError) as raised:
        load_service_settings()
    assert sorted(p.field for p in raised.value.problems) == sorted(ENV)
