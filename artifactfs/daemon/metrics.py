"""Prometheus metrics for one mount, served over HTTP from the daemon's own event loop.

Every value is computed at scrape time from the mount's ``status()`` (the
hydrator's counters and the FUSE layer's operation counts), so nothing is
updated on the hot path and the exporter never touches daemon state from
another thread. Needs the optional ``prometheus_client`` package
(``pip install 'artifactfs[metrics]'``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from artifactfs.errors import UsageError
from artifactfs.status import LatencyReport, MountStatus, SourceReport

log = logging.getLogger(__name__)

StatusSource = Callable[[], MountStatus]

_MAX_REQUEST_HEAD = 16384
_REQUEST_TIMEOUT = 10.0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a listening address."""
    host, separator, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"cannot parse metrics address {text!r} (example: 127.0.0.1:9464)")
    return host, int(port_text)


class MountCollector(Collector):
    """Turns one ``status()`` answer into metric families."""

    def __init__(self, status: StatusSource) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        hydration = status.hydration
        info = GaugeMetricFamily(
            "artifactfs_mount_info",
            "The mounted remote and commit (always 1).",
            labels=["remote", "mountpoint", "head"],
        )
        info.add_metric([status.remote, status.mountpoint, status.head], 1)
        yield info
        yield GaugeMetricFamily(
            "artifactfs_uptime_seconds", "Seconds since the daemon started.", value=status.uptime_seconds
        )
        yield GaugeMetricFamily(
            "artifactfs_history_complete",
            "1 once the full history is local.",
            value=1 if status.history_complete else 0,
        )
        per_class = {
            "artifactfs_tree_blobs": ("Blobs in the mounted tree.", "total"),
            "artifactfs_hydrated_blobs": ("Blobs available locally.", "hydrated"),
            "artifactfs_failed_blobs": ("Blobs the remote does not have (their reads get EIO).", "failed"),
            "artifactfs_tree_bytes": ("Known size of the blobs in the tree.", "total_bytes"),
            "artifactfs_hydrated_bytes": ("Bytes of the blobs available locally.", "hydrated_bytes"),
        }
        for name, (documentation, key) in per_class.items():
            family = GaugeMetricFamily(name, documentation + " By priority class.", labels=["class"])
            for label, counters in hydration.classes.items():
                family.add_metric([label], getattr(counters, key))
            yield family
        yield GaugeMetricFamily(
            "artifactfs_hydration_queue_depth",
            "Blobs waiting to be fetched.",
            value=hydration.queued_blobs,
        )
        yield GaugeMetricFamily(
            "artifactfs_hydration_inflight_blobs",
            "Blobs in fetch requests under way.",
            value=hydration.inflight_blobs,
        )
        yield GaugeMetricFamily(
            "artifactfs_hydration_rate_bytes_per_second",
            "Hydration throughput over the last few seconds.",
            value=hydration.rate_bytes_per_second,
        )
        yield GaugeMetricFamily(
            "artifactfs_hydration_retrying_blobs",
            "Blobs waiting out a backoff after a transient failure.",
            value=hydration.retrying_blobs,
        )
        yield GaugeMetricFamily(
            "artifactfs_hydration_paused",
            "1 while hydration waits for space in the state root.",
            value=1 if hydration.paused else 0,
        )
        yield GaugeMetricFamily(
            "artifactfs_remote_up",
            "1 while the remote answers, 0 during an outage.",
            value=1 if hydration.remote.state == "ok" else 0,
        )
        yield GaugeMetricFamily(
            "artifactfs_hydration_recent_errors",
            "Fetch errors kept in the status (the last 20 at most).",
            value=len(hydration.errors),
        )
        fuse = status.fuse
        operations = CounterMetricFamily(
            "artifactfs_fuse_operations", "FUSE requests served, by operation.", labels=["operation"]
        )
        for operation, count in sorted(fuse.operations.items()):
            operations.add_metric([operation], count)
        yield operations
        yield GaugeMetricFamily(
            "artifactfs_fuse_open_files", "Open file handles on the mount.", value=fuse.open_files
        )
        fuse_latency = HistogramMetricFamily(
            "artifactfs_fuse_operation_seconds",
            "Time to serve FUSE requests, by operation.",
            labels=["operation"],
        )
        for operation, histogram in sorted(fuse.latency.items()):
            fuse_latency.add_metric([operation], _buckets(histogram), histogram.sum)
        yield fuse_latency
        fetch_latency = HistogramMetricFamily(
            "artifactfs_fetch_seconds", "Duration of blob fetch requests (one batch each)."
        )
        fetch_latency.add_metric([], _buckets(hydration.fetch_latency), hydration.fetch_latency.sum)
        yield fetch_latency
        yield from _source_metrics(hydration.sources)
        yield CounterMetricFamily(
            "artifactfs_errors",
            "Fetch and object-info failures (each retry counts).",
            value=hydration.errors_total,
        )


def _source_metrics(sources: dict[str, SourceReport]) -> Iterator[Metric]:
    """Where blobs came from: the local cache, the shared tier, the origin."""
    counters = {
        "requests": "Requests made to each blob source.",
        "blobs": "Blobs each blob source delivered (verified).",
        "bytes": "Bytes of blobs each blob source delivered.",
        "errors": "Failures of each blob source (an optional one's blobs then come from the next).",
    }
    for field, documentation in counters.items():
        family = CounterMetricFamily(f"artifactfs_source_{field}", documentation, labels=["source"])
        for name, stats in sources.items():
            family.add_metric([name], getattr(stats, field))
        yield family
    latency = HistogramMetricFamily(
        "artifactfs_source_request_seconds", "Duration of requests to each blob source.", labels=["source"]
    )
    for name, stats in sources.items():
        latency.add_metric([name], _buckets(stats.latency), stats.latency.sum)
    yield latency


def _buckets(histogram: LatencyReport) -> list[tuple[str, float]]:
    return [(str(bound), count) for bound, count in histogram.buckets]


def registry_for(status: StatusSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MountCollector(status))
    ProcessCollector(registry=registry)
    return registry


async def serve_metrics(
    address: tuple[str, int],
    status: StatusSource,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` on ``address`` until cancelled."""
    registry = registry_for(status)
    host, port = address
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as error:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}") from None
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                head = await _request_head(stream)
                await stream.send_all(_response(head, registry))
            except trio.BrokenResourceError:
                pass

    await trio.serve_listeners(answer, listeners, task_status=task_status)


async def _request_head(stream: trio.SocketStream) -> bytes:
    head = bytearray()
    with trio.move_on_after(_REQUEST_TIMEOUT):
        while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST_HEAD:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head.extend(chunk)
    return bytes(head)


def _response(head: bytes, registry: CollectorRegistry) -> bytes:
    """The whole HTTP response to one request; a failing collector is a 500, never a crash."""
    method, _, rest = head.partition(b" ")
    target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
    if method != b"GET":
        code, content_type, body = "405 Method Not Allowed", "text/plain", b"only GET\n"
    elif target not in (b"/metrics", b"/"):
        code, content_type, body = "404 Not Found", "text/plain", b"see /metrics\n"
    else:
        try:
            code, content_type, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
        except Exception:  # a scrape must never take the mount down
            log.exception("collecting metrics failed")
            code, content_type, body = "500 Internal Server Error", "text/plain", b"collection failed\n"
    header = (
        f"HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return header.encode() + body
