"""/metrics: Prometheus' text format, parsed back with prometheus_client's own parser."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from certlc.config import Settings
from certlc.history import History
from certlc.metrics import render_metrics
from certlc.webhook import create_app

KEY = "operator-key-0123456789"
ROWS = [
    {"vault": "prod", "name": "web", "issuer": "CN=Contoso CA", "template": "WebServer", "status": "ExpiringSoon",
     "not_after": "2026-12-16T12:00:00Z", "renew_at": "2026-11-16T12:00:00Z"},
    {"vault": "prod", "name": "old", "issuer": "CN=Contoso CA", "template": None, "status": "Expired",
     "not_after": "2026-11-01T00:00:00Z", "renew_at": None},
]
COUNTS = {("prod", "web", "Renewed"): 2, ("prod", "web", "Failed"): 3, ("prod", "web", "NotDue"): 9,
          ("prod", "old", "Denied"): 1}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_the_exposition_parses_and_says_what_the_inventory_holds() -> None:
    text = render_metrics("2026-12-04T12:00:00Z", ROWS, COUNTS, {("prod", "web"): "2026-10-01T00:00:00+00:00"},
                          queue_depth=7).decode()
    got = samples(text)
    web = (("name", "web"), ("vault", "prod"))
    assert got[("certlc_certificate_expiration_timestamp_seconds",
                (("issuer", "CN=Contoso CA"), ("name", "web"), ("template", "WebServer"), ("vault", "prod")))] == \
        ts("2026-12-16T12:00:00Z")
    assert got[("certlc_certificate_renewal_timestamp_seconds", web)] == ts("2026-11-16T12:00:00Z")
    assert got[("certlc_certificate_status", (("name", "web"), ("status", "ExpiringSoon"), ("vault", "prod")))] == 1
    assert got[("certlc_certificate_status", (("name", "web"), ("status", "Expired"), ("vault", "prod")))] == 0
    assert got[("certlc_certificate_renewal_attempts_total", web)] == 5  # NotDue runs are not attempts
    assert got[("certlc_certificate_renewal_failures_total", web)] == 3
    assert got[("certlc_certificate_renewal_failures_total", (("name", "old"), ("vault", "prod")))] == 1
    assert got[("certlc_certificate_last_renewal_timestamp_seconds", web)] == ts("2026-10-01T00:00:00Z")
    assert got[("certlc_certificates", (("status", "Expired"),))] == 1
    assert got[("certlc_certificates", (("status", "NotExpired"),))] == 0
    assert got[("certlc_inventory_timestamp_seconds", ())] == ts("2026-12-04T12:00:00Z")
    assert got[("certlc_queue_depth", ())] == 7
    assert ("certlc_certificate_renewal_timestamp_seconds", (("name", "old"), ("vault", "prod"))) not in got


def test_before_any_inventory_the_counts_are_zero_not_missing() -> None:
    got = samples(render_metrics(None, [], {}, {}).decode())
    assert {k: v for k, v in got.items() if k[0] == "certlc_certificates"} == {
        ("certlc_certificates", (("status", s),)): 0 for s in ("Expired", "ExpiringSoon", "NotExpired")}


def test_the_endpoint_needs_the_operator_key_and_serves_the_last_recorded_inventory(tmp_path: Path) -> None:
    settings = Settings.model_validate({"state_dir": str(tmp_path), "webhook": {"shared_key": KEY}})
    history = History(settings.history_path)
    history.record_inventory(ROWS, run_at=dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC))
    history.record_outcome({"vault": "prod", "name": "web", "outcome": "Failed", "reason": "CaUnavailable"})

    class NoSink:
        def accept(self, events: object) -> None:
            raise AssertionError

    client = TestClient(create_app(settings, NoSink(), queue_depth=lambda: 3))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    assert got[("certlc_certificate_renewal_failures_total", (("name", "web"), ("vault", "prod")))] == 1
    assert got[("certlc_queue_depth", ())] == 3
    inventory = client.get(f"/api/inventory?key={KEY}").json()
    assert inventory["counts"] == {"Expired": 1, "ExpiringSoon": 1, "NotExpired": 0}
    assert [c["name"] for c in inventory["certificates"]] == ["old", "web"]
