"""The one retry policy for remote calls made after a mount is published.

Once the daemon has reported ready it never gives up on the remote: a failed
history fetch, blob batch, ``object-info`` request or ref update is tried again
later, with exponential backoff and jitter, for as long as the mount lives.
This module owns the three decisions behind that:

* :func:`classify`: what a failure means. The remote lacking an object is
  *permanent* (asking again cannot help); a full local disk is *no space*
  (wait for space, not for the remote); everything else that comes from the
  network or the remote's answers is *transient*. Anything else is a bug and
  is not classified.
* :class:`Backoff`: how long to wait before attempt *n*.
* :class:`RemoteHealth`: whether the remote is answering, since when, and the
  last error, for ``status``, the log and systemd.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from artifactfs.errors import NO_SPACE_ERRNOS, CorruptObjectError, MissingObjectError, RemoteError
from artifactfs.status import RemoteHealthReport

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Verdict(enum.Enum):
    PERMANENT = "permanent"
    """The remote does not have the object: record the failure once, never ask again."""
    TRANSIENT = "transient"
    """The network or the remote failed: try again after a backoff."""
    NO_SPACE = "no-space"
    """The local disk is full: pause until space returns."""


def classify(error: BaseException) -> Verdict | None:
    """What ``error`` means for a retry; None for failures that are not the remote's or the disk's (bugs)."""
    if isinstance(error, MissingObjectError):
        return Verdict.PERMANENT
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return Verdict.NO_SPACE
    if isinstance(error, RemoteError | CorruptObjectError | OSError | trio.BrokenResourceError):
        # Resets, refusals, timeouts, 5xx, auth or routing trouble, truncated or corrupt
        # packs and garbled replies: all of them can be over when we ask again.
        return Verdict.TRANSIENT
    return None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``base * 2**(n-1)``, capped, times a random factor in [1-jitter, 1+jitter]."""

    base: float = 0.2
    cap: float = 10.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retrying after ``attempt`` consecutive failures (``attempt`` >= 1)."""
        exponent = min(max(attempt, 1) - 1, 62)
        nominal = min(self.base * 2.0**exponent, self.cap)
        return nominal * self.rng.uniform(1 - self.jitter, 1 + self.jitter)


HYDRATION_BACKOFF = Backoff(base=0.2, cap=10.0)
"""Blob batches and object-info: short enough that hydration resumes within seconds of the remote's return."""
HISTORY_BACKOFF = Backoff(base=1.0, cap=60.0)
"""The background history fetch: large, not urgent."""
SPACE_BACKOFF = Backoff(base=0.5, cap=30.0)
"""Polling free space while hydration is paused on a full disk."""


@dataclass
class RemoteHealth:
    """Whether the remote answers, as seen by every call made through the retry policy.

    The remote is ``unreachable`` after ``threshold`` transient failures in a
    row and ``ok`` again after the first success. Changes are logged once each.
    """

    threshold: int = 2
    state: str = "ok"
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    consecutive_failures: int = 0
    recovered: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) each time the remote answers after a failure: waiting retries go at once."""

    def failed(self, message: str) -> None:
        self.consecutive_failures += 1
        self.last_error = message
        if self.state == "ok" and self.consecutive_failures >= self.threshold:
            self.state = "unreachable"
            self.since = time.time()
            log.warning("remote unreachable: %s; retrying with backoff", message)

    def succeeded(self) -> None:
        if self.consecutive_failures == 0:
            return
        if self.state == "unreachable":
            log.warning("remote reachable again after %.0fs", time.time() - self.since)
            self.state = "ok"
            self.since = time.time()
        self.consecutive_failures = 0
        self.recovered.set()
        self.recovered = trio.Event()

    def report(self) -> RemoteHealthReport:
        return RemoteHealthReport(
            self.state, round(self.since, 3), self.last_error, self.consecutive_failures
        )


async def retry_forever(
    call: Callable[[], Awaitable[_T]], what: str, health: RemoteHealth, backoff: Backoff
) -> _T:
    """Run ``call`` until it succeeds, waiting ``backoff`` between attempts.

    Every classified failure (even a permanent one: refs and history move on)
    is logged and retried; an unclassified one (a bug) propagates. The wait
    ends early when another caller sees the remote answer again.
    """
    return await _retry(call, what, health, backoff, retried=frozenset(Verdict), deadline=None)


async def retry_while_transient(
    call: Callable[[], Awaitable[_T]], what: str, health: RemoteHealth, backoff: Backoff, deadline: float
) -> _T:
    """Run ``call`` until it succeeds, retrying transient failures only, until ``deadline`` (trio time).

    For a caller that waits on the answer (git's own lazy fetch): a
    permanent failure, a full disk or a bug is raised at once, and the last
    transient error is raised once the next try would start after ``deadline``.
    """
    return await _retry(
        call, what, health, backoff, retried=frozenset({Verdict.TRANSIENT}), deadline=deadline
    )


async def _retry(
    call: Callable[[], Awaitable[_T]],
    what: str,
    health: RemoteHealth,
    backoff: Backoff,
    *,
    retried: frozenset[Verdict],
    deadline: float | None,
) -> _T:
    """The one retry loop: failures classified as one of ``retried`` wait out ``backoff`` and go again."""
    attempt = 0
    while True:
        try:
            result = await call()
        except Exception as error:
            verdict = classify(error)
            if verdict not in retried:
                raise
            attempt += 1
            if verdict is Verdict.TRANSIENT:
                health.failed(f"{what}: {error}")
            delay = backoff.delay(attempt)
            if deadline is not None and trio.current_time() + delay > deadline:
                raise
            log.warning(
                "%s failed (attempt %d, %s): %s; next try in %.1fs",
                what,
                attempt,
                verdict.value,
                error,
                delay,
            )
            recovered = health.recovered
            with trio.move_on_after(delay):
                await recovered.wait()
            continue
        health.succeeded()
        return result
