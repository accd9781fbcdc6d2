"""The command line's progress: a live display on a terminal, plain lines in a CI log.

On a terminal, a rich ``Live`` view redraws in place: each step with a spinner and its elapsed time,
under a Terraform step the resources being changed, under an Ansible step each host's current task
and its ok/changed/failed counts. Anywhere else (a CI log, a pipe) it prints one plain line per step,
finished resource, and changed or failed task, with no colour, spinner or cursor movement.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from umc_infra.events import Event, EventCallback

Clock = Callable[[], float]


@dataclass
class _Resource:
    action: str
    started: float
    status: str = "started"
    seconds: float | None = None


@dataclass
class _Host:
    task: str = ""
    status: str = ""
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class _Step:
    name: str
    started: float
    seconds: float | None = None
    ok: bool | None = None
    resources: dict[str, _Resource] = field(default_factory=dict)
    hosts: dict[str, _Host] = field(default_factory=dict)


class ProgressView:
    """Follows a run's events; renders them live (``__rich__``) or prints them as plain lines.

    Args:
        console: Where progress goes (stderr, so stdout stays the result).
        live: Redraw in place (a terminal) rather than print lines.
        clock: Seconds, monotonic; tests pass their own.
    """

    def __init__(self, console: Console, *, live: bool, clock: Clock = time.monotonic) -> None:
        self.console = console
        self.live = live
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self.steps: list[_Step] = []

    def __call__(self, event: Event) -> None:
        """The ``on_event`` callback; events may come from any thread."""
        with self._lock:
            line = self._follow(event)
        if line is not None and not self.live:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def _running(self) -> _Step | None:
        return next((s for s in reversed(self.steps) if s.seconds is None), None)

    def _follow(self, event: Event) -> str | None:
        """Update the view; the plain line for the event, if it deserves one."""
        now = self._clock()
        if event.kind == "step_started":
            self.steps.append(_Step(event.step, now))
            return None
        if event.kind == "step_finished":
            step = next((s for s in reversed(self.steps) if s.name == event.step), None)
            if step is None:
                step = _Step(event.step, now - event.seconds)
                self.steps.append(step)
            step.seconds, step.ok = event.seconds, event.ok
            return f"• {event.step:<24} {event.seconds:6.1f} s  {'ok' if event.ok else 'failed'}"
        running = self._running()
        if event.kind == "resource" and running is not None:
            resource = running.resources.setdefault(event.address, _Resource(event.action, now))
            resource.status = event.status
            if event.status != "started":
                resource.seconds = now - resource.started
                return f"    {event.module}: {event.address} {event.action} {event.status}"
        elif event.kind == "task" and running is not None:
            host = running.hosts.setdefault(event.host, _Host())
            host.task, host.status = event.task, event.status
            if event.status != "started":
                host.counts[event.status] += 1
            if event.status in ("changed", "failed", "unreachable"):
                return f"    {event.host}: {event.task} {event.status}"
        return None

    def __rich__(self) -> RenderableType:
        with self._lock:
            now = self._clock()
            table = Table.grid(padding=(0, 1))
            table.add_column(width=2)
            table.add_column(min_width=26)
            table.add_column(justify="right", min_width=8)
            table.add_column()
            for step in self.steps:
                self._render_step(table, step, now)
            elapsed = Text(f"{now - self._started:.1f} s elapsed", style="dim")
            return Group(table, elapsed)

    def _render_step(self, table: Table, step: _Step, now: float) -> None:
        if step.seconds is None:
            table.add_row(Spinner("dots", style="cyan"), step.name, f"{now - step.started:.1f} s", "")
        else:
            mark = Text("✓", style="green") if step.ok else Text("✗", style="bold red")
            table.add_row(mark, step.name, f"{step.seconds:.1f} s", Text("ok" if step.ok else "failed"))
        if step.seconds is not None and step.ok:
            return  # a finished step folds away: its details no longer matter
        for address, r in step.resources.items():
            seconds = r.seconds if r.seconds is not None else now - r.started
            style = {"complete": "green", "errored": "red"}.get(r.status, "yellow")
            table.add_row("", Text(f"  {address}", overflow="ellipsis"), f"{seconds:.1f} s",
                          Text(f"{r.action} {r.status}", style=style))  # fmt: skip
        for name, host in step.hosts.items():
            counts = ", ".join(f"{n} {k}" for k, n in sorted(host.counts.items()))
            style = {"failed": "red", "unreachable": "red", "changed": "yellow"}.get(host.status, "")
            doing = Text(f"{host.task} ({host.status})", style=style, overflow="ellipsis")
            table.add_row("", Text(f"  {name}", overflow="ellipsis"), "", doing.append(f"  {counts}", style="dim"))


@contextmanager
def progress(console: Console) -> Iterator[EventCallback]:
    """An ``on_event`` callback showing progress on ``console``: live on a terminal, lines elsewhere.

    The live display stops (leaving its last frame) when the block ends, before any summary is printed.
    """
    view = ProgressView(console, live=console.is_terminal and not console.is_dumb_terminal)
    if not view.live:
        yield view
        return
    with Live(view, console=console, refresh_per_second=8, transient=False, redirect_stdout=False,
              redirect_stderr=False):  # fmt: skip
        yield view
