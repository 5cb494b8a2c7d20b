"""``/metrics``: the estate in Prometheus' text format, named the way cert-manager names its own.

Built from the last recorded inventory (the inventory flow, or ``certlc status --record``) and
the history store, never by asking the vaults on each scrape: a scrape every 15 s must not turn
into N Key Vault requests. ``certlc_inventory_timestamp_seconds`` tells how old the picture is.

* ``certlc_certificate_expiration_timestamp_seconds{vault,name,issuer,template}`` (cert-manager:
  ``certmanager_certificate_expiration_timestamp_seconds``)
* ``certlc_certificate_renewal_timestamp_seconds`` — when certlc's policy makes it due
* ``certlc_certificate_status{status="Expired|ExpiringSoon|NotExpired"}`` — 1 for its status,
  0 for the others (cert-manager: ``certmanager_certificate_ready_status{condition}``)
* ``certlc_certificate_renewal_attempts_total`` / ``certlc_certificate_renewal_failures_total``
  (failed or denied) / ``certlc_certificate_last_renewal_timestamp_seconds``
* ``certlc_certificates{status}`` — the dashboard's donut; ``certlc_queue_depth`` when known
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from certlc.inventory import Status, summarise
from certlc.times import parse_utc

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LABELS = ["vault", "name"]


def _ts(value: str | None) -> float | None:
    when = parse_utc(value)
    return when.timestamp() if when is not None else None


class _Estate(Collector):
    def __init__(self, taken_at: str | None, rows: list[Mapping[str, Any]], counts: Mapping[tuple[str, str, str], int],
                 last_renewed: Mapping[tuple[str, str], str], queue_depth: int | None) -> None:
        self.taken_at, self.rows, self.counts = taken_at, rows, counts
        self.last_renewed, self.queue_depth = last_renewed, queue_depth

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily("certlc_certificate_expiration_timestamp_seconds",
                                   "The date after which the certificate expires (Unix seconds).",
                                   labels=[*_LABELS, "issuer", "template"])
        renew = GaugeMetricFamily("certlc_certificate_renewal_timestamp_seconds",
                                  "When certlc's renewal policy makes the certificate due (Unix seconds).",
                                  labels=_LABELS)
        status = GaugeMetricFamily("certlc_certificate_status",
                                   "1 for the certificate's status (Expired, ExpiringSoon, NotExpired), 0 otherwise.",
                                   labels=[*_LABELS, "status"])
        attempts = CounterMetricFamily("certlc_certificate_renewal_attempts",
                                       "Renewal runs that tried to renew the certificate.", labels=_LABELS)
        failures = CounterMetricFamily("certlc_certificate_renewal_failures",
                                       "Renewal runs that failed or were denied.", labels=_LABELS)
        last = GaugeMetricFamily("certlc_certificate_last_renewal_timestamp_seconds",
                                 "When certlc last renewed the certificate (Unix seconds).", labels=_LABELS)
        totals = GaugeMetricFamily("certlc_certificates", "Certificates per status.", labels=["status"])
        # Outcome counts grouped once per certificate: a scrape stays linear in the estate's size.
        outcomes: dict[tuple[str, str], dict[str, int]] = {}
        for (vault, name, outcome), count in self.counts.items():
            outcomes.setdefault((vault, name), {})[outcome] = count
        for row in self.rows:
            key = [row["vault"], row["name"]]
            if (expires := _ts(row.get("not_after"))) is not None:
                expiry.add_metric([*key, row.get("issuer") or "", row.get("template") or ""], expires)
            if (due := _ts(row.get("renew_at"))) is not None:
                renew.add_metric(key, due)
            for s in Status:
                status.add_metric([*key, s.value], 1.0 if row["status"] == s.value else 0.0)
            mine = outcomes.get((row["vault"], row["name"]), {})
            attempts.add_metric(key, sum(c for o, c in mine.items() if o not in ("NotDue", "Skipped")))
            failures.add_metric(key, mine.get("Failed", 0) + mine.get("Denied", 0))
            if (renewed := _ts(self.last_renewed.get((row["vault"], row["name"])))) is not None:
                last.add_metric(key, renewed)
        for name, count in summarise(row["status"] for row in self.rows).items():
            totals.add_metric([name], count)
        yield from (expiry, renew, status, attempts, failures, last, totals)
        taken = _ts(self.taken_at)
        if taken is not None:
            yield GaugeMetricFamily("certlc_inventory_timestamp_seconds",
                                    "When the inventory these metrics come from was taken (Unix seconds).", value=taken)
        if self.queue_depth is not None:
            yield GaugeMetricFamily("certlc_queue_depth", "Messages waiting on the renewal storage queue "
                                    "(approximate, as the queue reports it).", value=self.queue_depth)


def render_metrics(taken_at: str | None, rows: Iterable[Mapping[str, Any]],
                   counts: Mapping[tuple[str, str, str], int], last_renewed: Mapping[tuple[str, str], str],
                   queue_depth: int | None = None) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Estate(taken_at, list(rows), counts, last_renewed, queue_depth))
    return generate_latest(registry)
