"""The portal page's files: shipped in the wheel, the vendored form library as VENDORED.md says, served as listed."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
STATIC = ROOT / "src" / "umc_infra" / "service" / "static"
VENDORED = STATIC / "vendor" / "json-editor"
PAGE = ("index.html", "portal.js", "portal.css")


def vendored_sums() -> dict[str, str]:
    """File -> sha256, from VENDORED.md's table rows (``| `file` | from | `sum` |``)."""
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\| `([0-9a-f]{64})` \|$", (VENDORED / "VENDORED.md").read_text(), re.M)
    return dict(rows)


def test_vendored_md_names_the_version_the_source_and_each_files_sha256():
    text = (VENDORED / "VENDORED.md").read_text()
    assert "| Version | 2.17.2 |" in text
    assert "https://registry.npmjs.org/@json-editor/json-editor/-/json-editor-2.17.2.tgz" in text
    sums = vendored_sums()
    assert set(sums) == {"jsoneditor.js", "jsoneditor.js.LICENSE.txt", "LICENSE"}
    for name, expected in sums.items():
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == expected, name
    assert '@version "2.17.2"' in (VENDORED / "jsoneditor.js.LICENSE.txt").read_text()
    assert "The MIT License" in (VENDORED / "LICENSE").read_text()


def test_the_page_loads_only_files_the_service_serves():
    portal = pytest.importorskip("umc_infra.service.portal", reason="needs fastapi")
    html = (STATIC / "index.html").read_text()
    loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert loaded, "the page loads nothing?"
    for url in loaded:
        if url.startswith("data:"):
            continue
        assert url.startswith("/portal/"), f"{url}: the page loads only its own files (no CDN)"
        assert url.removeprefix("/portal/") in portal.ASSETS, url
    for name in portal.ASSETS:
        assert (STATIC / name).is_file(), name


def test_the_wheel_ships_the_page_and_the_vendored_library(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, timeout=600, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("umc_infra-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {name: archive.read(name) for name in names if name.startswith("umc_infra/service/static/")}
    assert "umc_infra/service/portal.py" in names
    local = {f"umc_infra/service/static/{p.relative_to(STATIC).as_posix()}": p.read_bytes()
             for p in STATIC.rglob("*") if p.is_file()}  # fmt: skip
    assert {f"umc_infra/service/static/{name}" for name in PAGE} <= set(local)
    assert shipped == local
