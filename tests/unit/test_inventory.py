"""The inventory's statuses and rows, the history store, and how they join (no servers)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certlc.history import History
from certlc.inventory import Status, annotate, collect_vault, status_of, summarise
from certlc.vault import CertificateSummary

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(("left", "status"), [
    (-1, Status.EXPIRED), (0, Status.EXPIRED), (0.5, Status.EXPIRING_SOON), (29.9, Status.EXPIRING_SOON),
    (30, Status.NOT_EXPIRED), (400, Status.NOT_EXPIRED)])
def test_status_is_red_yellow_or_green_by_the_threshold(left: float, status: Status) -> None:
    assert status_of(NOW + left * DAY, NOW, 30) is status


def test_no_expiry_counts_as_expired() -> None:
    assert status_of(None, NOW, 30) is Status.EXPIRED


def _cert(cn: str, issuer: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - DAY).not_valid_after(NOW + DAY).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def summary(name: str, left: float | None, **tags: str) -> CertificateSummary:
    return CertificateSummary(name=name, version=f"{name}-v1", enabled=True, not_before=NOW - 300 * DAY,
                              not_after=NOW + left * DAY if left is not None else None, tags=tags,
                              thumbprint="AB" * 20)


def test_rows_carry_what_the_dashboard_shows_and_one_bad_certificate_does_not_hide_the_rest() -> None:
    items = [summary("web", 12, Recipient="a@contoso.com; b@contoso.com, a@contoso.com"),
             summary("old", -3, Template="WebServer"), summary("far", 400), summary("broken", 50)]

    def read(name: str) -> tuple[bytes | None, str | None]:
        if name == "broken":
            raise RuntimeError("the vault hiccupped")
        return _cert(f"{name}.contoso.com", "Contoso Issuing CA"), f"{name}-v2"

    rows = collect_vault("prod", items, read, now=NOW, threshold_days=30)
    by = {r.name: r for r in rows}
    assert by["web"].status == "ExpiringSoon" and by["web"].days_left == 12.0
    assert by["web"].recipients == ["a@contoso.com", "b@contoso.com"]
    assert by["web"].subject == "CN=web.contoso.com" and by["web"].issuer == "CN=Contoso Issuing CA"
    assert by["web"].version == "web-v2" and by["broken"].version == "broken-v1"  # the listing's, when unreadable
    assert by["old"].status == "Expired" and by["old"].template == "WebServer"  # from the tag
    assert by["far"].status == "NotExpired" and by["far"].not_after == "2028-01-08T12:00:00Z"
    assert by["broken"].status == "NotExpired" and by["broken"].error == "RuntimeError: the vault hiccupped"
    assert summarise(r.status for r in rows) == {"Expired": 1, "ExpiringSoon": 1, "NotExpired": 2}
    assert summarise([]) == {"Expired": 0, "ExpiringSoon": 0, "NotExpired": 0}


def test_history_keeps_every_outcome_and_the_last_meaningful_one_per_certificate(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite")
    base = {"vault": "prod", "name": "web", "old_version": "v1", "template": "WebServer"}
    history.record_outcome({**base, "outcome": "Failed", "reason": "CaUnavailable"}, at=NOW, run_id="r1")
    history.record_outcome({**base, "outcome": "Renewed", "reason": "Issued", "new_version": "v2"},
                           at=NOW + DAY, run_id="r2")
    history.record_outcome({**base, "outcome": "NotDue", "reason": "NotDue"}, at=NOW + 2 * DAY)
    history.record_outcome({**base, "name": "api", "outcome": "Pending", "reason": "Pending"}, at=NOW)
    last = history.last_outcomes()
    assert (last[("prod", "web")].outcome, last[("prod", "web")].run_id) == ("Renewed", "r2")
    assert history.last_outcomes(meaningful=False)[("prod", "web")].outcome == "NotDue"
    assert last[("prod", "api")].outcome == "Pending"
    assert [r.outcome for r in history.outcomes("prod", "web")] == ["NotDue", "Renewed", "Failed"]
    assert history.counts()[("prod", "web", "Failed")] == 1
    # Quotes and SQL in values are data, nothing else.
    history.record_outcome({**base, "name": "x'); DROP TABLE renewals; --", "outcome": "Failed", "reason": "R"})
    assert ("prod", "x'); DROP TABLE renewals; --") in history.last_outcomes()


def test_inventory_runs_are_kept_and_the_latest_read_back(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite")
    assert history.latest_inventory() == (None, [])
    history.record_inventory([{"vault": "prod", "name": "web", "status": "Expired"}], run_at=NOW)
    history.record_inventory([{"vault": "prod", "name": "web", "status": "NotExpired"}], run_at=NOW + DAY)
    when, rows = history.latest_inventory()
    assert when == "2026-12-05T12:00:00+00:00" and rows == [{"vault": "prod", "name": "web", "status": "NotExpired"}]


def test_rows_are_joined_with_the_last_outcome_and_each_hosts_rollout(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite")
    history.record_outcome({"vault": "prod", "name": "web", "outcome": "Renewed", "reason": "Issued"}, at=NOW)
    rows = collect_vault("prod", [summary("web", 300), summary("api", 300)], lambda n: (None, f"{n}-v1"), now=NOW,
                         threshold_days=30)
    rollout = [{"vault": "https://contoso.vault.azure.net", "name": "web", "hosts": [
        {"host": "web01", "installed_version": "web-v1", "stale": False, "last_result": "Installed"},
        {"host": "web02", "installed_version": "web-v0", "stale": True, "last_result": "VaultUnreachable"}]}]
    annotate(rows, history.last_outcomes(), rollout, {"prod": "https://contoso.vault.azure.net/"})
    web, api = rows
    assert (web.last_outcome, web.last_reason, web.last_outcome_at) == ("Renewed", "Issued", "2026-12-04T12:00:00+00:00")
    assert [(h["host"], h["current"], h["stale"]) for h in web.rollout] == [("web01", True, False),
                                                                           ("web02", False, True)]
    assert api.last_outcome is None and api.rollout == []
