"""The sandbox's PostgreSQL, without a server: finding it, the argv and access rules it runs with."""

from pathlib import Path

import pytest

from umc_infra import MissingDependency
from umc_infra.sandbox import _host, _postgres
from umc_infra.sandbox._config import INVENTORY, SandboxPaths


def make_bin_dirs(root: Path, *versions: str) -> str:
    for version in versions:
        directory = root / version / "bin"
        directory.mkdir(parents=True)
        (directory / "postgres").write_text("")
    return f"{root}/*/bin"


def test_the_newest_installed_major_version_is_used(tmp_path):
    pattern = make_bin_dirs(tmp_path, "9.6", "15", "10", "16")
    assert _postgres.bin_dir(pattern) == tmp_path / "16" / "bin"


def test_a_version_directory_without_the_server_does_not_count(tmp_path):
    pattern = make_bin_dirs(tmp_path, "15")
    (tmp_path / "17" / "bin").mkdir(parents=True)  # a client-only package leaves no `postgres`
    assert _postgres.bin_dir(pattern) == tmp_path / "15" / "bin"
    assert _postgres.bin_dir(f"{tmp_path}/none/*/bin") is None


def test_a_missing_server_while_not_root_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(_postgres, "BIN_DIRS", f"{tmp_path}/*/bin")
    monkeypatch.setattr(_host, "is_root", lambda: False)
    with pytest.raises(MissingDependency) as info:
        _postgres.ensure_server(on_progress=print)
    assert info.value.fix == "sudo apt-get update && sudo apt-get install -y postgresql"
    assert "needs the Debian package postgresql" in str(info.value)
    assert "create_main_cluster = false" in str(info.value)  # how to keep Debian's own cluster from starting


def test_as_root_a_missing_server_is_installed_without_debians_own_cluster(monkeypatch, tmp_path):
    """postgresql-common first, its createcluster.conf switched off, then the server: Debian starts no cluster."""
    conf = tmp_path / "createcluster.conf"
    monkeypatch.setattr(_postgres, "BIN_DIRS", f"{tmp_path}/lib/*/bin")
    monkeypatch.setattr(_postgres, "CREATECLUSTER_CONF", conf)
    monkeypatch.setattr(_host, "can_install", lambda: True)
    done: list[str] = []

    def require(packages, **_):
        done.extend(packages)
        conf.write_text("ssl = on\n#create_main_cluster = true\n")

    def install(packages, **_):
        assert "create_main_cluster = false" in conf.read_text()  # set before the server's package installs
        done.extend(packages)
        make_bin_dirs(tmp_path / "lib", "15")

    monkeypatch.setattr(_host, "require_packages", require)
    monkeypatch.setattr(_host, "install_packages", install)
    assert _postgres.ensure_server(on_progress=print) == tmp_path / "lib" / "15" / "bin"
    assert done == ["postgresql-common", "postgresql"]


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("a = 1\n#create_main_cluster = true\nb = 2\n", "a = 1\ncreate_main_cluster = false\nb = 2\n"),
        ("create_main_cluster = on\n", "create_main_cluster = false\n"),
        ("a = 1\n", "a = 1\ncreate_main_cluster = false\n"),
        ("a = 1", "a = 1\ncreate_main_cluster = false\n"),
        ("", "create_main_cluster = false\n"),
    ],
)
def test_createcluster_conf_switches_the_main_cluster_off(conf, expected):
    assert _postgres.without_main_cluster(conf) == expected
    assert _postgres.without_main_cluster(expected) == expected


def test_as_root_the_server_runs_in_a_user_namespace_as_postgres():
    argv = ["/usr/lib/postgresql/15/bin/postgres", "-D", "/root/x"]
    wrapped = _postgres.as_server_user(argv, root=True)
    assert wrapped[: wrapped.index("--")] == ["unshare", "--user", "--map-user=postgres", "--map-group=postgres"]
    assert wrapped[wrapped.index("--") + 1 :] == argv
    assert "--fork" not in wrapped  # unshare execs the server: the recorded pid is the server's


def test_not_root_the_server_runs_as_the_current_user():
    argv = ["/usr/lib/postgresql/15/bin/initdb"]
    assert _postgres.as_server_user(argv, root=False) == argv


def test_initdb_makes_a_cluster_without_passwords_in_argv_and_no_tcp_logins_of_its_own(tmp_path):
    argv = _postgres.initdb_argv(Path("/pg/bin"), tmp_path / "data", INVENTORY)
    assert argv[0] == "/pg/bin/initdb"
    assert f"--pgdata={tmp_path / 'data'}" in argv
    assert "--username=postgres" in argv
    assert "--auth-host=reject" in argv  # replaced by the sandbox's own rules before the server starts
    assert not any("pw" in a or "password" in a for a in argv)


def test_the_server_listens_on_the_sandbox_host_only_and_its_socket_in_the_state_dir(tmp_path):
    argv = _postgres.server_argv(
        Path("/pg/bin"), tmp_path / "data", host="127.0.0.1", port=18432, socket_dir=tmp_path / "run"
    )
    settings = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-c")
    assert argv[:3] == ["/pg/bin/postgres", "-D", str(tmp_path / "data")]
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["port"] == "18432"
    assert settings["unix_socket_directories"] == f'"{tmp_path / "run"}"'
    assert settings["unix_socket_permissions"] == "0700"
    assert settings["password_encryption"] == "scram-sha-256"


def test_access_rules_take_loopback_with_scram_and_the_private_socket_only():
    rules = [line.split() for line in _postgres.hba().splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "all", "trust"],
        ["host", "all", "all", "127.0.0.0/8", "scram-sha-256"],
    ]


def test_the_socket_lives_in_the_state_dir(tmp_path):
    paths = SandboxPaths(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    assert _postgres.socket_file(paths, 18432) == tmp_path / "state" / "postgres-run" / ".s.PGSQL.18432"
