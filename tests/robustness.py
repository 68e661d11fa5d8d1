"""Counters the robustness tests (faults, crashes, hostile trees, stress, model, field faults)
add to; ``conftest.pytest_terminal_summary`` prints them in one line."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()

LABELS = {
    "faults_injected": "faults injected",
    "reads_verified": "reads verified",
    "crashes_survived": "crashes survived",
    "hostile_cases": "hostile cases tried",
    "model_steps": "model steps",
    "full_disk_checks": "full-disk checks",
    "private_checks": "private-state checks",
    "outages_survived": "outages survived",
    "sizes_corrected": "wrong sizes corrected",
    "missing_blobs_isolated": "missing blobs isolated",
    "disk_full_pauses": "disk-full pauses",
}


def add(name: str, amount: int = 1) -> None:
    COUNTS[name] += amount


def summary() -> str | None:
    if not COUNTS:
        return None
    return ", ".join(f"{LABELS.get(name, name)}: {COUNTS[name]}" for name in LABELS if name in COUNTS)
