"""The simulator build lays govmomi 0.28's clone fix (a copy of the devices) over Debian's govmomi 0.24."""

import json
from pathlib import Path

import pytest

from umc_infra import BuildFailed
from umc_infra.sandbox import _vcsim

SHARED = "\t\tdefaultDevices := object.VirtualDeviceList(esx.VirtualDevice)\n\t\tdevices := vm.Config.Hardware.Device\n"
CLONE = f"func (vm *VirtualMachine) CloneVMTask() {{\n{SHARED}\t\tfor _, device := range devices {{}}\n}}\n"
DEBIAN = _vcsim.SIMULATOR_SOURCE / "virtual_machine.go"


def test_the_clone_gets_a_copy_of_the_devices_and_nothing_else_changes():
    files = _vcsim.clone_fix_overlay(CLONE)
    assert sorted(files) == ["umc_clone_device.go", "virtual_machine.go"]
    assert "\t\tdevices := vm.cloneDevice()\n" in files["virtual_machine.go"]
    assert files["virtual_machine.go"].replace("vm.cloneDevice()", "vm.Config.Hardware.Device") == CLONE
    helper = files["umc_clone_device.go"]
    assert helper.startswith("package simulator\n")
    assert "func (vm *VirtualMachine) cloneDevice() []types.BaseVirtualDevice {" in helper
    assert "deepCopy(src, &dst)" in helper


def test_a_source_that_copies_already_needs_no_overlay():
    fixed = CLONE.replace("vm.Config.Hardware.Device", "vm.cloneDevice()") + (
        "func (vm *VirtualMachine) cloneDevice() []types.BaseVirtualDevice { return nil }\n"
    )
    assert _vcsim.clone_fix_overlay(fixed) == {}


@pytest.mark.parametrize(
    "source",
    [
        "",
        CLONE.replace("devices := vm.Config", "devices := vm.config"),  # a govmomi this fix does not know
        CLONE + CLONE,  # ambiguous: which clone is CloneVM_Task?
    ],
)
def test_an_unknown_govmomi_is_a_build_error_that_says_what_to_install(source):
    with pytest.raises(BuildFailed, match=r"neither govmomi 0\.24 .* Install Debian bookworm's") as info:
        _vcsim.clone_fix_overlay(source)
    assert info.value.step == "sandbox.vcsim.build"


@pytest.mark.skipif(not DEBIAN.exists(), reason="Debian's govmomi source is not installed")
def test_debians_govmomi_gets_exactly_its_clone_line_changed_and_new_disks_a_uuid():
    import difflib

    source = DEBIAN.read_text()
    patched = _vcsim.clone_fix_overlay(source)["virtual_machine.go"]
    diff = difflib.ndiff(source.splitlines(), patched.splitlines())
    assert [line for line in diff if line[:2] in ("- ", "+ ")] == [
        '+ \t\t\t\tif disk.Uuid == "" {',
        "+ \t\t\t\t\tdisk.Uuid = uuid.New().String()",
        "+ \t\t\t\t}",
        "- \t\tdevices := vm.Config.Hardware.Device",
        "+ \t\tdevices := vm.cloneDevice()",
    ]


@pytest.mark.parametrize(
    ("overlay", "argv"),
    [
        (None, ["go", "build", "-o", "/b/umc-vcsim", "."]),
        (Path("/t/overlay.json"), ["go", "build", "-overlay", "/t/overlay.json", "-o", "/b/umc-vcsim", "."]),
    ],
)
def test_go_build_argv(overlay, argv):
    assert _vcsim.go_build_argv(Path("/b/umc-vcsim"), overlay=overlay) == argv


def test_the_overlay_maps_each_package_file_to_its_replacement(tmp_path):
    files = _vcsim.clone_fix_overlay(CLONE)
    overlay = _vcsim.write_overlay(files, tmp_path / "overlay")
    assert overlay is not None
    replace = json.loads(overlay.read_text())["Replace"]
    assert sorted(replace) == sorted(str(_vcsim.SIMULATOR_SOURCE / name) for name in files)
    for name, text in files.items():
        assert Path(replace[str(_vcsim.SIMULATOR_SOURCE / name)]).read_text() == text
    assert _vcsim.write_overlay({}, tmp_path / "none") is None


REGISTRY = "func (r *Registry) Get(ref types.ManagedObjectReference) mo.Reference {\n\treturn r.objects[ref]\n}\n"


def test_a_cluster_is_found_by_a_compute_resource_reference_and_nothing_else_changes():
    patched = _vcsim.registry_fix_overlay(REGISTRY)["registry.go"]
    assert patched.startswith("func (r *Registry) Get(ref types.ManagedObjectReference) mo.Reference {\n")
    assert 'ok || ref.Type != "ComputeResource"' in patched
    assert 'Type: "ClusterComputeResource", Value: ref.Value' in patched
    assert _vcsim.registry_fix_overlay(patched) == {}  # applied once only
    assert _vcsim.registry_fix_overlay("package simulator\n") == {}  # a govmomi that looks objects up otherwise


@pytest.mark.skipif(not (_vcsim.SIMULATOR_SOURCE / "registry.go").exists(), reason="no govmomi source")
def test_debians_registry_gets_exactly_its_lookup_changed():
    import difflib

    source = (_vcsim.SIMULATOR_SOURCE / "registry.go").read_text()
    patched = _vcsim.registry_fix_overlay(source)["registry.go"]
    changed = [line for line in difflib.ndiff(source.splitlines(), patched.splitlines()) if line[:2] in ("- ", "+ ")]
    assert changed[0] == "- \treturn r.objects[ref]" and len(changed) == 5
