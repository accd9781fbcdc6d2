"""The examples in README.md and docs/*.md run, as written, against the sandbox."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import own_ports

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, (lang, code) in enumerate(FENCE.findall(page.read_text())):
            if lang == language:
                found.append((f"{page.relative_to(ROOT)}#{number}", code))
    return found


def test_every_page_has_examples():
    assert blocks("python")
    assert blocks("bash")


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_example_runs(sandbox, info, where, code, tmp_path):
    """Each example as a user runs it, with the site's settings in the environment (``sandbox env``)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ) | info.environment(),
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    assert "**********" in result.stdout or result.stdout.strip()


def run_page_script(page: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A page's one bash block, top to bottom, in ``tmp_path`` with a state directory of its own."""
    (code,) = [c for where, c in blocks("bash") if where.startswith(page)]
    env = dict(os.environ)
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", UMC_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + code], capture_output=True, text=True, timeout=600,
                            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def test_cli_walkthrough_runs(sandbox, tmp_path):
    """docs/cli.md's shell block, top to bottom, on the sandbox."""
    result = run_page_script("docs/cli.md", tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["deployment"] == "docs-cli"
    assert json.loads((tmp_path / "web-server.schema.json").read_text())["properties"]["instances"]
    assert "no drift" in result.stdout and "docs-cli destroyed" in result.stdout


def test_site_guide_runs(sandbox, tmp_path):
    """docs/site.md's doctor walkthrough: every check passes on the sandbox; a datastore it lacks fails its check."""
    result = run_page_script("docs/site.md", tmp_path)
    checks = json.loads((tmp_path / "doctor.json").read_text())["checks"]
    assert checks and not [c for c in checks if c["status"] == "failed"]
    assert "doctor exited 9" in result.stdout
    assert "vsanDatastore01" in (tmp_path / "broken.txt").read_text()


def test_service_walkthrough_runs(sandbox, info, tmp_path):
    """docs/service.md's walkthrough: serve and a worker, a request as alice, its events, radiology's view, a
    refused quota breach, destroy."""
    result = run_page_script("docs/service.md", tmp_path)
    lines = result.stdout.splitlines()
    assert "404" in lines and "409" in lines  # radiology's look at cardiology's deployment; its quota breach
    assert "event: job_finished" in result.stdout and "event: step_started" in result.stdout
    assert '"username":"alice"' in result.stdout and '"ticket":"INC0012345"' in result.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["quota"]["fits"] is True
    form = json.loads((tmp_path / "form.json").read_text())
    assert form["schema"]["properties"]["params"]["properties"]["instances"]["type"] == "integer"


def test_blueprint_guide_runs(sandbox, tmp_path):
    """docs/blueprints.md's example: a team's blueprint extending web-server, validated, shown, planned."""
    run_page_script("docs/blueprints.md", tmp_path)
    import yaml

    resolved = yaml.safe_load((tmp_path / "small-web.resolved.yaml").read_text())
    assert resolved["params"]["instances"]["max"] == 2 and resolved["params"]["cpu"]["max"] == 16
    assert [p["playbook"] for p in resolved["playbooks"]] == ["base", "web"]
    stage = json.loads((tmp_path / "small-web.schema.json").read_text())["properties"]["stage"]
    assert stage["enum"] == ["test", "acceptance"] and stage["title"] == "Stage"
    planned = json.loads((tmp_path / "plan.json").read_text())
    (vm,) = planned["resources"]
    assert (vm["address"], vm["action"]) == ("vsphere_virtual_machine.vm[0]", "create")
    assert planned["params"]["stage"] == "acceptance" and planned["exists"] is False


def test_the_benchmark_runs(sandbox):
    """docs/evidence.md's short benchmark run: every measure present, every figure a real duration.

    It runs beside other tests (its figures are not the point here). Its work directory is outside the places their
    leak scans look at (the temp dir, /dev/shm, state directories): the naive raw side keeps a saved plan with the
    vSphere password there during a round, as a script author's plan file does."""
    (code,) = [c for where, c in blocks("bash") if where.startswith("docs/evidence.md")]
    work = Path(tempfile.mkdtemp(prefix="umc-bench-test-", dir="/var/tmp"))
    try:
        _run_the_benchmark(code, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_the_benchmark(code: str, work: Path) -> None:
    env = dict(os.environ) | {"TMPDIR": str(work), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + code], capture_output=True, text=True, timeout=900,
                            env=env, cwd=ROOT, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((work / "bench-smoke.json").read_text())
    assert figures["backend"] == "s3"
    for measure in ("provision", "converge", "plan"):
        f = figures["versus_raw"][measure]
        assert set(f["median_s"]) == {"library", "naive", "tuned", "cli"} and min(f["median_s"].values()) > 0
        for baseline in ("naive", "tuned", "cli_over_library"):
            low, high = f[baseline]["ci95"]
            assert f[baseline]["ratio_median"] > 0 and low <= f[baseline]["ratio_median"] <= high
        assert f["steps_median_s"]["naive"]["terraform.init"] > 0 and f["steps_median_s"]["library"]
        assert any(step.startswith("terraform.plan.") for step in f["steps_median_s"]["cli"])  # the CLI's -o json
        assert all(f["cpu_median_s"][side] > 0 for side in f["cpu_median_s"])
    assert "ansible.all" in figures["versus_raw"]["provision"]["steps_median_s"]["tuned"]
    assert "terraform.init" not in figures["versus_raw"]["converge"]["steps_median_s"]["tuned"]  # kept
    assert set(figures["scaling_vms"]) == {"1"} and figures["scaling_deployments"] == {}
    assert figures["scaling_vms"]["1"]["median_s"]["naive"] > 0
    assert figures["scaling_vms"]["1"]["machine_cpu_s"]["library"] > 0  # every process of the machine
    assert 0 < figures["scaling_vms"]["1"]["cpu_bound_ratio"]["library"] <= 1.0  # one VM: at most one at a time
    assert 10 < figures["memory"]["library_process_peak_mb"] < figures["memory"]["library"]["tree_rss_peak_mb"]
    assert "terraform" in figures["memory"]["naive"]["per_program_peak_mb"]
    load = figures["service_load"]
    assert (load["clients"], load["server_errors"], load["failures"]) == (10, 0, [])
    assert load["read_ms"]["n"] == 10 * 5 and load["read_ms"]["p95"] > 0 and load["accepted"] > 0
    assert "library/naive" in result.stdout  # the table


def test_sandbox_shell_walkthrough_runs(sandbox, tmp_path):
    """docs/sandbox.md's shell block, top to bottom, on a second sandbox of its own (no guests)."""
    (code,) = [c for where, c in blocks("bash") if where.startswith("docs/sandbox.md")]
    # A short state directory: PostgreSQL's socket path in it must stay within 107 characters (pytest-xdist's
    # tmp_path is long; `sandbox up` says so when it is not).
    state = Path(tempfile.mkdtemp(prefix="umc-sb-")) / "walkthrough"
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        UMC_SANDBOX_STATE_DIR=str(state),
        UMC_SANDBOX_CACHE_DIR=str(sandbox.settings.cache_dir),
        UMC_SANDBOX_GUESTS="false",
        **{f"UMC_SANDBOX_{name.upper()}": str(port) for name, port in own_ports().items()},
    )
    script = "set -euo pipefail\n" + code + '\ntest -n "$VAULT_TOKEN" && test -n "$AWS_ENDPOINT_URL"\n'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "sandbox down and purged" in result.stderr
    assert not state.exists()
    state.parent.rmdir()


def test_gitlab_ci_example_logs_in_with_the_pipeline_jwt(sandbox, info, tmp_path):
    import yaml

    (text,) = [c for where, c in blocks("yaml") if where.startswith("docs/cli.md")]
    job = yaml.safe_load(text)["provision-team-x"]
    assert job["id_tokens"]["VAULT_ID_TOKEN"]["aud"] == info.inventory.jwt_audience
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "UMC_VAULT_"))}
    site = {k: v for k, v in info.environment().items() if k not in ("VAULT_TOKEN", "UMC_VAULT_ROLE_ID",
                                                                        "UMC_VAULT_SECRET_ID")}  # fmt: skip
    env.update(site)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        UMC_STATE_DIR=str(tmp_path / "state"),
        VAULT_ID_TOKEN=sandbox.ci_jwt(subject="project_path:umc/platform:ref_type:branch:ref:main",
                                      claims={"project_path": "umc/platform"}).get_secret_value(),
        CI_JOB_ID="4711", CI_PIPELINE_ID="815", CI_PROJECT_PATH="umc/platform", GITLAB_CI="true",
        GITLAB_USER_LOGIN="ci-user",
        **job["variables"],
    )  # fmt: skip
    script = "set -euo pipefail\n" + "\n".join(job["script"])
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600, env=env,
                            cwd=tmp_path, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "result.json").read_text())["deployment"] == "team-x-ci"
    run = json.loads((tmp_path / "status.json").read_text())["runs"][-1]
    assert (run["actor"]["ci_job_id"], run["actor"]["ci_pipeline_id"], run["actor"]["user"]) == (
        "4711",
        "815",
        "ci-user",
    )
    from umc_infra import destroy

    destroy("team-x-ci", settings=info.settings())


def test_the_writing_a_blueprint_example_validates(tmp_path):
    """docs/provision.md's blueprint, as written, passes `umc-infra blueprints validate` (tools included)."""
    (example,) = [code for where, code in blocks("yaml") if where.startswith("docs/provision.md")
                  and code.startswith("name: team-web")]  # fmt: skip
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "blueprints" / "team-web.yaml").write_text(example)
    umc = Path(sys.executable).parent / "umc-infra"
    result = subprocess.run([str(umc), "blueprints", "validate", str(tmp_path / "blueprints" / "team-web.yaml")],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
