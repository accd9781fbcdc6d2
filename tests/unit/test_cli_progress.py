"""The progress display: plain lines for a CI log, a live view on a terminal."""

import io

from rich.console import Console

from umc_infra import ResourceChanged, StepFinished, StepStarted, TaskResult
from umc_infra.cli.progress import ProgressView, progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def events(clock: Clock, view: ProgressView) -> None:
    d = "demo"
    view(StepStarted(deployment=d, step="terraform.apply.vm"))
    view(ResourceChanged(deployment=d, module="vm", address="vsphere_virtual_machine.vm[0]", action="create",
                         status="started"))  # fmt: skip
    clock.now += 2.5
    view(ResourceChanged(deployment=d, module="vm", address="vsphere_virtual_machine.vm[0]", action="create",
                         status="complete"))  # fmt: skip
    view(StepFinished(deployment=d, step="terraform.apply.vm", seconds=2.5, ok=True))
    view(StepStarted(deployment=d, step="ansible.base"))
    for host in ("web-1", "web-2"):
        view(TaskResult(deployment=d, playbook="base", host=host, task="Write the motd", status="started"))
        view(TaskResult(deployment=d, playbook="base", host=host, task="Write the motd", status="changed"))
    view(TaskResult(deployment=d, playbook="base", host="web-1", task="Install packages", status="ok"))
    view(TaskResult(deployment=d, playbook="base", host="web-2", task="Install packages", status="failed"))
    clock.now += 4.0


def test_plain_lines_for_a_log_no_colour_no_cursor_moves():
    stream = io.StringIO()
    clock = Clock()
    view = ProgressView(Console(file=stream, width=120), live=False, clock=clock)
    events(clock, view)
    text = stream.getvalue()
    assert "\x1b" not in text  # no colour, no cursor movement, no spinner frames
    assert text.splitlines() == [
        "    vm: vsphere_virtual_machine.vm[0] create complete",
        "• terraform.apply.vm          2.5 s  ok",
        "    web-1: Write the motd changed",
        "    web-2: Write the motd changed",
        "    web-2: Install packages failed",
    ]


def test_live_view_shows_the_running_step_its_hosts_and_elapsed_time():
    clock = Clock()
    view = ProgressView(Console(file=io.StringIO()), live=True, clock=clock)
    events(clock, view)
    screen = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    with screen.capture() as captured:
        screen.print(view)
    text = captured.get()
    lines = [line.rstrip() for line in text.splitlines()]
    assert any(line.split()[1:] == ["terraform.apply.vm", "2.5", "s", "ok"] for line in lines)
    assert "vsphere_virtual_machine.vm[0]" not in text  # a finished step folds its details away
    running = next(line for line in lines if "ansible.base" in line)
    assert running.split()[-2:] == ["4.0", "s"]  # elapsed while running
    web1 = next(line for line in lines if "web-1" in line)
    assert "1 changed, 1 ok" in web1 and "Install packages (ok)" in web1
    web2 = next(line for line in lines if "web-2" in line)
    assert "1 changed, 1 failed" in web2 and "Install packages (failed)" in web2
    assert lines[-1] == "6.5 s elapsed"


def test_progress_is_live_only_on_a_terminal():
    with progress(Console(file=io.StringIO())) as on_event:
        assert isinstance(on_event, ProgressView) and not on_event.live
    terminal = Console(file=io.StringIO(), force_terminal=True)
    with progress(terminal) as on_event:
        assert isinstance(on_event, ProgressView) and on_event.live
