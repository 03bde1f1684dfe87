"""The CPU budget comes from the cgroup quota and the affinity mask, not the node's core count."""

from __future__ import annotations

import os

from service.cpus import cgroup_quota, cpu_budget


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path) is None


def test_budget_is_the_smaller_of_quota_and_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one busy thread
    budget = cpu_budget(tmp_path)
    assert (budget.cpus, budget.quota) == (1, 0.5)
    assert budget.source == ("cgroup CPU quota" if affinity > 1 else "CPU affinity")
    (tmp_path / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")
    assert cpu_budget(tmp_path).cpus == affinity
    assert "CPU(s)" in cpu_budget(tmp_path).describe()
