"""What a process has used so far, read from ``/proc/<pid>/stat`` (Linux).

CPU time (user + system, its threads included, not its children) and minor page
faults (pages the kernel had to map fresh). The faults do not depend on what else
runs on the machine; on a shared virtual machine even CPU time grows with the load
(a worker's CPU per 1200x800 render: 32 ms quiet, 48-56 ms at load 1-2), so compare
runs made in turns. Each reads 0 once the process is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _fields(pid: int) -> list[str] | None:
    """The stat fields after the command name (which may hold spaces), from ``state`` on."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    fields = _fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICK


def minor_faults(pid: int) -> int:
    fields = _fields(pid)
    return 0 if fields is None else int(fields[7])
