"""Daemons by pid file: start, find, stop, pid reuse, ports."""

import signal
import socket
import sys

import pytest

from umc_infra import PortInUse
from umc_infra.sandbox import _daemons


def test_start_find_and_stop_a_daemon(tmp_path):
    daemon = _daemons.start(
        "sleeper",
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        env={"PATH": "/usr/bin:/bin"},
        pids_dir=tmp_path / "pids",
        logs_dir=tmp_path / "logs",
    )
    assert daemon.alive()
    assert _daemons.running(tmp_path / "pids", "sleeper") == daemon
    _daemons.wait_until(lambda: "up" in daemon.log.read_text(), daemon=daemon, component="sleeper", timeout_s=10)
    _daemons.stop(daemon, pids_dir=tmp_path / "pids")
    assert not daemon.alive()
    assert _daemons.find(tmp_path / "pids", "sleeper") is None


def test_a_daemon_is_stopped_with_its_own_signal_first(tmp_path):
    """PostgreSQL's fast shutdown is SIGINT (SIGTERM would wait for its clients): the pid file keeps the signal."""
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, lambda *_: (print('got SIGINT', flush=True), sys.exit(0)))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    daemon = _daemons.start("interruptible", [sys.executable, "-c", script], env={}, pids_dir=tmp_path,
                            logs_dir=tmp_path, stop_signal=signal.SIGINT)  # fmt: skip
    _daemons.wait_until(lambda: "up" in daemon.log.read_text(), daemon=daemon, component="i", timeout_s=10)
    found = _daemons.find(tmp_path, "interruptible")
    assert found is not None and found.stop_signal == signal.SIGINT
    _daemons.stop(found, pids_dir=tmp_path, timeout_s=5)
    assert "got SIGINT" in daemon.log.read_text()


def test_a_pid_file_written_before_stop_signals_means_sigterm(tmp_path):
    old = '{"name": "x", "pid": 1, "start_ticks": 1, "log": "/tmp/x.log"}'
    (tmp_path / "x.json").write_text(old)
    found = _daemons.find(tmp_path, "x")
    assert found is not None and found.stop_signal == signal.SIGTERM


def test_a_recycled_pid_is_not_ours(tmp_path):
    daemon = _daemons.start(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={},
        pids_dir=tmp_path,
        logs_dir=tmp_path,
    )
    try:
        impostor = daemon.model_copy(update={"start_ticks": daemon.start_ticks + 1})
        assert not impostor.alive()
        _daemons.stop(impostor)  # must not touch the real process
        assert daemon.alive()
    finally:
        _daemons.stop(daemon)


def test_a_daemon_that_dies_at_start_shows_its_log(tmp_path):
    daemon = _daemons.start(
        "broken",
        [sys.executable, "-c", "raise SystemExit('config file is bad')"],
        env={},
        pids_dir=tmp_path,
        logs_dir=tmp_path,
    )
    with pytest.raises(Exception, match="config file is bad"):
        _daemons.wait_until(lambda: False, daemon=daemon, component="broken", timeout_s=10)


def test_a_taken_port_names_the_holder_and_the_fix():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert _daemons.listener_pid(port) is not None
        with pytest.raises(PortInUse) as info:
            _daemons.ensure_port_free("127.0.0.1", port, component="vcsim", setting="UMC_SANDBOX_VCSIM_PORT")
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text
    assert "export UMC_SANDBOX_VCSIM_PORT=" in text
    assert "kill " in text


def test_a_free_port_passes():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _daemons.ensure_port_free("127.0.0.1", port, component="vcsim", setting="X")
    assert not _daemons.port_open("127.0.0.1", port)
