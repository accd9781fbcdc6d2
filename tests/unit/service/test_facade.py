"""The service's facade is pinned, and the core library never imports the service (an optional extra)."""

import subprocess
import sys

import umc_infra.service


def test_service_exports_are_pinned():
    assert sorted(umc_infra.service.__all__) == [
        "Access", "Caller", "JwtVerifier", "MemoryStore", "PgStore", "Policy", "Service", "ServiceSettings", "Store",
        "TokenVerifier", "build_service", "create_app", "load_service_settings",
    ]  # fmt: skip
    assert all(hasattr(umc_infra.service, name) for name in umc_infra.service.__all__)


PROBE = """
import sys
import umc_infra, umc_infra.cli.app, umc_infra.run.provisioner
{plant}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "procrastinate", "uvicorn", "starlette")
                or m.startswith("umc_infra.service"))
print(",".join(loaded))
"""


def loaded_by_the_core(plant: str = "") -> str:
    probe = PROBE.format(plant=plant)
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def test_the_core_library_and_its_cli_do_not_import_the_service():
    assert loaded_by_the_core() == ""


def test_control_an_import_of_the_service_is_seen():
    assert "umc_infra.service" in loaded_by_the_core("import umc_infra.service.policy")
