"""The benchmark's measuring (benchmarks/measure.py): a run's CPU and memory, paired ratios and their interval."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.benchmark_modules import benchmark_module

measure = benchmark_module("measure")

CHILD = """
import os, subprocess, sys, time
block = bytearray(80 * 1024 * 1024)  # touched: resident
for i in range(0, len(block), 4096):
    block[i] = 1
end = time.process_time() + 0.4
while time.process_time() < end:
    pass
time.sleep(0.3)  # sampled while it holds the block
# a grandchild with a peak of its own
subprocess.run([sys.executable, "-c", "b = bytearray(40 * 1024 * 1024)\\nfor i in range(0, len(b), 4096): b[i] = 1\\n"
                "import time; time.sleep(0.3)"], check=True)
print('{"steps": {"work": 1.5}}')
"""


def test_a_run_is_measured_cpu_and_memory_of_its_tree():
    found = measure.measure([sys.executable, "-c", CHILD], env=os.environ)
    assert found.seconds >= 1.0 and found.cpu_s >= 0.4
    assert found.stdout.strip().endswith('{"steps": {"work": 1.5}}')
    name = Path(sys.executable).resolve().name[:15]  # the kernel's name of the program
    assert found.processes_mb, "no process sampled"
    assert max(found.processes_mb.values()) >= 80, found.processes_mb
    assert found.tree_rss_peak_mb >= 80
    assert any(n.startswith(name[:6]) for n in found.processes_mb), (name, found.processes_mb)
    if found.cgroup_peak_mb is not None:  # where the machine lets it make a memory cgroup
        assert found.cgroup_peak_mb >= 80


def test_a_failed_run_says_so():
    with pytest.raises(measure.RunFailed, match="failed"):
        measure.measure([sys.executable, "-c", "import sys; sys.exit('broken')"], env=os.environ, memory=False)


def test_paired_ratios_their_median_and_a_bootstrap_interval_around_it():
    library = [9.0, 10.0, 11.0, 10.0, 9.5, 10.5, 10.0, 9.0, 11.0, 10.0]
    baseline = [10.0] * 10
    found = measure.paired(library, baseline)
    assert found["ratio_median"] == 1.0 and found["rounds"] == 10
    low, high = found["ci95"]
    assert 0.9 <= low <= 1.0 <= high <= 1.1
    assert found == measure.paired(library, baseline)  # seeded: the same figures from the same runs
    clear = measure.paired([5.0] * 10, [10.0] * 10)
    assert clear["ci95"] == [0.5, 0.5]


def test_step_medians_take_each_step_over_the_runs_that_have_it():
    runs = [{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 2.0, "b": 4.0}]
    assert measure.step_medians(runs) == {"a": 2.0, "b": 3.0}


def test_the_machines_busy_cpu_counts_work_done_by_any_process():
    started, before = time.monotonic(), measure.machine_busy_s()
    spin = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    busy, took = measure.machine_busy_s() - before, time.monotonic() - started
    assert busy >= 0.5  # the child's 0.6 s, counted though it ended
    assert busy <= took * (os.cpu_count() or 1) + 0.05  # seconds, not clock ticks: no more than the CPUs can do
