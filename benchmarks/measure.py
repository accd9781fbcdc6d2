"""Measuring one run of a side, and the statistics the benchmark reports.

A run is a child process (``argv``) of the benchmark: its wall time, the CPU seconds of its process tree
(user + system of every process it waited for, from ``getrusage(RUSAGE_CHILDREN)``), and its memory:

- per process: the peak resident set (``VmHWM``, which starts afresh at ``exec``) of every process of the
  tree, sampled every :data:`SAMPLE_S` and kept by program name (the largest of each);
- for the tree: the largest sum of the resident sets seen at one sample, and, where the machine lets the
  benchmark make a memory cgroup (v2 ``memory.peak``, v1 ``memory.max_usage_in_bytes``), the cgroup's peak,
  which counts the page cache the tree read as well.

Statistics: paired ratios (one per round, both sides measured in the same round) summarised by their median
and a bootstrap 95 % interval of that median.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_S = 0.1
"""How often the memory of a run's processes is read."""
MB = 1024 * 1024


@dataclass
class Measured:
    """One run of one side."""

    seconds: float
    cpu_s: float
    stdout: str
    steps: dict[str, float] = field(default_factory=dict)
    processes_mb: dict[str, float] = field(default_factory=dict)
    """The peak resident set of each program of the tree (the largest process of that name), in MB."""
    tree_rss_peak_mb: float = 0.0
    cgroup_peak_mb: float | None = None


class RunFailed(RuntimeError):
    """A side's run ended with a non-zero status."""


class MemoryCgroup:
    """A memory cgroup of the benchmark's own for one run (v2, or v1's memory controller); None if not allowed."""

    def __init__(self, path: Path, peak_file: str) -> None:
        self.path = path
        self.peak_file = peak_file

    @classmethod
    def make(cls, name: str) -> MemoryCgroup | None:
        """A new cgroup below the benchmark's own (None where the machine does not let it make one)."""
        lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
        own = {parts[1]: parts[2] for parts in lines if len(parts) == 3}
        candidates = []
        if Path("/sys/fs/cgroup/cgroup.controllers").exists() and "" in own:  # v2, unified
            candidates.append((Path("/sys/fs/cgroup") / own[""].lstrip("/"), "memory.peak"))
        if "memory" in own:
            candidates.append((Path("/sys/fs/cgroup/memory") / own["memory"].lstrip("/"), "memory.max_usage_in_bytes"))
        for parent, peak_file in candidates:
            path = parent / name
            try:
                path.mkdir()
            except OSError:
                continue
            if (path / peak_file).exists():
                return cls(path, peak_file)
            with contextlib.suppress(OSError):
                path.rmdir()
        return None

    def enter(self) -> None:
        """Put the calling process in the cgroup (from ``preexec_fn``: before the child runs anything)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def peak_mb(self) -> float:
        return int((self.path / self.peak_file).read_text()) / MB

    def remove(self) -> None:
        """Move what still runs in it (an SSH master kept for later runs) to the parent, then remove it."""
        with contextlib.suppress(OSError):
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    (self.path.parent / "cgroup.procs").write_text(str(pid))
            self.path.rmdir()


def _descendants(root: int) -> list[int]:
    """``root`` and its descendants, from /proc (where no cgroup lists them)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _status(pid: int) -> tuple[str, int, int] | None:
    """(name, VmHWM kB, VmRSS kB) of a process, or None if it is gone (or a kernel thread)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    if "VmHWM" not in fields:
        return None
    return fields["Name"].strip(), int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


class _Sampler(threading.Thread):
    def __init__(self, root: int, cgroup: MemoryCgroup | None) -> None:
        super().__init__(daemon=True)
        self.root, self.cgroup = root, cgroup
        self.stop = threading.Event()
        self.peaks: dict[int, tuple[str, int]] = {}
        self.tree_kb = 0

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        pids = self.cgroup.pids() if self.cgroup is not None else _descendants(self.root)
        total = 0
        for pid in pids:
            found = _status(pid)
            if found is None:
                continue
            name, hwm, rss = found
            total += rss
            if hwm >= self.peaks.get(pid, ("", 0))[1]:
                self.peaks[pid] = (name, hwm)
        self.tree_kb = max(self.tree_kb, total)


def measure(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None, memory: bool = True,
            timeout_s: float = 1800) -> Measured:  # fmt: skip
    """Run ``argv`` to its end and measure it (see the module's doc); :class:`RunFailed` if it fails."""
    cgroup = MemoryCgroup.make(f"umc-bench-{os.getpid()}-{time.monotonic_ns()}") if memory else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        process = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   preexec_fn=cgroup.enter if cgroup is not None else None)  # fmt: skip
        sampler = _Sampler(process.pid, cgroup) if memory else None
        if sampler is not None:
            sampler.start()
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            raise RunFailed(f"{' '.join(argv[:3])} ran over {timeout_s:.0f} s: {stderr[-2000:]}") from None
        finally:
            if sampler is not None:
                sampler.stop.set()
                sampler.join()
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if process.returncode != 0:
            raise RunFailed(f"{' '.join(argv[:4])} failed ({process.returncode}): {stdout[-1500:]} {stderr[-2500:]}")
        measured = Measured(seconds=seconds, stdout=stdout,
                            cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))  # fmt: skip
        if sampler is not None:
            by_name: dict[str, float] = {}
            for name, hwm in sampler.peaks.values():
                by_name[name] = max(by_name.get(name, 0.0), hwm / 1024)
            measured.processes_mb = {n: round(mb, 1) for n, mb in sorted(by_name.items())}
            measured.tree_rss_peak_mb = round(sampler.tree_kb / 1024, 1)
        if cgroup is not None:
            measured.cgroup_peak_mb = round(cgroup.peak_mb(), 1)
        return measured
    finally:
        if cgroup is not None:
            cgroup.remove()


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot, over all its CPUs.

    From ``/proc/stat``: every state but idle and iowait. The difference over a measurement is what every process
    used, the sandbox's guests and services too, and the processes that ended in between.
    """
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- statistics ---------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired(numerator: Sequence[float], denominator: Sequence[float], *, resamples: int = 10_000,
           seed: int = 15) -> dict[str, Any]:  # fmt: skip
    """The median of the paired ratios ``numerator[i] / denominator[i]`` and its bootstrap 95 % interval."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    low, high = medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
    return {"ratio_median": round(median(ratios), 4), "ci95": [round(low, 4), round(high, 4)],
            "rounds": len(ratios), "ratios": [round(r, 4) for r in ratios]}  # fmt: skip


def step_medians(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each step over the runs that have it, in seconds."""
    names = sorted({name for run in runs for name in run})
    return {n: round(median([run[n] for run in runs if n in run]), 3) for n in names}
