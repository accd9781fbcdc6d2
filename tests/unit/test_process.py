"""The subprocess choke point: argv lists, explicit env, streaming, redaction, timeouts, signals."""

import sys
import time

import pytest
from pydantic import SecretStr

from umc_infra import ProcessError, ProcessTimeout, UmcInfraError
from umc_infra.process import Redactor, add_argv_observer, run

PY = sys.executable
ENV = {"PATH": "/usr/bin:/bin"}


def test_streams_each_line_as_it_arrives():
    seen = []
    result = run(
        [PY, "-c", "import sys; print('one'); print('two', file=sys.stderr); print('three')"],
        step="t",
        env=ENV,
        on_line=lambda stream, line: seen.append((stream, line)),
    )
    assert ("stdout", "one") in seen and ("stdout", "three") in seen and ("stderr", "two") in seen
    assert result.stdout == "one\nthree"
    assert result.stderr == "two"
    assert result.returncode == 0


def test_child_sees_only_the_given_environment(monkeypatch):
    monkeypatch.setenv("UMC_LEAK_CHECK", "visible-in-parent")
    result = run([PY, "-c", "import os; print(os.environ.get('UMC_LEAK_CHECK', 'absent'))"], step="t", env=ENV)
    assert result.stdout == "absent"


def test_secret_values_are_redacted_from_output_and_errors():
    secret = SecretStr("canary-7f3a9c")
    redactor = Redactor([secret])
    seen = []
    with pytest.raises(ProcessError) as info:
        run(
            [PY, "-c", "import os,sys; v=os.environ['V']; print('value', v); sys.exit(f'bad {v}')"],
            step="t",
            env=ENV | {"V": secret.get_secret_value()},
            redactor=redactor,
            on_line=lambda stream, line: seen.append(line),
        )
    text = str(info.value) + repr(info.value.output_tail) + repr(seen)
    assert "canary-7f3a9c" not in text
    assert "value ***" in seen
    assert info.value.returncode == 1


def test_multiline_secret_is_redacted_line_by_line():
    key = "-----BEGIN KEY-----\nAAAAsecretline1\nBBBBsecretline2\n-----END KEY-----"
    redactor = Redactor([key])
    assert redactor("got BBBBsecretline2 here") == "got *** here"


def test_argv_with_a_secret_is_refused_before_anything_starts(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UmcInfraError, match="secret value in its argv") as info:
        run(
            [PY, "-c", f"open({str(marker)!r}, 'w')", "--password=hunter2-canary"],
            step="t",
            env=ENV,
            redactor=Redactor(["hunter2-canary"]),
        )
    assert "hunter2-canary" not in str(info.value)
    assert not marker.exists()


def test_argv_observers_see_every_child():
    seen = []
    remove = add_argv_observer(seen.append)
    try:
        run([PY, "-c", "pass"], step="t", env=ENV)
    finally:
        remove()
    assert seen == [(PY, "-c", "pass")]


def test_nonzero_exit_raises_with_the_output_tail():
    with pytest.raises(ProcessError) as info:
        run(
            [PY, "-c", "import sys; print('first'); print('last words', file=sys.stderr); sys.exit(3)"],
            step="demo.step",
            env=ENV,
        )
    err = info.value
    assert err.returncode == 3
    assert err.step == "demo.step"
    assert "last words" in str(err)
    assert err.output_tail == ("last words",)


def test_check_false_returns_the_status():
    assert run([PY, "-c", "raise SystemExit(4)"], step="t", env=ENV, check=False).returncode == 4


def test_timeout_sends_sigint_first_so_the_child_can_clean_up():
    script = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    print('saving state', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    seen = []
    with pytest.raises(ProcessTimeout) as info:
        run([PY, "-c", script], step="t", env=ENV, timeout=1.5, on_line=lambda s, line: seen.append(line))
    assert seen == ["ready", "saving state"]
    assert "did not finish within 2 s" in str(info.value)


def test_missing_program_is_a_process_error():
    with pytest.raises(ProcessError, match="cannot start"):
        run(["/nonexistent/terraform"], step="t", env=ENV)


def test_stdin_text_reaches_the_child_without_argv():
    result = run([PY, "-c", "import sys; print(len(sys.stdin.read()))"], step="t", env=ENV, stdin_text="s3cr3t")
    assert result.stdout == "6"


def test_redactor_repr_shows_no_values():
    assert "abc-secret" not in repr(Redactor(["abc-secret"]))


def test_sigterm_is_an_interrupt_only_inside_the_block():
    import os
    import signal
    import threading

    from umc_infra.process import signals_set, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="signal 15"), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before
    asked = threading.Event()
    with signals_set(asked):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert asked.wait(1)
    assert signal.getsignal(signal.SIGTERM) is before


TERRAFORM_LIKE = (
    "import signal, sys, time\n"
    "marker = sys.argv[1]\n"
    "def stop(*_):\n"
    "    time.sleep(0.5)\n"  # Terraform waits for the resource operations in flight, then reports and saves
    "    for i in range(200):\n"  # what it prints while it stops: on a dead pipe it dies here
    "        print('Stopping operation... still saving', i, flush=True)\n"
    "    open(marker, 'w').write('state saved')\n"
    "    sys.exit(1)\n"
    "signal.signal(signal.SIGINT, stop)\n"
    "print('applying', flush=True)\n"
    "time.sleep(60)\n"
)
PARENT = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from umc_infra.process import run\n"
    "out = Path(sys.argv[2]) if sys.argv[2] != '-' else None\n"
    "run([sys.executable, '-c', sys.argv[3], sys.argv[1]], step='t', env={'PATH': '/usr/bin:/bin'}, output_dir=out,\n"
    "    on_line=lambda s, line: print(line, flush=True))\n"
)


@pytest.mark.parametrize("detached", [True, False], ids=["files", "pipe-control"])
def test_a_tool_outlives_its_killed_parent_long_enough_to_save_its_state(tmp_path, detached):
    """SIGKILL the Python process mid-run: its tool gets SIGINT and, writing to a file, finishes saving.

    The control (a pipe) shows why: the same tool dies on its next write once the reader is gone.
    """
    import os
    import signal
    import subprocess

    marker = tmp_path / "state"
    out = tmp_path / "out"
    out.mkdir()
    parent = subprocess.Popen(
        [PY, "-c", PARENT, str(marker), str(out) if detached else "-", TERRAFORM_LIKE],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == "applying"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists() == detached


def test_detached_output_streams_lines_and_leaves_no_files(tmp_path):
    seen = []
    result = run(
        [PY, "-c", "import sys, time\nprint('one', flush=True); time.sleep(0.3); print('two', end='')\n"
         "print('err', file=sys.stderr)"],
        step="t", env=ENV, output_dir=tmp_path, on_line=lambda s, line: seen.append((s, line)),
    )  # fmt: skip
    assert result.stdout == "one\ntwo" and result.stderr == "err"
    assert ("stdout", "one") in seen and ("stdout", "two") in seen
    assert list(tmp_path.iterdir()) == []


def test_raw_output_is_for_parsing_and_errors_stay_redacted(tmp_path):
    redactor = Redactor(["true"])
    ok = run([PY, "-c", "print('{\"sensitive\": true}')"], step="t", env=ENV, redactor=redactor, raw_output=True)
    assert ok.stdout == '{"sensitive": true}'
    with pytest.raises(ProcessError) as failed:
        run([PY, "-c", "import sys; sys.exit('value true')"], step="t", env=ENV, redactor=redactor, raw_output=True)
    assert "value ***" in str(failed.value) and "true" not in str(failed.value)


def test_umask_makes_what_the_tool_creates_private(tmp_path):
    made = tmp_path / "state.tfstate"
    run([PY, "-c", f"open({str(made)!r}, 'w').write('x')"], step="t", env=ENV, umask=0o077)
    assert made.stat().st_mode & 0o777 == 0o600
