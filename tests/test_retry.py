"""The retry policy (artifactfs/retry.py) on trio's MockClock: classification, backoff, health."""

from __future__ import annotations

import errno
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio
import trio.testing

from artifactfs.errors import (
    AuthenticationError,
    CorruptObjectError,
    MissingObjectError,
    ProtocolError,
    RemoteUnreachableError,
    TransientRemoteError,
)
from artifactfs.retry import (
    Backoff,
    RemoteHealth,
    Verdict,
    classify,
    retry_forever,
    retry_while_transient,
)


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (MissingObjectError("a" * 40), Verdict.PERMANENT),
        (OSError(errno.ENOSPC, "No space left on device"), Verdict.NO_SPACE),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), Verdict.NO_SPACE),
        (RemoteUnreachableError("cannot connect (connection refused)"), Verdict.TRANSIENT),
        (TransientRemoteError("server error (HTTP 503)"), Verdict.TRANSIENT),
        (CorruptObjectError("packfile checksum mismatch"), Verdict.TRANSIENT),
        (ProtocolError("malformed object-info line"), Verdict.TRANSIENT),
        (AuthenticationError("authentication failed (HTTP 401)"), Verdict.TRANSIENT),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Verdict.TRANSIENT),
        (trio.BrokenResourceError(), Verdict.TRANSIENT),
        (ValueError("a bug"), None),
        (KeyError("a bug"), None),
    ],
)
def test_classification(error: BaseException, verdict: Verdict | None) -> None:
    assert classify(error) is verdict


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    backoff = Backoff(base=0.5, cap=8.0, jitter=0.25, rng=random.Random(1))
    for attempt, nominal in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (200, 8.0)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(nominal * 0.75 <= delay <= nominal * 1.25 for delay in delays), (attempt, delays)
        assert len(set(delays)) > 1, "jitter must spread retries"


T = TypeVar("T")


def run_mocked(main: Callable[[], Awaitable[T]]) -> T:
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(main, clock=clock)


def test_retry_forever_backs_off_until_the_remote_answers() -> None:
    backoff = Backoff(base=1.0, cap=4.0, jitter=0.0)
    health = RemoteHealth()
    attempts: list[float] = []
    states: list[str] = []

    async def flaky() -> str:
        attempts.append(trio.current_time())
        states.append(health.state)
        if len(attempts) <= 6:
            raise RemoteUnreachableError("cannot connect (connection refused)")
        return "done"

    async def main() -> tuple[str, float]:
        start = trio.current_time()
        result = await retry_forever(flaky, "history fetch", health, backoff)
        return result, trio.current_time() - start

    result, elapsed = run_mocked(main)
    assert result == "done"
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps == pytest.approx([1.0, 2.0, 4.0, 4.0, 4.0, 4.0])  # doubled, then capped: never a busy loop
    assert elapsed == pytest.approx(19.0)
    assert states[:3] == ["ok", "ok", "unreachable"]  # two failures in a row make an outage
    assert health.state == "ok" and health.consecutive_failures == 0
    assert "connection refused" in (health.last_error or "")


def test_permanent_failures_are_retried_too_but_bugs_propagate() -> None:
    health = RemoteHealth()
    calls = 0

    async def missing_then_bug() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise MissingObjectError("b" * 40)
        raise ValueError("a bug, not the remote")

    async def main() -> None:
        await retry_forever(missing_then_bug, "ref update", health, Backoff(base=1.0, cap=1.0, jitter=0.0))

    with pytest.raises(ValueError):
        run_mocked(main)
    assert calls == 2


def test_an_answer_elsewhere_ends_the_backoff_at_once() -> None:
    """While one caller backs off for a minute, another caller's success sends it again right away."""
    health = RemoteHealth()
    times: list[float] = []

    async def down_once() -> None:
        times.append(trio.current_time())
        if len(times) == 1:
            raise TransientRemoteError("connection broken")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                retry_forever, down_once, "history fetch", health, Backoff(base=60.0, cap=60.0)
            )
            await trio.sleep(5)
            health.succeeded()

    run_mocked(main)
    assert times[1] - times[0] == pytest.approx(5.0)


def test_health_reports_outage_and_recovery() -> None:
    health = RemoteHealth(threshold=2)
    health.failed("fetch: connection refused")
    assert health.state == "ok"
    health.failed("fetch: connection refused")
    assert health.state == "unreachable"
    described = health.report().describe()
    assert described.startswith("unreachable since ") and "connection refused" in described
    health.succeeded()
    assert health.report().state == "ok" and health.report().describe() == "ok"


def test_retry_while_transient_gives_a_waiting_caller_an_answer_in_time() -> None:
    backoff = Backoff(base=1.0, cap=4.0, jitter=0.0)

    async def main() -> tuple[list[float], list[float], list[float]]:
        start = trio.current_time()
        tries: dict[str, list[float]] = {"recovers": [], "missing": [], "down": []}

        async def recovers() -> str:
            tries["recovers"].append(trio.current_time() - start)
            if len(tries["recovers"]) < 3:
                raise TransientRemoteError("server error (HTTP 503)")
            return "pack"

        async def missing() -> str:
            tries["missing"].append(trio.current_time() - start)
            raise MissingObjectError("b" * 40)

        async def down() -> str:
            tries["down"].append(trio.current_time() - start)
            raise RemoteUnreachableError("cannot connect (connection refused)")

        assert (
            await retry_while_transient(recovers, "lazy fetch", RemoteHealth(), backoff, start + 60) == "pack"
        )
        with pytest.raises(MissingObjectError):  # permanent: no retry
            await retry_while_transient(missing, "lazy fetch", RemoteHealth(), backoff, start + 60)
        now = trio.current_time() - start
        with pytest.raises(RemoteUnreachableError):  # the caller's deadline ends the tries
            await retry_while_transient(down, "lazy fetch", RemoteHealth(), backoff, trio.current_time() + 5)
        return tries["recovers"], tries["missing"], [at - now for at in tries["down"]]

    recovers, missing, down = run_mocked(main)
    assert recovers == [0.0, 1.0, 3.0]
    assert missing == [3.0]
    assert down == [0.0, 1.0, 3.0]  # the next try, at 7 s, would start after the 5 s deadline
