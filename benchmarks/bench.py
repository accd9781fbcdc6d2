"""umc-infra against the raw tools, on the sandbox: ``nox -s bench``.

In one run, alternating A (the library) and B (the same work as a raw CLI pipeline) several times:

- provision web-server with 2 VMs (new), a no-change re-provision, and a no-change plan;
- scaling: 1, 5 and 20 VMs in one deployment; 1, 4 and 8 deployments at once (threads);
- ``terraform init`` of a deployment with the shared provider mirror and plugin cache vs a cold cache;
- the peak resident memory of a process that provisions;
- the self-service API under load (:mod:`load`): 50 concurrent clients listing, planning and requesting on
  ``umc-infra serve``; the latency of its read endpoints (``service_load``).

It prints a table and writes JSON (``benchmarks/results/latest.json`` by default). Figures are medians;
a ratio is A / B (1.00 means no overhead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hvac
import yaml
from rich.console import Console
from rich.table import Table

from umc_infra import Settings, destroy, plan, provision
from umc_infra.events import ignore
from umc_infra.private import private_root
from umc_infra.process import Redactor
from umc_infra.sandbox import Sandbox, SandboxInfo
from umc_infra.terraform.runner import Terraform

sys.path.insert(0, str(Path(__file__).parent))
from load import service_load  # benchmarks/ is not a package

ROOT = Path(__file__).resolve().parents[1]
POOL = "127.0.1.160-127.0.1.229"  # the library's deployments (outside the sandbox's own pool)
RAW_IPS = ["127.0.1.240", "127.0.1.241"]  # the raw pipeline's two VMs
console = Console(stderr=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- B: the raw CLI pipeline ------------------------------------------------------------------------


class RawPipeline:
    """The same work as ``provision("web-server", {"instances": 2})``, as a pipeline without umc-infra.

    It reads Vault, runs terraform init and apply (or plan), output -json, writes an inventory, waits for
    SSH, and runs ansible-playbook base and web.

    It uses the same Terraform binary, provider mirror and plugin cache, and the same Ansible connection
    settings (pipelining, SSH multiplexing, forks), so the comparison is of the wrapper alone.
    """

    def __init__(self, info: SandboxInfo, settings: Settings, work: Path) -> None:
        self.info = info
        self.settings = settings
        self.work = work
        self.control = Path(tempfile.mkdtemp(prefix="umc-bench-cp-", dir=private_root()))
        terraform = Terraform(settings, on_event=ignore, redactor=Redactor(), deployment="bench-raw",
                              private_dir=self.control)  # fmt: skip
        self.terraform = terraform.binary
        self.terraformrc = terraform.config_file()
        self.ansible_playbook = str(Path(sys.executable).parent / "ansible-playbook")
        # SSH control sockets need a short path (108 bytes): in memory, as the library keeps them (self.control)

    def secrets(self) -> dict[str, str]:
        client = hvac.Client(url=self.info.vault_addr)
        client.auth.approle.login(role_id=self.info.vault_role_id,
                                  secret_id=self.info.vault_secret_id.get_secret_value())  # fmt: skip
        read = client.secrets.kv.v2.read_secret_version
        mount = self.info.inventory.vault_mount
        inv = self.info.inventory
        vsphere = read(path=inv.vault_vsphere_path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]
        ansible = read(path=inv.vault_ansible_path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]
        return {"vsphere_user": vsphere["user"], "vsphere_password": vsphere["password"],
                "ssh_private_key": ansible["ssh_private_key"], "ssh_public_key": ansible["ssh_public_key"]}  # fmt: skip

    def prepare(self, deployment: str) -> Path:
        """The working directory a person would set up once: the module and its tfvars (untimed)."""
        workdir = self.work / deployment
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        for tf in (ROOT / "modules" / "vsphere-vm").glob("*.tf"):
            shutil.copy2(tf, workdir / tf.name)
        s = self.settings
        tfvars = {
            "vsphere_server": s.vsphere_server, "allow_unverified_ssl": s.vsphere_allow_unverified_ssl,
            "datacenter": s.vsphere_datacenter, "cluster": s.vsphere_cluster, "host": s.vsphere_host,
            "datastore": s.vsphere_datastore, "network": s.vsphere_network, "folder": s.vsphere_folder,
            "template": s.vsphere_template, "domain": s.vsphere_domain, "name_prefix": f"{deployment}-web",
            "instances": 2, "cpu": 2, "memory_mb": 2048, "disk_gb": 20, "ipv4_addresses": RAW_IPS,
            "ipv4_netmask": s.ip_netmask, "ipv4_gateway": s.ip_gateway, "dns_servers": s.dns_servers,
            "customize_timeout": s.customize_timeout, "wait_for_guest_net_timeout": s.wait_for_guest_net_timeout,
        }  # fmt: skip
        (workdir / "terraform.tfvars.json").write_text(json.dumps(tfvars))
        return workdir

    def env(self, workdir: Path, secrets: dict[str, str]) -> dict[str, str]:
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir), "TF_IN_AUTOMATION": "1",
            "TF_CLI_CONFIG_FILE": str(self.terraformrc), "CHECKPOINT_DISABLE": "1",
            "TF_VAR_vsphere_user": secrets["vsphere_user"], "TF_VAR_vsphere_password": secrets["vsphere_password"],
            "ANSIBLE_PRIVATE_KEY_FILE": str(workdir / "id"), "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_FORKS": str(self.settings.ansible_forks),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null "
                                "-o StrictHostKeyChecking=no",
            "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control),
        }  # fmt: skip

    def run(self, deployment: str, *, check: bool = False) -> None:
        """The pipeline: apply (or, with ``check``, plan and Ansible check mode) and configure."""
        workdir = self.work / deployment
        secrets = self.secrets()
        env = self.env(workdir, secrets)
        key = workdir / "id"
        key.write_text(secrets["ssh_private_key"].rstrip("\n") + "\n")
        key.chmod(0o600)

        def sh(*argv: str) -> str:
            done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{Path(argv[0]).name} {argv[1]} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}"
                )
            return done.stdout

        sh(self.terraform, "init", "-input=false", "-no-color")
        if check:
            sh(self.terraform, "plan", "-input=false", "-no-color", "-out=tfplan")
            sh(self.terraform, "show", "-json", "tfplan")
        else:
            sh(self.terraform, "apply", "-input=false", "-no-color", "-auto-approve")
        outputs = json.loads(sh(self.terraform, "output", "-json"))
        hosts = dict(zip(outputs["names"]["value"], outputs["ips"]["value"], strict=True))
        inventory = {"all": {"hosts": {n: {"ansible_host": ip, "ansible_user": "root",
                                           "ansible_port": self.settings.ssh_port,
                                           "ansible_python_interpreter": self.settings.python_interpreter}
                                       for n, ip in hosts.items()},
                             "children": {"web": {"hosts": dict.fromkeys(hosts)}}}}  # fmt: skip
        (workdir / "inventory.yml").write_text(yaml.safe_dump(inventory))
        wait_for_ssh(list(hosts.values()), self.settings.ssh_port)
        plays = {
            "base": {"umc_deployment": deployment, "umc_admin_user": "umcadmin",
                     "umc_admin_ssh_key": secrets["ssh_public_key"],
                     "umc_time_sync_service": self.settings.time_sync_service},
            "web": {"umc_deployment": deployment, "umc_site_title": "UMC Utrecht", "umc_listen_port": 80},
        }  # fmt: skip
        for playbook, variables in plays.items():
            (workdir / f"{playbook}.json").write_text(json.dumps(variables))
            sh(self.ansible_playbook, "-i", "inventory.yml", str(ROOT / "playbooks" / f"{playbook}.yml"),
               "-e", f"@{playbook}.json", *(["--check", "--diff"] if check else []))  # fmt: skip
        key.unlink()

    def destroy(self, deployment: str) -> None:
        workdir = self.work / deployment
        env = self.env(workdir, self.secrets())
        subprocess.run([self.terraform, "destroy", "-input=false", "-no-color", "-auto-approve"], cwd=workdir,
                       env=env, check=True, capture_output=True)  # fmt: skip


def addresses_in_use(info: SandboxInfo) -> dict[str, str]:
    """Guest addresses of the simulator's VMs in the benchmark's range (address -> VM name)."""
    import ipaddress

    from pyVmomi import vim

    from umc_infra.sandbox import _vcsim

    first, last = (ipaddress.IPv4Address(a) for a in POOL.split("-"))
    ours = {ipaddress.IPv4Address(a) for a in RAW_IPS}
    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            found = {str(vm.guest.ipAddress): vm.name for vm in view.view if vm.guest and vm.guest.ipAddress}
        finally:
            view.Destroy()
    return {ip: name for ip, name in found.items()
            if first <= ipaddress.IPv4Address(ip) <= last or ipaddress.IPv4Address(ip) in ours}  # fmt: skip


def wait_for_ssh(ips: list[str], port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    waiting = set(ips)
    while waiting:
        for ip in list(waiting):
            with contextlib.suppress(OSError), socket.create_connection((ip, port), 2) as sock:
                sock.settimeout(2)
                if sock.recv(4).startswith(b"SSH-"):
                    waiting.discard(ip)
        if waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SSH on {sorted(waiting)}")
            time.sleep(0.2)


# -- the measurements -------------------------------------------------------------------------------


def versus_raw(settings: Settings, raw: RawPipeline, repeats: int) -> dict[str, Any]:
    """A/B, alternating: a new deployment, a no-change re-provision, a no-change plan."""
    figures: dict[str, dict[str, list[float]]] = {k: {"umc_infra": [], "raw": []} for k in
                                                  ("provision", "converge", "plan")}  # fmt: skip
    params = {"instances": 2}
    for i in range(repeats):
        order = ["umc_infra", "raw"] if i % 2 == 0 else ["raw", "umc_infra"]
        for side in order:
            d = f"bench-ab-{i}"
            if side == "umc_infra":
                figures["provision"][side].append(timed(lambda d=d: provision("web-server", params, deployment=d,
                                                                          settings=settings)))  # fmt: skip
                figures["converge"][side].append(timed(lambda d=d: provision("web-server", params, deployment=d,
                                                                         settings=settings)))  # fmt: skip
                figures["plan"][side].append(timed(lambda d=d: plan("web-server", params, deployment=d,
                                                                settings=settings)))  # fmt: skip
                destroy(d, settings=settings)
            else:
                raw.prepare(d)
                figures["provision"][side].append(timed(lambda d=d: raw.run(d)))
                figures["converge"][side].append(timed(lambda d=d: raw.run(d)))
                figures["plan"][side].append(timed(lambda d=d: raw.run(d, check=True)))
                raw.destroy(d)
            console.print(f"  A/B round {i + 1}/{repeats}: {side} done", highlight=False)
    return {
        name: {**runs, "median_umc_infra_s": median(runs["umc_infra"]), "median_raw_s": median(runs["raw"]),
               "ratio": median(runs["umc_infra"]) / median(runs["raw"])}
        for name, runs in figures.items()
    }  # fmt: skip


def scaling_vms(settings: Settings, sizes: list[int]) -> dict[str, Any]:
    seconds = {}
    for n in sizes:
        d = f"bench-vms-{n}"
        seconds[n] = timed(
            lambda n=n, d=d: provision("linux-server", {"instances": n}, deployment=d, settings=settings)
        )
        destroy(d, settings=settings)
        console.print(f"  {n} VMs: {seconds[n]:.1f} s", highlight=False)
    return {"seconds": seconds, "ratio_to_one": {n: s / seconds[sizes[0]] for n, s in seconds.items()}}


def scaling_deployments(settings: Settings, counts: list[int]) -> dict[str, Any]:
    seconds = {}
    for n in counts:
        names = [f"bench-par-{n}-{i}" for i in range(n)]
        errors: list[BaseException] = []

        def one(d: str, errors: list[BaseException] = errors) -> None:
            try:
                provision("linux-server", {"instances": 1}, deployment=d, settings=settings)
            except BaseException as exc:  # reported after the join
                errors.append(exc)

        def all_at_once() -> None:
            threads = [threading.Thread(target=one, args=(d,)) for d in names]  # noqa: B023 (called at once)
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        seconds[n] = timed(all_at_once)
        for d in names:
            destroy(d, settings=settings)
        if errors:
            raise errors[0]
        console.print(f"  {n} deployments at once: {seconds[n]:.1f} s", highlight=False)
    return {"seconds": seconds, "ratio_to_one": {n: s / seconds[counts[0]] for n, s in seconds.items()}}


def init_cache(settings: Settings, work: Path, repeats: int) -> dict[str, Any]:
    """``terraform init`` of a fresh working directory: shared plugin cache vs an empty one."""
    warm: list[float] = []
    cold: list[float] = []
    for i in range(repeats):
        for label, plugin_cache in (("warm", settings.plugin_cache_dir), ("cold", work / f"cold-cache-{i}")):
            site = settings.model_copy(update={"plugin_cache_dir": plugin_cache})
            terraform = Terraform(site, on_event=ignore, redactor=Redactor(), deployment=f"bench-init-{label}-{i}",
                                  private_dir=work)  # fmt: skip
            workdir = work / f"init-{label}-{i}"
            terraform.prepare(ROOT / "modules" / "vsphere-vm", workdir, module="vm", inputs={})
            (warm if label == "warm" else cold).append(timed(lambda: terraform.init(workdir, module="vm")))  # noqa: B023
    return {"warm": warm, "cold": cold, "median_warm_s": median(warm), "median_cold_s": median(cold),
            "ratio": median(warm) / median(cold)}  # fmt: skip


def peak_memory(info: SandboxInfo, work: Path) -> dict[str, Any]:
    """Peak RSS of a fresh process that provisions web-server with 2 VMs (and of its largest child)."""
    script = textwrap.dedent("""
        import json, resource
        from umc_infra import destroy, provision
        provision("web-server", {"instances": 2}, deployment="bench-memory")
        self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        destroy("bench-memory")
        print(json.dumps({"library_mb": self_kb / 1024, "largest_child_mb": children_kb / 1024}))
    """)
    env = dict(os.environ) | info.environment() | {"UMC_STATE_DIR": str(work / "memory"), "UMC_BACKEND": "local",
                                                    "UMC_IP_POOL": POOL}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(results: dict[str, Any]) -> Table:
    table = Table("measure", "umc-infra", "raw CLI / baseline", "ratio", title="umc-infra benchmark (medians)",
                  title_justify="left")  # fmt: skip
    for name, label in (("provision", "provision web-server, 2 VMs (new)"), ("converge", "re-provision, no change"),
                        ("plan", "plan, no change")):  # fmt: skip
        r = results["versus_raw"][name]
        table.add_row(label, f"{r['median_umc_infra_s']:.2f} s", f"{r['median_raw_s']:.2f} s", f"{r['ratio']:.3f}")
    for n, s in results["scaling_vms"]["seconds"].items():
        table.add_row(
            f"linux-server, {n} VMs", f"{s:.1f} s", "1 VM", f"{results['scaling_vms']['ratio_to_one'][n]:.2f}"
        )
    for n, s in results["scaling_deployments"]["seconds"].items():
        table.add_row(f"{n} deployments at once", f"{s:.1f} s", "1 deployment",
                      f"{results['scaling_deployments']['ratio_to_one'][n]:.2f}")  # fmt: skip
    init = results["init"]
    table.add_row("terraform init, shared cache vs cold", f"{init['median_warm_s']:.2f} s",
                  f"{init['median_cold_s']:.2f} s", f"{init['ratio']:.2f}")  # fmt: skip
    memory = results["memory"]
    table.add_row("peak RSS of the provisioning process", f"{memory['library_mb']:.0f} MB",
                  f"largest child {memory['largest_child_mb']:.0f} MB", "")  # fmt: skip
    load = results["service_load"]
    table.add_row(f"API reads, {load['clients']} clients at once (p95)", f"{load['read_ms']['p95']:.0f} ms",
                  f"median {load['read_ms']['p50']:.0f} ms", f"{load['server_errors']} 5xx")  # fmt: skip
    return table


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="umc-bench-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="A/B rounds (alternating order)")
    parser.add_argument("--vms", default="1,5,20", help="VM counts for the one-deployment scaling run")
    parser.add_argument("--deployments", default="1,4,8", help="deployment counts for the parallel run")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients of the service's API")
    parser.add_argument("--load-rounds", type=int, default=5, help="times each client reads through the API")
    parser.add_argument("--only", choices=["load"], help="run only this measure, updating its figures in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args(argv)

    sandbox = Sandbox(on_progress=lambda message: console.print(f"• {message}", highlight=False))
    info = sandbox.up()
    if args.only == "load":
        with workspace() as work:
            figures = service_load(sandbox, info, work / "service.log", clients=args.clients, rounds=args.load_rounds)
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        kept["service_load"] = {**figures, "date": datetime.now(UTC).isoformat(timespec="seconds")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(kept, indent=2, default=str) + "\n")
        console.print(f"service load: read p95 {figures['read_ms'].get('p95')} ms; written to {args.out}")
        return 0 if not figures["failures"] else 1
    taken = addresses_in_use(info)
    if taken:  # a VM of another run on one of our addresses would hand us its configured guest: not a new VM
        console.print(f"the benchmark's addresses ({POOL}, {', '.join(RAW_IPS)}) are held by VMs of another run: "
                      f"{', '.join(f'{n} ({ip})' for ip, n in sorted(taken.items()))}; "
                      "run it on a fresh sandbox: umc-infra sandbox down && umc-infra sandbox up")  # fmt: skip
        return 2
    with workspace() as work:
        settings = info.settings(state_dir=work / "state", backend="local", ip_pool=POOL)
        console.print("warming up (one provision, not counted)")
        provision("linux-server", {"instances": 1}, deployment="bench-warmup", settings=settings)
        destroy("bench-warmup", settings=settings)
        results: dict[str, Any] = {
            "command": "nox -s bench -- " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform(),
                        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        }  # fmt: skip
        console.print(f"A/B against the raw CLI, {args.repeats} rounds")
        raw = RawPipeline(info, settings, work / "raw")
        try:
            results["versus_raw"] = versus_raw(settings, raw, args.repeats)
        finally:
            shutil.rmtree(raw.control, ignore_errors=True)
        console.print("scaling: VMs in one deployment")
        results["scaling_vms"] = scaling_vms(settings, [int(n) for n in args.vms.split(",")])
        console.print("scaling: deployments at once")
        results["scaling_deployments"] = scaling_deployments(settings, [int(n) for n in args.deployments.split(",")])
        console.print("terraform init: shared cache vs cold")
        results["init"] = init_cache(settings, work, args.repeats)
        console.print("peak memory")
        results["memory"] = peak_memory(info, work)
        results["bench_process_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        console.print(f"the service's API: {args.clients} clients at once")
        results["service_load"] = service_load(sandbox, info, work / "service.log", clients=args.clients,
                                               rounds=args.load_rounds)  # fmt: skip
    Console().print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
