"""The process tree under a pid from /proc, and killing it: a Ray node started with `ray start --block` runs its
workers in sessions of their own, so only the parent links find them. Shared by the multi-node tests and
bench/bench_distributed.py."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def proc_table() -> tuple[dict[int, int], dict[tuple[int, int], float]]:
    """(pid -> parent pid, (pid, start time) -> CPU seconds) of every process."""
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) onwards
        pid = int(entry)
        parent[pid] = int(fields[1])
        cpu[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return parent, cpu


def below(root: int, parent: dict[int, int]) -> list[int]:
    """`root` and every process below it in the parent links of proc_table()."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process below it, by id: a node dies as a machine would."""
    for _ in range(2):  # twice: a process forked while the first pass ran
        for pid in below(proc.pid, proc_table()[0]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(timeout=30)
