"""The public facade is curated: these tests pin what users may import."""

import umc_infra
import umc_infra.sandbox


def test_top_level_exports_are_pinned():
    assert sorted(umc_infra.__all__) == [
        "Actor",
        "AddressError",
        "AttributeChange",
        "Blueprint",
        "BlueprintError",
        "BlueprintNotFound",
        "BlueprintProblem",
        "BuildFailed",
        "Cancelled",
        "ChangeCounts",
        "ComponentFailed",
        "ConfigChange",
        "DeploymentLocked",
        "DeploymentNotFound",
        "DeploymentRecord",
        "DestroyNotAllowed",
        "DestroyResult",
        "DriftReport",
        "Event",
        "HookContext",
        "HookError",
        "Host",
        "HostKeyChanged",
        "HostStats",
        "InternalError",
        "LockInfo",
        "MissingDependency",
        "OutputLine",
        "ParamProblem",
        "ParamsError",
        "PlanChanged",
        "PlanResult",
        "PlaybookError",
        "PlaybookResult",
        "PortInUse",
        "ProcessError",
        "ProcessTimeout",
        "ProvisionResult",
        "Provisioner",
        "ResourceChange",
        "ResourceChanged",
        "RunRecord",
        "SandboxError",
        "SecretError",
        "SecretSource",
        "Settings",
        "SettingsError",
        "StateBackendError",
        "StepFinished",
        "StepStarted",
        "TaskResult",
        "TerraformError",
        "UmcInfraError",
        "__version__",
        "deployments",
        "destroy",
        "drift",
        "load_settings",
        "plan",
        "provision",
        "status",
    ]


def test_sandbox_exports_are_pinned():
    assert sorted(umc_infra.sandbox.__all__) == [
        "ComponentStatus",
        "Guest",
        "GuestVM",
        "Sandbox",
        "SandboxInfo",
        "SandboxInventory",
        "SandboxSettings",
        "SandboxStatus",
    ]


def test_every_export_exists():
    for module in (umc_infra, umc_infra.sandbox):
        for name in module.__all__:
            assert getattr(module, name) is not None, name


def test_every_error_derives_from_the_root():
    for name in umc_infra.__all__:
        obj = getattr(umc_infra, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, umc_infra.UmcInfraError), name


def test_error_names_its_step():
    err = umc_infra.SandboxError("vault did not start", step="sandbox.vault")
    assert str(err) == "[sandbox.vault] vault did not start"
    assert err.step == "sandbox.vault"
