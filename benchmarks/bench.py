"""umc-infra against the raw tools, on the sandbox's S3 backend: ``nox -s bench``.

Four sides do the same work with the same Terraform, provider mirror, playbooks, hosts and connection
settings, every one as a process of its own started by this script:

- **naive**: the raw CLIs as a script author writes them (``benchmarks/raw.py naive``);
- **tuned**: the raw CLIs as an expert writes them (``benchmarks/raw.py tuned``: SSH masters kept, one
  ``ansible-playbook`` run, ``-parallelism``, the ``free`` strategy, the plan and the check at once);
- **library**: ``provision()`` / ``plan()`` in a fresh Python process (``benchmarks/library_run.py``);
- **cli**: ``umc-infra provision`` / ``plan`` as a CI job runs it.

Measures, in paired rounds (every side once per round; the order reverses every round, ABBA-wise):
a new provision of web-server with 2 VMs, a no-change converge (the same provision again) and a no-change
plan; each deployment is destroyed after its round and its guests are gone before the next measurement.
Reported: the median of the paired ratios (library over baseline, and cli over library) with a bootstrap
95 % interval, the median seconds of every step of every side, CPU seconds and memory (see
``benchmarks/measure.py``). Then scaling (VMs in one deployment, deployments at once; the library and the
naive side, paired, with repeats), and the self-service API under load (``benchmarks/load.py``).

It prints a table and writes JSON (``benchmarks/results/latest.json`` by default).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from umc_infra.events import ignore
from umc_infra.private import run_directory
from umc_infra.process import Redactor
from umc_infra.sandbox import Sandbox, SandboxInfo
from umc_infra.state import ipam as _ipam
from umc_infra.terraform.backend import backend
from umc_infra.terraform.runner import Terraform

sys.path.insert(0, str(Path(__file__).parent))
from load import service_load  # benchmarks/ is not a package
from measure import Measured, machine_busy_s, measure, median, paired, step_medians

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
LIBRARY_POOL = "127.0.1.160-127.0.1.199"
"""The addresses of the library's and the CLI's deployments (outside the sandbox's own pool); ``--pool``."""
RAW_ADDRESSES = "127.0.1.200-127.0.1.239"
"""The raw sides' addresses (they take them in turn; a deployment's are free again after its teardown);
``--raw-addresses``."""
SIDES = ("library", "naive", "tuned", "cli")
MEASURES = ("provision", "converge", "plan")
console = Console(stderr=True)


# -- the sides ------------------------------------------------------------------------------------------------


class Sides:
    """Runs a measure of a side as a process of its own, and the destroy (untimed) after it."""

    def __init__(self, info: SandboxInfo, work: Path, private: Path, pool: str, raw_addresses: Sequence[str]) -> None:
        self.info = info
        self.work = work
        self.env = {**os.environ, **info.environment(), "UMC_IP_POOL": pool,
                    "UMC_STATE_DIR": str(work / "state"),
                    "VAULT_SECRET_ID": info.vault_secret_id.get_secret_value()}  # fmt: skip
        self.env.pop("VAULT_TOKEN", None)  # every side logs in with the AppRole, as a CI job does
        self.settings = info.settings(state_dir=work / "state", ip_pool=pool)
        self.private = private
        """A private run directory of this process (0700, in memory): the raw sides' key and SSH masters."""
        self.control = self.private / "cp"  # the tuned side's SSH masters, kept for the whole benchmark
        self.control.mkdir()
        terraform = Terraform(self.settings, on_event=ignore, redactor=Redactor(), deployment="bench-raw",
                              private_dir=self.private)  # fmt: skip
        self.terraform = terraform.binary
        self.terraformrc = terraform.config_file()
        version = json.loads(subprocess.run([self.terraform, "version", "-json"], capture_output=True, text=True,
                                            check=True).stdout)["terraform_version"]  # fmt: skip
        self.tf_version = tuple(int(p) for p in version.split(".")[:3])
        self.free_raw = list(raw_addresses)
        self.ips: dict[str, list[str]] = {}
        """The addresses of each deployment made (to wait for its guests to be gone after the destroy)."""
        self.made: dict[str, tuple[str, str]] = {}
        """Deployments provisioned and not destroyed yet: deployment -> (side, blueprint)."""

    def close(self) -> None:
        """Destroy what a failed measurement left, then stop the tuned side's SSH masters."""
        for deployment, (side, blueprint) in list(self.made.items()):
            try:
                self.destroy(side, blueprint, deployment)
            except Exception as exc:  # the first failure is what the run reports
                console.print(f"could not destroy {deployment} ({side}): {exc}", highlight=False)
        subprocess.run(["pkill", "-f", f"ControlPath={self.control}"], check=False)
        subprocess.run(["pkill", "-f", str(self.control)], check=False)

    def run(self, side: str, action: str, blueprint: str, deployment: str, instances: int, *,
            memory: bool = True) -> Measured:  # fmt: skip
        """One measured ``action`` (provision, plan or destroy) of ``side``."""
        params = {"instances": instances}
        if side == "library":
            argv = [sys.executable, str(HERE / "library_run.py"), action, blueprint, deployment, json.dumps(params)]
        elif side == "cli":
            umc = str(Path(sys.executable).parent / "umc-infra")
            if action == "destroy":
                argv = [umc, "destroy", deployment, "--yes", "-o", "json"]
            else:
                argv = [umc, action, blueprint, "-d", deployment, "-p", f"instances={instances}", "-o", "json"]
        else:
            workdir = self.work / "raw" / deployment
            if not workdir.exists():
                self.prepare_raw(workdir, blueprint, deployment, instances)
            argv = [sys.executable, str(HERE / "raw.py"), side, action, str(workdir)]
        if action == "provision":
            self.made[deployment] = (side, blueprint)
        measured = measure(argv, env=self.env, memory=memory)
        found = _json_of(measured.stdout)
        measured.steps = {k: float(v) for k, v in (found.get("steps") or found.get("timings") or {}).items()}
        if side == "library" and "own_peak_mb" in found:
            measured.processes_mb["library (own)"] = found["own_peak_mb"]
        return measured

    def destroy(self, side: str, blueprint: str, deployment: str) -> None:
        """Destroy a deployment (untimed) and wait until its guests are gone."""
        ips = self.ips.pop(deployment, None) or self.addresses_of(deployment)
        self.run(side, "destroy", blueprint, deployment, 1, memory=False)
        self.made.pop(deployment, None)
        wait_gone(ips, self.info.guest_ssh_port)
        if side in ("naive", "tuned"):
            self.free_raw.extend(ips)
            shutil.rmtree(self.work / "raw" / deployment, ignore_errors=True)

    def addresses_of(self, deployment: str) -> list[str]:
        """The guest addresses of a deployment's VMs, from vCenter (before they are gone)."""
        return [ip for name, ip in vm_addresses(self.info).items() if name.startswith(f"{deployment}-")
                or name == deployment]  # fmt: skip

    def prepare_raw(self, workdir: Path, blueprint: str, deployment: str, instances: int) -> None:
        """The raw sides' working directory, set up once as a person would (untimed)."""
        workdir.mkdir(parents=True)
        for tf in (ROOT / "modules" / "vsphere-vm").glob("*.tf"):
            shutil.copy2(tf, workdir / tf.name)
        ips, self.free_raw = self.free_raw[:instances], self.free_raw[instances:]
        self.ips[deployment] = ips
        s, inv = self.settings, self.info.inventory
        web = blueprint == "web-server"
        tfvars = {
            "vsphere_server": s.vsphere_server, "allow_unverified_ssl": s.vsphere_allow_unverified_ssl,
            "datacenter": s.vsphere_datacenter, "cluster": s.vsphere_cluster, "host": s.vsphere_host,
            "datastore": s.vsphere_datastore, "network": s.vsphere_network, "folder": s.vsphere_folder,
            "template": s.vsphere_template, "domain": s.vsphere_domain,
            "name_prefix": f"{deployment}-web" if web else deployment, "instances": instances, "cpu": 2,
            "memory_mb": 2048, "disk_gb": 20, "ipv4_addresses": ips, "ipv4_netmask": s.ip_netmask,
            "ipv4_gateway": s.ip_gateway, "dns_servers": s.dns_servers, "annotation": "",
            "customize_timeout": s.customize_timeout, "wait_for_guest_net_timeout": s.wait_for_guest_net_timeout,
        }  # fmt: skip
        (workdir / "terraform.tfvars.json").write_text(json.dumps(tfvars))
        block, config = backend(s, deployment=deployment, module="vm", version=self.tf_version)  # type: ignore[arg-type]
        config["key"] = f"raw/{deployment}/vm.tfstate"  # beside the library's deployments, never among them
        (workdir / "backend.tf.json").write_text(json.dumps(block))
        plays: dict[str, dict[str, Any]] = {"base": {
            "umc_deployment": deployment, "umc_admin_user": "umcadmin", "umc_notes": "",
            "umc_admin_ssh_key": "vault:ssh_public_key", "umc_time_sync_service": s.time_sync_service,
        }}  # fmt: skip
        if web:
            plays["web"] = {"umc_deployment": deployment, "umc_site_title": "UMC Utrecht", "umc_listen_port": 80}
        conf = {
            "vault_addr": self.info.vault_addr, "role_id": self.info.vault_role_id, "mount": inv.vault_mount,
            "vsphere_path": inv.vault_vsphere_path, "ansible_path": inv.vault_ansible_path,
            "terraform": self.terraform, "terraformrc": str(self.terraformrc), "backend_config": config,
            "ansible_playbook": str(Path(sys.executable).parent / "ansible-playbook"), "forks": s.ansible_forks,
            "ssh_port": s.ssh_port, "python_interpreter": s.python_interpreter, "instances": instances,
            "groups": ["web"] if web else ["linux"], "plays": plays, "control_dir": str(self.control),
            "private_dir": str(self.private),
        }  # fmt: skip
        (workdir / "raw.json").write_text(json.dumps(conf))


def _json_of(stdout: str) -> dict[str, Any]:
    """A side's JSON: the whole output (the CLI's document), or its last line (the scripts' summary)."""
    text = stdout.strip()
    if not text:
        return {}
    try:
        found = json.loads(text)
    except json.JSONDecodeError:
        found = json.loads(text.splitlines()[-1])
    return found if isinstance(found, dict) else {}


def vm_addresses(info: SandboxInfo) -> dict[str, str]:
    """VM name -> guest address, of the simulator's VMs that have one."""
    from pyVmomi import vim

    from umc_infra.sandbox import _vcsim

    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return {vm.name: str(vm.guest.ipAddress) for vm in view.view if vm.guest and vm.guest.ipAddress}
        finally:
            view.Destroy()


def wait_gone(ips: Sequence[str], port: int, timeout_s: float = 120) -> None:
    """Until no guest answers on ``ips`` (a destroyed VM's guest stops a moment after the VM is gone)."""
    deadline = time.monotonic() + timeout_s
    while any(_answers(ip, port) for ip in ips):
        if time.monotonic() > deadline:
            raise TimeoutError(f"guests still answer on {list(ips)} {timeout_s:.0f} s after their destroy")
        time.sleep(0.2)
    time.sleep(0.5)  # its last writes


def _answers(ip: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((ip, port), 0.5):
        return True
    return False


def addresses(text: str) -> list[str]:
    """``first-last`` as the addresses in it (read as the library reads ``UMC_IP_POOL``)."""
    return [str(address) for address in _ipam._pool(text)]


def addresses_in_use(info: SandboxInfo, ranges: Sequence[str]) -> dict[str, str]:
    """Guest addresses of VMs in the benchmark's own ranges (address -> VM name)."""
    own = {ip for r in ranges for ip in addresses(r)}
    return {ip: name for name, ip in vm_addresses(info).items() if ip in own}


# -- the measurements -----------------------------------------------------------------------------------------


def versus_raw(sides: Sides, rounds: int, order: Sequence[str] = SIDES, instances: int = 2) -> dict[str, Any]:
    """Paired rounds of every side: a new provision, a no-change converge and a no-change plan of web-server."""
    runs: dict[str, dict[str, list[Measured]]] = {m: {s: [] for s in order} for m in MEASURES}
    for r in range(rounds):
        for side in order if r % 2 == 0 else tuple(reversed(order)):
            d = f"bench-{side}-{r}"
            runs["provision"][side].append(sides.run(side, "provision", "web-server", d, instances))
            runs["converge"][side].append(sides.run(side, "provision", "web-server", d, instances))
            runs["plan"][side].append(sides.run(side, "plan", "web-server", d, instances))
            sides.destroy(side, "web-server", d)
            took = ", ".join(f"{m} {runs[m][side][-1].seconds:.1f} s" for m in MEASURES)
            console.print(f"  round {r + 1}/{rounds} {side}: {took}", highlight=False)
    result: dict[str, Any] = {}
    for m in MEASURES:
        seconds = {s: [x.seconds for x in runs[m][s]] for s in order}
        figures: dict[str, Any] = {
            "seconds": {s: [round(v, 3) for v in seconds[s]] for s in order},
            "median_s": {s: round(median(seconds[s]), 3) for s in order},
            "steps_median_s": {s: step_medians([x.steps for x in runs[m][s]]) for s in order},
            "cpu_median_s": {s: round(median([x.cpu_s for x in runs[m][s]]), 2) for s in order},
        }
        if "library" in order:
            for baseline in ("naive", "tuned"):
                if baseline in order:
                    figures[baseline] = paired(seconds["library"], seconds[baseline])
            if "cli" in order:
                figures["cli_over_library"] = paired(seconds["cli"], seconds["library"])
        result[m] = figures
    result["_runs"] = runs  # for memory() and cpu(); dropped from the JSON
    return result


def memory(runs: dict[str, dict[str, list[Measured]]]) -> dict[str, Any]:
    """Peaks over every measured run of each side: per program, the tree's resident sum, the cgroup's."""
    result: dict[str, Any] = {}
    for side in next(iter(runs.values())):
        measured = [x for m in runs.values() for x in m[side]]
        programs: dict[str, float] = {}
        for x in measured:
            for name, mb in x.processes_mb.items():
                programs[name] = max(programs.get(name, 0.0), mb)
        cgroup = [x.cgroup_peak_mb for x in measured if x.cgroup_peak_mb is not None]
        result[side] = {"per_program_peak_mb": dict(sorted(programs.items(), key=lambda kv: -kv[1])),
                        "tree_rss_peak_mb": max(x.tree_rss_peak_mb for x in measured),
                        "cgroup_peak_mb_with_page_cache": max(cgroup) if cgroup else None}  # fmt: skip
    if "library" in result:
        own = [x.processes_mb.get("library (own)", 0.0) for m in runs.values() for x in m["library"]]
        result["library_process_peak_mb"] = max(own)
        result["library_process_median_peak_mb"] = median(own)
    return result


def scaling(sides: Sides, what: str, sizes: Sequence[int], repeats: int,
            order: Sequence[str] = ("library", "naive")) -> dict[str, Any]:  # fmt: skip
    """``vms``: one linux-server deployment of n VMs; ``deployments``: n one-VM deployments at once. Paired.

    Each size has the machine's busy CPU seconds of its measurements too (every process: the sandbox's guests and
    services as well), and ``cpu_bound_ratio``: the lowest ``ratio_to_one`` the machine's CPUs allow, ``n`` times
    one's CPU seconds over the CPUs times one's seconds (``n`` one-VM deployments need ``n`` times the work of
    one at least, and the CPUs do at most ``cpus`` seconds of it per second).
    """
    seconds: dict[int, dict[str, list[float]]] = {n: {s: [] for s in order} for n in sizes}
    busy: dict[int, dict[str, list[float]]] = {n: {s: [] for s in order} for n in sizes}
    cpus = os.cpu_count() or 1
    for n in sizes:
        for rep in range(repeats):
            for side in order if rep % 2 == 0 else tuple(reversed(order)):
                if what == "vms":
                    names, instances = [f"bench-{side}-vms{n}-{rep}"], n
                else:
                    names, instances = [f"bench-{side}-par{n}-{rep}-{i}" for i in range(n)], 1
                if side in ("naive", "tuned"):  # set up beforehand, as for one deployment
                    for d in names:
                        sides.prepare_raw(sides.work / "raw" / d, "linux-server", d, instances)
                started, busy_before = time.perf_counter(), machine_busy_s()
                with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
                    list(pool.map(lambda d: sides.run(side, "provision", "linux-server", d, instances,  # noqa: B023
                                                      memory=False), names))  # fmt: skip
                seconds[n][side].append(time.perf_counter() - started)
                busy[n][side].append(machine_busy_s() - busy_before)
                for d in names:
                    sides.destroy(side, "linux-server", d)
                console.print(f"  {what} {n}, {side}: {seconds[n][side][-1]:.1f} s", highlight=False)
    if not sizes:
        return {}
    one = sizes[0]
    return {str(n): {
        "seconds": {s: [round(v, 2) for v in seconds[n][s]] for s in order},
        "median_s": {s: round(median(seconds[n][s]), 2) for s in order},
        "ratio_to_one": {s: round(median(seconds[n][s]) / median(seconds[one][s]), 2) for s in order},
        "machine_cpu_s": {s: round(median(busy[n][s]), 2) for s in order},
        "cpu_bound_ratio": {s: round(n * median(busy[one][s]) / (cpus * median(seconds[one][s])), 2) for s in order},
        "cpus": cpus,
        **({"library_over_naive": paired(seconds[n]["library"], seconds[n]["naive"])}
           if {"library", "naive"} <= set(order) else {}),
    } for n in sizes}  # fmt: skip


def report(results: dict[str, Any]) -> Table:
    table = Table("measure", "library", "naive", "tuned", "cli", "library/naive", "library/tuned", "cli/library",
                  title="umc-infra benchmark (median seconds; median paired ratio [95 % CI])",
                  title_justify="left")  # fmt: skip

    def ratio(figures: dict[str, Any] | None) -> str:
        return f"{figures['ratio_median']:.3f} [{figures['ci95'][0]:.3f}, {figures['ci95'][1]:.3f}]" if figures else "-"

    for m in MEASURES:
        f = results["versus_raw"][m]
        table.add_row(m, *(f"{f['median_s'].get(s, float('nan')):.2f}" for s in SIDES),
                      ratio(f.get("naive")), ratio(f.get("tuned")), ratio(f.get("cli_over_library")))  # fmt: skip
    for what in ("scaling_vms", "scaling_deployments"):
        for n, f in results[what].items():
            label = f"{n} VMs" if what == "scaling_vms" else f"{n} deployments at once"
            if what == "scaling_deployments" and n != next(iter(results[what])):
                label += (f" ({f['ratio_to_one'].get('library', float('nan')):.2f}x one; the CPUs allow "
                          f"{f['cpu_bound_ratio'].get('library', float('nan')):.2f}x)")  # fmt: skip
            table.add_row(label, f"{f['median_s'].get('library', float('nan')):.1f}",
                          f"{f['median_s'].get('naive', float('nan')):.1f}", "", "",
                          ratio(f.get("library_over_naive")), "", "")  # fmt: skip
    mem = results["memory"]
    if "library_process_peak_mb" in mem:
        table.add_row("library process peak (MB)", f"{mem['library_process_peak_mb']:.0f}", "", "", "", "", "", "")
    load = results.get("service_load")
    if load:
        table.add_row(f"API reads p95, {load['clients']} clients (ms)", f"{load['read_ms']['p95']:.0f}", "", "", "",
                      f"{load['server_errors']} 5xx", "", "")  # fmt: skip
    return table


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="umc-bench-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sizes(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="paired rounds of the four sides (ABBA order)")
    parser.add_argument("--instances", type=int, default=2, help="VMs of the web-server deployment the rounds make")
    parser.add_argument("--warmup", type=int, default=1, help="rounds of every side before the measured ones")
    parser.add_argument("--sides", default=",".join(SIDES), help="which sides (default: all four)")
    parser.add_argument("--vms", default="1,5,20", help="VMs in one deployment, for the scaling run")
    parser.add_argument("--deployments", default="1,4,8", help="deployments at once, for the scaling run")
    parser.add_argument("--scaling-repeats", type=int, default=3, help="paired repeats of each scaling size")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients of the service's API")
    parser.add_argument("--load-rounds", type=int, default=5, help="times each client reads through the API")
    parser.add_argument("--pool", default=LIBRARY_POOL,
                        help="the library's and the CLI's addresses, first-last; 'sandbox' for the sandbox's own pool, "
                             "shared with other runs (the claims on S3 keep them apart)")  # fmt: skip
    parser.add_argument(
        "--raw-addresses",
        default=RAW_ADDRESSES,
        help="the raw sides' addresses, first-last (no other run may use them: raw claims nothing)",
    )
    parser.add_argument("--only", choices=["load"], help="run only this measure, updating its figures in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args(argv)
    order = tuple(s for s in args.sides.split(",") if s)
    if unknown := set(order) - set(SIDES):
        parser.error(f"--sides: unknown {sorted(unknown)}; the sides are {', '.join(SIDES)}")

    sandbox = Sandbox(on_progress=lambda message: console.print(f"• {message}", highlight=False))
    info = sandbox.up()
    if args.only == "load":
        with workspace() as work:
            figures = service_load(sandbox, info, work / "service.log", clients=args.clients, rounds=args.load_rounds)
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        kept["service_load"] = {**figures, "date": datetime.now(UTC).isoformat(timespec="seconds")}
        write(args.out, kept)
        console.print(f"service load: read p95 {figures['read_ms'].get('p95')} ms; written to {args.out}")
        return 0 if not figures["failures"] else 1
    pool = info.ip_pool if args.pool == "sandbox" else args.pool
    own = [args.raw_addresses] + ([] if args.pool == "sandbox" else [pool])
    taken = addresses_in_use(info, own)
    if taken:  # a VM of another run on one of our addresses would hand us its configured guest: not a new VM
        console.print(f"the benchmark's addresses ({', '.join(own)}) are held by VMs of another run: "
                      f"{', '.join(f'{n} ({ip})' for ip, n in sorted(taken.items()))}; "
                      "run it on a fresh sandbox: umc-infra sandbox down && umc-infra sandbox up")  # fmt: skip
        return 2
    results: dict[str, Any] = {
        "command": "nox -s bench -- " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform(),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "backend": "s3",
        "instances": args.instances,
    }  # fmt: skip
    with workspace() as work, run_directory("bench") as private:
        sides = Sides(info, work, private, pool, addresses(args.raw_addresses))
        try:
            for w in range(args.warmup):
                console.print(f"warming up: a provision and a plan of each side, not counted ({w + 1}/{args.warmup})")
                for side in order:
                    sides.run(side, "provision", "web-server", f"bench-warm{w}-{side}", args.instances)
                    sides.run(side, "plan", "web-server", f"bench-warm{w}-{side}", args.instances)
                    sides.destroy(side, "web-server", f"bench-warm{w}-{side}")
            console.print(f"{', '.join(order)}: {args.rounds} paired rounds")
            versus = versus_raw(sides, args.rounds, order, args.instances)
            runs = versus.pop("_runs")
            results["versus_raw"] = versus
            results["memory"] = memory(runs)
            results["cpu"] = {m: versus[m]["cpu_median_s"] for m in MEASURES}
            scaling_sides = tuple(s for s in ("library", "naive") if s in order)
            console.print("scaling: VMs in one deployment")
            results["scaling_vms"] = scaling(sides, "vms", _sizes(args.vms), args.scaling_repeats, scaling_sides)
            console.print("scaling: deployments at once")
            results["scaling_deployments"] = scaling(sides, "deployments", _sizes(args.deployments),
                                                     args.scaling_repeats, scaling_sides)  # fmt: skip
        finally:
            sides.close()
        console.print(f"the service's API: {args.clients} clients at once")
        results["service_load"] = service_load(sandbox, info, work / "service.log", clients=args.clients,
                                               rounds=args.load_rounds)  # fmt: skip
    Console(width=160).print(report(results))
    write(args.out, results)
    console.print(f"written to {args.out}")
    return 0


def write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
