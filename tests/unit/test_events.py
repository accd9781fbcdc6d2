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


def test_a_task_result_carries_its_duration():
    done = TaskResult(deployment="d", playbook="base", host="h", task="t", status="ok", seconds=1.5)
    assert done.seconds == 1.5 and done.model_dump(mode="json")["seconds"] == 1.5
    assert TaskResult(deployment="d", playbook="base", host="h", task="t", status="started").seconds is None
