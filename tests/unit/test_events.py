"""Events of one run are numbered in order and carry when they happened."""

import threading
from datetime import UTC, datetime

from umc_infra import OutputLine, StepStarted, TaskResult
from umc_infra.events import numbered


def test_events_of_a_run_are_numbered_once_in_order_across_threads():
    seen = []
    lock = threading.Lock()

    def collect(event):
        with lock:
            seen.append(event)

    on_event = numbered(collect)
    before = datetime.now(UTC)

    def emit(i):
        for n in range(200):
            on_event(OutputLine(deployment="d", step=f"s{i}", line=str(n)))

    threads = [threading.Thread(target=emit, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(e.seq for e in seen) == list(range(1, 801))
    assert all(before <= e.at <= datetime.now(UTC) for e in seen)
    other_run = numbered(collect)
    other_run(StepStarted(deployment="d", step="blueprint"))
    assert seen[-1].seq == 1  # each run numbers its own events


def test_the_callback_gets_one_event_at_a_time_in_the_order_of_their_numbers():
    """Two threads of a run emit at once (a plan's check beside Terraform): a callback writing a line per event
    (``-o jsonl``) must never run twice at once, or the lines interleave."""
    inside = threading.Semaphore(1)
    overlaps, order = [], []

    def slow_writer(event):
        if not inside.acquire(blocking=False):
            overlaps.append(event.seq)
            return
        try:
            order.append(event.seq)
            threading.Event().wait(0.001)  # a write that takes a moment
        finally:
            inside.release()

    on_event = numbered(slow_writer)
    threads = [threading.Thread(target=lambda: [on_event(StepStarted(deployment="d", step="s")) for _ in range(50)])
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [] and order == list(range(1, 101))


def test_a_task_result_carries_its_duration():
    done = TaskResult(deployment="d", playbook="base", host="h", task="t", status="ok", seconds=1.5)
    assert done.seconds == 1.5 and done.model_dump(mode="json")["seconds"] == 1.5
    assert TaskResult(deployment="d", playbook="base", host="h", task="t", status="started").seconds is None
