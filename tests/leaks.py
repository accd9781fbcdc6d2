"""Finding secrets where they must not be: in texts, in files, and in the command lines of running processes.

Shared by the integration and resilience suites. A secret is looked for in every form in which text and
files carry it: verbatim; JSON-, repr-, HTML- and URL-escaped; and, if it holds characters that formats quote,
by its long alphanumeric runs, so a canary such as ``canary-3f9a...-'q"$`` is found by ``3f9a...`` however a
format quoted the rest of it (YAML, a shell line, SQL). A secret shorter than :data:`MIN_SCANNED` characters
(``true``, ``umc``) is a common word: it cannot be looked for as a substring, and :func:`leaks` refuses it.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from umc_infra import private as _private

MIN_SCANNED = 8
"""Secrets at least this long are looked for as substrings (the library redacts them wherever they occur)."""
MIN_CORE = 16
"""An alphanumeric run at least this long inside a secret is looked for on its own."""
_CORE = re.compile(rf"[A-Za-z0-9]{{{MIN_CORE},}}")
_QUOTED = re.compile(r"[^A-Za-z0-9+/=_.:-]")


def forms(secret: str) -> set[str]:
    """The ways a secret shows up in text and files: verbatim and escaped; and, when it holds characters formats
    quote or escape (quotes, backslashes, ``$``, spaces ...), its long alphanumeric runs. (A key line or a token,
    of base64 and URL-safe characters only, is never split: part of a key line may be a header every key has.)"""
    found = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        html.escape(secret),
        html.escape(secret, quote=False),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
    }
    return found | set(_CORE.findall(secret)) if _QUOTED.search(secret) else found


def _needles(secrets: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Each secret's first characters (to name it in a report) and its forms."""
    needles = []
    for secret in secrets:
        if len(secret) < MIN_SCANNED:
            raise ValueError(f"a secret of {len(secret)} characters cannot be looked for as a substring")
        needles.append((secret[:4], sorted(forms(secret))))
    return needles


def leaks(secrets: Iterable[str], *texts: str, directories: Iterable[Path] = (), since: float = 0.0) -> list[str]:
    """Where any secret shows, in any of its forms: in the texts, or in a file under the directories
    (files changed since ``since`` only, for shared directories such as /tmp); once per secret and place."""
    needles = _needles(secrets)
    found = []
    for i, text in enumerate(texts):
        found += [f"{start}... in text {i}" for start, shapes in needles if any(f in text for f in shapes)]
    for directory in directories:
        for path in _files(directory):
            if _in_a_live_run(path):
                continue
            try:
                stat = path.stat()
                if not path.is_file() or path.is_symlink() or stat.st_mtime < since or stat.st_size > 20_000_000:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{start}... in {path}" for start, shapes in needles if any(f.encode() in data for f in shapes)]
    return found


def _files(directory: Path) -> Iterator[Path]:
    """The files under ``directory``; what vanishes during the walk (other runs work meanwhile) is left out."""
    for root, _, names in os.walk(directory):
        yield from (Path(root) / name for name in names)


def _in_a_live_run(path: Path) -> bool:
    """Whether ``path`` is in the private directory of a run that still goes on in another process (its SSH key and
    vars are there while it runs): only a dead run's directory, or this process's, holds files that outlived a run."""
    run_dir = next((p for p in (path, *path.parents) if p.name.startswith(_private.PREFIX)), None)
    if run_dir is None:
        return False
    owner = _private._owner(run_dir)
    return owner is not None and owner[0] != os.getpid() and _private.is_running(*owner)


def scanned_places(state_dir: Path) -> tuple[Path, ...]:
    """Where a run could leave files: its state directory (Terraform's working directories among them), /dev/shm
    (private run directories), the temp dir, and the home directory's Ansible and Terraform directories."""
    home = Path.home()
    return (state_dir, Path("/dev/shm"), Path(tempfile.gettempdir()), home / ".ansible", home / ".terraform.d")


def sandbox_secrets(sandbox: Any, info: Any) -> list[str]:
    """Every secret the sandbox holds: Vault root and read tokens, AppRole secret id, the vSphere and demo DB
    passwords, the S3 secret key, the Windows Administrator and domain join passwords, the service database's and
    the sandbox users' passwords, and the SSH and JWT signing keys line by line (less the lines every key of their
    kind has: the armour, and the header of an OpenSSH key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from tests.integration.conftest import read_secret
    from umc_infra.sandbox import _vault

    creds = sandbox._credentials(create=False)
    values = [info.vault_token.get_secret_value(), info.vault_secret_id.get_secret_value(),
              creds.vault_root_token.get_secret_value(), info.s3_secret_key.get_secret_value(),
              read_secret(info, info.inventory.vault_vsphere_path)["password"],
              creds.demo_db_password.get_secret_value()]  # fmt: skip
    windows = read_secret(info, info.inventory.vault_windows_path)
    values += [windows["admin_password"], windows["join_password"]]
    values += [p.get_secret_value() for p in [creds.postgres_password, *(creds.user_passwords or {}).values()] if p]
    another_ssh_key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    for key, another in ((read_secret(info, info.inventory.vault_ansible_path)["ssh_private_key"],
                          another_ssh_key.decode()),
                         (creds.jwt_signing_key.get_secret_value(), _vault.new_jwt_signing_key())):  # fmt: skip
        common = set(another.splitlines())
        values += [line for line in key.strip().splitlines() if line not in common and len(line) >= 16]
    assert all(len(v) >= 16 for v in values), "every sandbox secret is long enough to be found unambiguously"
    return values


def command_lines() -> dict[int, bytes]:
    """Every process's command line on the machine (guests' processes included: their pid namespaces are
    inside this one), arguments separated by spaces."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
    return found


class ArgvWatch:
    """While the block runs, samples every process's command line on the machine and notes those that hold a
    secret: whatever stands in argv is visible to every user of the machine (``ps``), for as long as the process
    runs, however short. A thread samples every ``interval_s``.

    Args:
        secrets: Values at least :data:`MIN_SCANNED` characters long.
        interval_s: Time between two samples.

    """

    def __init__(self, secrets: Iterable[str], *, interval_s: float = 0.02) -> None:
        self._needles = [(start, form.encode()) for start, shapes in _needles(secrets) for form in shapes]
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.found: dict[str, str] = {}
        """``secret start... in pid N``: that process's program and command line around the secret, which shows as
        ``<SECRET>``."""
        self.samples = 0

    def _watch(self) -> None:
        own = os.getpid()
        while not self._stop.is_set():
            for pid, argv in command_lines().items():
                if pid == own:
                    continue
                held = [(start, form) for start, form in self._needles if form in argv]
                for start, _ in held:
                    shown = argv
                    for _, form in sorted(held, key=lambda h: -len(h[1])):  # the whole secret before a part
                        shown = shown.replace(form, b"<SECRET>")
                    at = shown.index(b"<SECRET>")
                    where = shown[:40] + b" ... " + shown[max(40, at - 120) : at + 60]  # the program, and around it
                    self.found.setdefault(f"{start}... in pid {pid}", where.decode(errors="replace"))
            self.samples += 1
            self._stop.wait(self._interval_s)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
