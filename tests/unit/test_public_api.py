"""The public facade is curated: these tests pin what users may import."""

import umc_infra
import umc_infra.sandbox


def test_top_level_exports_are_pinned():
    assert sorted(umc_infra.__all__) == [
        "Actor",
        "AddressError",
        "AnsibleTool",
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
        "DoctorCheck",
        "DoctorReport",
        "DriftReport",
        "Event",
        "ExitCode",
        "Forbidden",
        "GuestNotRunning",
        "GuestsTool",
        "HookContext",
        "HookError",
        "Host",
        "HostKeyChanged",
        "HostStats",
        "InternalError",
        "InvalidStateKey",
        "InventoryError",
        "LockInfo",
        "MissingDependency",
        "NotFound",
        "OutputLine",
        "ParamChange",
        "ParamProblem",
        "ParamsError",
        "PlanChanged",
        "PlanResult",
        "Play",
        "PlaybookError",
        "PlaybookResult",
        "PortInUse",
        "ProcessError",
        "ProcessFailed",
        "ProcessNotStarted",
        "ProcessTimeout",
        "ProvisionResult",
        "Provisioner",
        "QuotaExceeded",
        "RealTools",
        "RecoveryError",
        "RequestConflict",
        "ResourceChange",
        "ResourceChanged",
        "RollbackFailed",
        "RootRequired",
        "RunOptions",
        "RunRecord",
        "SandboxDamaged",
        "SandboxError",
        "SandboxNotFound",
        "SecretError",
        "SecretSource",
        "ServiceError",
        "Settings",
        "SettingsError",
        "SshUnreachable",
        "StateBackendError",
        "StepFinished",
        "StepStarted",
        "TaskResult",
        "TerraformError",
        "TerraformTool",
        "ToolContext",
        "ToolMissing",
        "ToolTooOld",
        "Tools",
        "UmcInfraError",
        "Unauthenticated",
        "UnknownSandboxUser",
        "UnresolvedReference",
        "UnsafeArgv",
        "VCenterError",
        "__version__",
        "deployments",
        "destroy",
        "doctor",
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
        "scratch_database",
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
