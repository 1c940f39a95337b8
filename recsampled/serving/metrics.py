"""Prometheus metrics of the service (``GET /metrics``), in a registry of the app's own.

- ``recsampled_requests_total{endpoint, method, status}``: answered requests.
- ``recsampled_request_latency_seconds{endpoint}``: time from the first byte of the request to
  the end of the answer, as a histogram (buckets from 0.5 ms to 5 s).
- ``recsampled_errors_total{endpoint, kind}``: error answers by kind (``invalid_request``,
  ``unknown_user``, ``body_too_large``, ``internal``... see :mod:`recsampled.serving.errors`).
- ``recsampled_batch_requests`` / ``recsampled_batch_rows``: requests and query rows per shared
  search (micro-batching at work).
- ``recsampled_reloads_total{outcome}`` and ``recsampled_artifact_generation``.

Endpoints are labelled by route (unknown paths as ``other``), so label values stay few.

Example:
    >>> metrics = ServiceMetrics()
    >>> metrics.observe_request("/recommend", "POST", 200, 0.004)
    >>> b"recsampled_requests_total" in metrics.render()[0]
    True
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """The service's counters and histograms.

    Args:
        registry: where to register them; a new :class:`prometheus_client.CollectorRegistry`
            by default, so that several apps in one process do not collide.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recsampled_requests",
            "Answered HTTP requests.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "recsampled_request_latency_seconds",
            "Time to answer a request.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "recsampled_errors", "Error answers by kind.", ["endpoint", "kind"], registry=r
        )
        self.batch_requests = Histogram(
            "recsampled_batch_requests",
            "Requests answered by one shared search.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "recsampled_batch_rows",
            "Query rows (users, items, vectors) in one shared search.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "recsampled_reloads", "Artifact reloads by outcome.", ["outcome"], registry=r
        )
        self.generation = Gauge(
            "recsampled_artifact_generation", "Generation of the served artifact.", registry=r
        )
        self._children: dict[tuple[str, str, int], tuple] = {}  # labels() once per label set

    def _request_children(self, endpoint: str, method: str, status: int) -> tuple:
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(endpoint, method, str(status)),
                        self.latency.labels(endpoint))  # fmt: skip
            self._children[key] = children
        return children

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        count, latency = self._request_children(endpoint, method, status)
        count.inc()
        latency.observe(seconds)

    def observe_error(self, endpoint: str, kind: str) -> None:
        self.errors.labels(endpoint, kind).inc()

    def observe_batch(self, num_requests: int, num_rows: int) -> None:
        self.batch_requests.observe(num_requests)
        self.batch_rows.observe(num_rows)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
