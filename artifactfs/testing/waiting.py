"""Waiting in tests: poll a condition until it holds or a deadline passes.

Tests never sleep a guessed time to let something happen; they name the
condition and wait for it with :func:`wait_until`, which fails with a message
when the deadline passes. :func:`wait_for_exit` is the common case of a
process that must end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from artifactfs.state import pid_alive


def wait_until(
    condition: Callable[[], object], message: str, *, timeout: float = 30.0, interval: float = 0.02
) -> None:
    """Return once ``condition()`` is true; raise AssertionError with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        time.sleep(interval)


def wait_for_exit(pid: int, *, timeout: float = 10.0) -> None:
    """Return once process ``pid`` has ended (a zombie counts as ended); fail after ``timeout`` seconds."""
    wait_until(lambda: not pid_alive(pid), f"process {pid} is still running", timeout=timeout)
