"""How many CPUs this process may use: its affinity mask and its cgroup's CPU quota, not the node's cores.

A pod limited to 4 CPUs on a 64-core node sees ``os.cpu_count() == 64``; sizing thread pools from that
puts 64 threads on 4 CPUs' worth of time. The quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``) is rounded up: 2.5 CPUs of quota keep 3 threads busy part of the time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    cpus: int  # what the process may keep busy: min(affinity, quota)
    affinity: int
    quota: float | None  # CPUs of cgroup quota, None when unlimited
    source: str  # what limited it, for the log

    def describe(self) -> str:
        quota = "no quota" if self.quota is None else f"quota {self.quota:g} CPUs"
        return f"{self.cpus} CPU(s) ({self.source}; affinity {self.affinity}, {quota})"


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _own_cgroup(root: Path) -> Path:
    """This process's cgroup folder (v2: the one line ``0::/path`` of /proc/self/cgroup)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, _, path = line.split(":", 2)
            if hierarchy == "0":
                candidate = root / path.lstrip("/")
                if candidate.is_dir():
                    return candidate
    except (OSError, ValueError):
        pass
    return root


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs of quota from cgroup v2 (``cpu.max``) or v1 (``cpu/cpu.cfs_quota_us``); None when unlimited."""
    for folder in (_own_cgroup(root), root):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cpu_budget(root: Path = CGROUP_ROOT) -> CpuBudget:
    affinity = _affinity()
    quota = cgroup_quota(root)
    if quota is not None and math.ceil(quota) < affinity:
        return CpuBudget(max(1, math.ceil(quota)), affinity, quota, "cgroup CPU quota")
    return CpuBudget(affinity, affinity, quota, "CPU affinity")
