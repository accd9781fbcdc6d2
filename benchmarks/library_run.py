"""The library in a fresh process, as a script that imports it runs it.

``python benchmarks/library_run.py {provision,plan,destroy} BLUEPRINT DEPLOYMENT PARAMS_JSON``.

Its settings come from the environment (the sandbox's, as ``umc-infra sandbox env`` gives them). It prints
JSON on stdout: the seconds of each step (from the library's own step events), how long the imports took,
and the process's own peak resident set (``VmHWM``: this process only, not its children).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from umc_infra import destroy, plan, provision  # noqa: E402
from umc_infra.events import Event, StepFinished  # noqa: E402

IMPORTED = time.perf_counter()


def main() -> None:
    action, blueprint, deployment, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    steps: dict[str, float] = {"python.imports": round(IMPORTED - STARTED, 3)}

    def on_event(event: Event) -> None:
        if isinstance(event, StepFinished):
            steps[event.step] = round(steps.get(event.step, 0.0) + event.seconds, 3)

    if action == "provision":
        provision(blueprint, params, deployment=deployment, on_event=on_event)
    elif action == "plan":
        plan(blueprint, params, deployment=deployment, on_event=on_event)
    else:
        destroy(deployment, on_event=on_event)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    print(json.dumps({"steps": steps, "own_peak_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1)}))


if __name__ == "__main__":
    main()
