"""The services' Prometheus metrics, scraped before and after a scenario: what changed.

Cache hit ratio per layer (``cache_requests_total`` by layer and result) and database query
percentiles (``db_query_duration_seconds`` by kind, read or write; ``db_pool_wait_seconds``
by pool) over the scenario only: the difference of two scrapes of every service process,
summed over processes.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from services.kit.exports import CACHE_REQUESTS, DB_POOL_WAIT_SECONDS, DB_QUERY_SECONDS

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass
class Scrape:
    """Samples of every process, summed over processes: (name, labels) -> value."""

    samples: dict[Key, float] = field(default_factory=dict)

    def minus(self, before: Scrape) -> Scrape:
        return Scrape({k: v - before.samples.get(k, 0.0) for k, v in self.samples.items()})

    def select(self, name: str) -> Iterable[tuple[dict[str, str], float]]:
        for (sample, labels), value in self.samples.items():
            if sample == name:
                yield dict(labels), value


def parse(text: str, into: dict[Key, float] | None = None) -> dict[Key, float]:
    into = {} if into is None else into
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "service"))
            key = (s.name, (("service", s.labels.get("service", "")), *labels))
            into[key] = into.get(key, 0.0) + s.value
    return into


def scrape(urls: Iterable[str], timeout: float = 5.0) -> Scrape:
    samples: dict[Key, float] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            parse(response.read().decode(), samples)
    return Scrape(samples)


def cache_ratios(delta: Scrape) -> dict[str, dict[str, float]]:
    """layer -> {hit, miss, ratio} (and per service under "<service>/<layer>")."""
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in delta.select(CACHE_REQUESTS):
        for key in (labels["layer"], f"{labels['service']}/{labels['layer']}"):
            counts[key][labels["result"]] += value
    out = {}
    for key, c in sorted(counts.items()):
        lookups = sum(c.values())
        out[key] = {
            **c,
            "lookups": lookups,
            "ratio": c.get("hit", 0.0) / lookups if lookups else 0.0,
        }
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th sample.

    ``buckets``: cumulative counts by upper bound (``+Inf`` included). None without samples."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def db_quantiles(delta: Scrape, qs: Iterable[float] = (0.5, 0.95, 0.99)) -> dict[str, dict]:
    """kind (read, write; and "<service>/<kind>") -> {count, p50, p95, p99} in seconds: the
    time statements held their connection."""
    return _quantiles(delta, DB_QUERY_SECONDS, "kind", qs)


def pool_wait_quantiles(delta: Scrape, qs: Iterable[float] = (0.5, 0.95, 0.99)) -> dict[str, dict]:
    """pool ("<service>/<pool>") -> {count, p50, p95, p99} in seconds: waits for a pooled
    connection (a pool too small for its load, or a process too busy to use it)."""
    return {
        key: value
        for key, value in _quantiles(delta, DB_POOL_WAIT_SECONDS, "pool", qs).items()
        if "/" in key
    }


def _quantiles(delta: Scrape, metric: str, label: str, qs: Iterable[float]) -> dict[str, dict]:
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in delta.select(metric + "_bucket"):
        le = float(labels["le"])
        for key in (labels[label], f"{labels['service']}/{labels[label]}"):
            buckets[key][le] += value
    out: dict[str, dict] = {}
    for key, b in sorted(buckets.items()):
        count = b.get(float("inf"), 0.0)
        if count <= 0:
            continue
        out[key] = {"count": count} | {f"p{round(q * 100)}": histogram_quantile(q, b) for q in qs}
    return out
