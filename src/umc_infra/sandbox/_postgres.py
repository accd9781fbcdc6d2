"""PostgreSQL for the sandbox: Debian's server, a cluster in the state directory, the service's database and role.

The self-service service keeps its job queue and its tables here. The server listens on the sandbox host
(loopback) and on a unix socket in the state directory, never on /var/run's shared socket directory.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from umc_infra.errors import ComponentFailed, MissingDependency
from umc_infra.process import run
from umc_infra.sandbox import _daemons, _host
from umc_infra.sandbox._config import Credentials, SandboxInfo, SandboxInventory, SandboxPaths

if TYPE_CHECKING:
    import psycopg

NAME = "postgres"
STEP = "sandbox.postgres"
PURPOSE = "the sandbox's PostgreSQL server (for the self-service service)"
PACKAGE = "postgresql"
"""The Debian package (it pulls in the current major version's server)."""
CREATECLUSTER_CONF = Path("/etc/postgresql-common/createcluster.conf")
BIN_DIRS = "/usr/lib/postgresql/*/bin"
"""Where Debian installs each major version's server programs."""
RUN_AS = "postgres"
"""The account the server runs as when the sandbox runs as root (made by Debian's ``postgresql-common``)."""
SOCKET_PATH_MAX = 107
"""The longest unix socket path Linux takes (``sun_path`` less its final NUL)."""


def bin_dir(pattern: str | None = None) -> Path | None:
    """The newest installed major version's program directory (of ``pattern``, :data:`BIN_DIRS`), if any."""
    found = [p for p in Path("/").glob((pattern or BIN_DIRS).lstrip("/")) if (p / "postgres").is_file()]
    return max(found, key=_major) if found else None


def ensure_server(*, on_progress: Callable[[str], None]) -> Path:
    """The server's program directory; as root, installs the Debian package first if it is missing.

    Raises:
        MissingDependency: No server is installed and this process cannot install it; names the package.

    """
    found = bin_dir()
    if found is not None:
        return found
    if not _host.can_install():
        raise MissingDependency(
            f"{PURPOSE} needs the Debian package {PACKAGE}, which is not installed (before installing it, keep Debian "
            f"from creating and starting a cluster of its own: create_main_cluster = false in {CREATECLUSTER_CONF})",
            fix=_host.install_command([PACKAGE]),
            step=STEP,
        )
    # Debian's server package creates and starts a cluster of its own (port 5432) unless postgresql-common's
    # createcluster.conf says not to: that package first, the setting switched off, then the server.
    _host.require_packages({"postgresql-common": CREATECLUSTER_CONF}, purpose=PURPOSE, step=STEP,
                           on_progress=on_progress)  # fmt: skip
    CREATECLUSTER_CONF.write_text(without_main_cluster(CREATECLUSTER_CONF.read_text()))
    _host.install_packages([PACKAGE], purpose=PURPOSE, step=STEP, on_progress=on_progress)
    found = bin_dir()
    if found is None:
        raise ComponentFailed(f"{PACKAGE} was installed, but no server is in {BIN_DIRS}", step=STEP)
    return found


def without_main_cluster(conf: str) -> str:
    """createcluster.conf that keeps Debian's server packages from creating (and starting) a ``main`` cluster."""
    setting = re.compile(r"^#?\s*create_main_cluster\s*=.*$", re.M)
    if setting.search(conf):
        return setting.sub("create_main_cluster = false", conf, count=1)
    return conf + ("" if conf.endswith("\n") or not conf else "\n") + "create_main_cluster = false\n"


def _major(path: Path) -> tuple[int, ...]:
    """The version of ``/usr/lib/postgresql/<version>/bin``, for ordering (15 before 16, 9.6 before 10)."""
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def as_server_user(argv: list[str], *, root: bool) -> list[str]:
    """``argv`` run as an account PostgreSQL accepts: it refuses to run as root.

    As root, in a user namespace that maps root to the ``postgres`` account: PostgreSQL sees a non-root owner of its
    files, while on disk every file stays root's, so the data directory may stay under /root (mode 0700), which the
    real ``postgres`` account could not reach (``runuser -u postgres`` would need a directory outside the state
    directory, and files a second account owns). ``unshare`` execs the program in place: the recorded pid is the
    server's. Not root: the current user runs it as it is.
    """
    if not root:
        return argv
    return ["unshare", "--user", f"--map-user={RUN_AS}", f"--map-group={RUN_AS}", "--", *argv]


def initdb_argv(bin_path: Path, data: Path, inventory: SandboxInventory) -> list[str]:
    """A new cluster: its superuser reached through the unix socket only, UTF-8, no locale of the host's."""
    return [
        str(bin_path / "initdb"),
        f"--pgdata={data}",
        f"--username={inventory.postgres_superuser}",
        "--auth-local=trust",
        "--auth-host=reject",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        "--no-instructions",
    ]


def server_argv(bin_path: Path, data: Path, *, host: str, port: int, socket_dir: Path) -> list[str]:
    """The server in the foreground: TCP on the sandbox host only, the unix socket in the state directory."""
    return [
        str(bin_path / "postgres"),
        "-D", str(data),
        "-c", f"listen_addresses={host}",
        "-c", f"port={port}",
        "-c", f'unix_socket_directories="{socket_dir}"',
        "-c", "unix_socket_permissions=0700",
        "-c", "password_encryption=scram-sha-256",
        "-c", "ssl=off",
    ]  # fmt: skip


def hba(host_network: str = "127.0.0.0/8") -> str:
    """Who may log in how: TCP from loopback with a SCRAM password, nothing else over TCP.

    The unix socket takes logins without a password, for seeding: it lies in a 0700 directory, so only the account
    that runs the sandbox reaches it.
    """
    return (
        "# TYPE  DATABASE  USER  ADDRESS  METHOD  (written by umc-infra's sandbox at every start)\n"
        "local   all       all            trust\n"
        f"host    all       all   {host_network}  scram-sha-256\n"
    )


def socket_file(paths: SandboxPaths, port: int) -> Path:
    """The server's unix socket."""
    return paths.postgres_run / f".s.PGSQL.{port}"


def ensure_cluster(paths: SandboxPaths, bin_path: Path, inventory: SandboxInventory, *, root: bool) -> bool:
    """Make the cluster if there is none yet (initdb, once); whether it made one."""
    data = paths.postgres_data
    if (data / "PG_VERSION").is_file():
        return False
    partial = data.with_name(f"{data.name}.partial")  # an initdb cut short leaves no cluster that looks whole
    shutil.rmtree(partial, ignore_errors=True)
    run(as_server_user(initdb_argv(bin_path, partial, inventory), root=root), step="sandbox.postgres.initdb",
        env=_host.host_env(), cwd=paths.state_dir, timeout=300)  # fmt: skip
    partial.rename(data)
    return True


def start(
    bin_path: Path, *, host: str, port: int, paths: SandboxPaths, inventory: SandboxInventory, root: bool
) -> _daemons.Daemon:
    """Make the cluster if needed, write its access rules, start the server and wait until it takes logins.

    Raises:
        ComponentFailed: The socket path is too long, or the server did not come up.

    """
    socket = socket_file(paths, port)
    if len(str(socket)) > SOCKET_PATH_MAX:
        raise ComponentFailed(
            f"PostgreSQL's socket path {socket} is longer than {SOCKET_PATH_MAX} characters; "
            "choose a shorter state directory: export UMC_SANDBOX_STATE_DIR=<shorter path>",
            step=STEP,
        )
    ensure_cluster(paths, bin_path, inventory, root=root)
    (paths.postgres_data / "pg_hba.conf").write_text(hba())
    paths.postgres_run.mkdir(mode=0o700, exist_ok=True)
    paths.postgres_run.chmod(0o700)
    daemon = _daemons.start(
        NAME,
        as_server_user(server_argv(bin_path, paths.postgres_data, host=host, port=port, socket_dir=paths.postgres_run),
                       root=root),
        env=_host.host_env(),
        pids_dir=paths.pids,
        logs_dir=paths.logs,
        cwd=paths.state_dir,
        stop_signal=signal.SIGINT,  # a fast shutdown: SIGTERM would wait for every client to disconnect
    )  # fmt: skip
    _daemons.wait_until(lambda: _answers(paths, port, inventory), daemon=daemon, component=NAME, timeout_s=60)
    return daemon


def _superuser(paths: SandboxPaths, port: int, inventory: SandboxInventory) -> psycopg.Connection[Any]:
    """A connection as the cluster's superuser, through the unix socket."""
    import psycopg

    return psycopg.connect(host=str(paths.postgres_run), port=port, user=inventory.postgres_superuser,
                           dbname="postgres", autocommit=True, connect_timeout=5)  # fmt: skip


def _answers(paths: SandboxPaths, port: int, inventory: SandboxInventory) -> bool:
    """Whether the server takes logins (it accepts connections before it is ready for them)."""
    import psycopg

    try:
        with _superuser(paths, port, inventory):
            return True
    except psycopg.OperationalError:
        return False


def seed(paths: SandboxPaths, port: int, creds: Credentials, inventory: SandboxInventory) -> None:
    """The service's role (login, its password) and database (owned by the role); safe to repeat.

    The password reaches the server as a SCRAM verifier computed here, never in clear text in a statement.
    """
    from psycopg import sql

    if creds.postgres_password is None:  # made by Sandbox._credentials before any seeding
        raise ComponentFailed("the sandbox has no PostgreSQL password yet", step=STEP)
    user, database = inventory.postgres_user, inventory.postgres_database
    with _superuser(paths, port, inventory) as conn:
        verifier = conn.pgconn.encrypt_password(
            creds.postgres_password.get_secret_value().encode(), user.encode(), b"scram-sha-256"
        ).decode()
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() is not None
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(user), sql.Literal(verifier)
            )
        )
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user)))


def health(info: SandboxInfo) -> str:
    """A password login over TCP with the service's URL, and the server's version."""
    import psycopg

    with psycopg.connect(info.database_url.get_secret_value(), connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, current_database(), current_setting('server_version')").fetchone()
    if row is None:
        raise ComponentFailed("PostgreSQL answered no row", step=STEP)
    user, database, version = row
    return f"PostgreSQL {version}; login as {user} to {database} ok"


@contextlib.contextmanager
def scratch_database(info: SandboxInfo) -> Iterator[SecretStr]:
    """A new, empty database on the sandbox's server, made as the service's role; its URL.

    Dropped afterwards with whatever still holds it, so a test or a benchmark of the service never meets
    another's jobs and leaves the sandbox's own ``umc`` database (the one ``sandbox env`` names) alone.
    """
    import psycopg
    from psycopg import sql

    server = info.database_url.get_secret_value().rsplit("/", 1)[0]
    name = f"scratch_{secrets.token_hex(6)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield SecretStr(f"{server}/{name}")
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
