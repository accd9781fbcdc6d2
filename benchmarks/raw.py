"""The raw tools, as a person scripts them: ``python benchmarks/raw.py {naive,tuned} ACTION WORKDIR``.

The benchmark sets the working directory up once beforehand (untimed, as a person sets up a repository):
the module's ``.tf`` files, ``terraform.tfvars.json``, the S3 backend block and its ``-backend-config``
values, and ``raw.json`` (Vault's address, the AppRole and the secrets' paths, the plays and their vars, the
SSH port and the control directory). Each run then does what a pipeline does every time: logs in to Vault
(the AppRole secret id from ``VAULT_SECRET_ID``, as a CI job gets it), reads the vSphere credentials and the
SSH key, and runs the tools. ACTION is ``provision`` (create or converge), ``plan`` or ``destroy``.

- **naive**, what a script author writes: ``terraform init``, ``apply`` (or ``plan``), ``output -json``, an
  inventory, a wait for SSH (a probe every 0.5 s), and ``ansible-playbook`` once per playbook (``--check
  --diff`` for a plan), with Ansible's own SSH defaults (masters for 60 s, in a directory of the run's);
- **tuned**, what an expert writes: ``init`` only when the directory has none, ``apply -parallelism`` as
  wide as the VMs, SSH masters kept for 30 minutes in a directory the benchmark keeps (so a later run of
  the deployment reuses them), a probe every 0.1 s, one ``ansible-playbook`` run for all plays with the
  ``free`` strategy (the plays' hosts do not wait for each other), and for a plan Terraform's plan and
  Ansible's check mode at the same time.

Both use the same Terraform binary, provider mirror and plugin cache, the same S3 backend and lock table,
the same playbooks, pipelining, forks and host settings as the library. It prints the seconds of each step
as JSON on stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hvac
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS: dict[str, float] = {}


@contextlib.contextmanager
def step(name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        STEPS[name] = round(STEPS.get(name, 0.0) + time.perf_counter() - started, 3)


def sh(argv: list[str], *, cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode not in ok:
        raise SystemExit(f"{Path(argv[0]).name} {argv[1]} failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")  # fmt: skip
    return done.stdout


def secrets(conf: dict[str, Any]) -> dict[str, str]:
    client = hvac.Client(url=conf["vault_addr"], token="")
    client.auth.approle.login(role_id=conf["role_id"], secret_id=os.environ["VAULT_SECRET_ID"])
    read = client.secrets.kv.v2.read_secret_version
    vsphere, ansible = (read(path=conf[path], mount_point=conf["mount"], raise_on_deleted_version=True)["data"]["data"]
                        for path in ("vsphere_path", "ansible_path"))  # fmt: skip
    return {"vsphere_user": vsphere["user"], "vsphere_password": vsphere["password"],
            "ssh_private_key": ansible["ssh_private_key"], "ssh_public_key": ansible["ssh_public_key"]}  # fmt: skip


def wait_for_ssh(ips: list[str], port: int, every_s: float, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = set(ips)
    while waiting:
        for ip in list(waiting):
            with contextlib.suppress(OSError), socket.create_connection((ip, port), 2) as sock:
                sock.settimeout(2)
                if sock.recv(4).startswith(b"SSH-"):
                    waiting.discard(ip)
        if waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"no SSH on {sorted(waiting)}")
            time.sleep(every_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("style", choices=["naive", "tuned"])
    parser.add_argument("action", choices=["provision", "plan", "destroy"])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    tuned = args.style == "tuned"
    workdir: Path = args.workdir
    conf = json.loads((workdir / "raw.json").read_text())

    with step("vault"):
        found = secrets(conf)
    control = Path(conf["control_dir"]) if tuned else Path(tempfile.mkdtemp(prefix="cp-", dir=conf["private_dir"]))
    key = Path(tempfile.mkdtemp(prefix="key-", dir=conf["private_dir"])) / "id"  # in memory, never in the workdir
    key.write_text(found["ssh_private_key"].rstrip("\n") + "\n")
    key.chmod(0o600)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir), "TF_IN_AUTOMATION": "1",
        "TF_CLI_CONFIG_FILE": conf["terraformrc"], "CHECKPOINT_DISABLE": "1",
        "TF_VAR_vsphere_user": found["vsphere_user"], "TF_VAR_vsphere_password": found["vsphere_password"],
        **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
        "ANSIBLE_PRIVATE_KEY_FILE": str(key), "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_FORKS": str(conf["forks"]), "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=" + ("30m" if tuned else "60s")
                            + " -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
    }  # fmt: skip
    if tuned:
        env["ANSIBLE_STRATEGY"] = "free"
    terraform = conf["terraform"]
    try:
        if not (tuned and (workdir / ".terraform" / "terraform.tfstate").exists()):
            with step("terraform.init"):
                backend = [f"-backend-config={k}={v}" for k, v in conf["backend_config"].items()]
                sh([terraform, "init", "-input=false", "-no-color", *backend], cwd=workdir, env=env)
        if args.action == "destroy":
            with step("terraform.destroy"):
                sh([terraform, "destroy", "-input=false", "-no-color", "-auto-approve"], cwd=workdir, env=env)
            return
        parallelism = [f"-parallelism={max(10, conf['instances'])}"] if tuned else []
        check = ["--check", "--diff"] if args.action == "plan" else []

        def inventory() -> None:
            with step("terraform.output"):
                outputs = json.loads(sh([terraform, "output", "-json"], cwd=workdir, env=env))
            hosts = dict(zip(outputs["names"]["value"], outputs["ips"]["value"], strict=True))
            host_vars = {"ansible_user": "root", "ansible_port": conf["ssh_port"],
                         "ansible_python_interpreter": conf["python_interpreter"]}  # fmt: skip
            groups = {group: {"hosts": dict.fromkeys(hosts)} for group in conf["groups"]}
            all_hosts = {n: {"ansible_host": ip, **host_vars} for n, ip in hosts.items()}
            (workdir / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": all_hosts, "children": groups}}))
            with step("ssh"):
                wait_for_ssh(list(hosts.values()), conf["ssh_port"], 0.1 if tuned else 0.5)

        def ansible() -> None:
            plays = conf["plays"]
            for name, variables in plays.items():
                given = {k: found[v[6:]] if isinstance(v, str) and v.startswith("vault:") else v
                         for k, v in variables.items()}  # fmt: skip
                (workdir / f"{name}.json").write_text(json.dumps(given))
            if tuned:  # one run for all plays
                site = [{"import_playbook": str(ROOT / "playbooks" / f"{name}.yml")} for name in plays]
                (workdir / "site.yml").write_text(yaml.safe_dump(site))
                extra = [a for name in plays for a in ("-e", f"@{name}.json")]
                with step("ansible.all"):
                    sh([conf["ansible_playbook"], "-i", "inventory.yml", "site.yml", *extra, *check], cwd=workdir,
                       env=env)  # fmt: skip
                return
            for name in plays:
                with step(f"ansible.{name}"):
                    sh([conf["ansible_playbook"], "-i", "inventory.yml", str(ROOT / "playbooks" / f"{name}.yml"),
                        "-e", f"@{name}.json", *check], cwd=workdir, env=env)  # fmt: skip

        if args.action == "provision":
            with step("terraform.apply"):
                sh([terraform, "apply", "-input=false", "-no-color", "-auto-approve", *parallelism], cwd=workdir,
                   env=env)  # fmt: skip
            inventory()
            ansible()
        elif tuned:  # the plan and the check at once (the inventory from the state first)
            inventory()
            with step("plan+check"), concurrent.futures.ThreadPoolExecutor(2) as pool:
                planned = pool.submit(sh, [terraform, "plan", "-input=false", "-no-color", "-detailed-exitcode",
                                           *parallelism], cwd=workdir, env=env, ok=(0, 2))  # fmt: skip
                pool.submit(ansible).result()
                planned.result()
        else:
            with step("terraform.plan"):
                sh([terraform, "plan", "-input=false", "-no-color", "-out=tfplan"], cwd=workdir, env=env)
            inventory()
            ansible()
    finally:
        shutil.rmtree(key.parent, ignore_errors=True)
        if not tuned:
            shutil.rmtree(control, ignore_errors=True)
        print(json.dumps({"steps": STEPS}))


if __name__ == "__main__":
    main()
