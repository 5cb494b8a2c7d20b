"""The Recipient tag, which event an outcome is, the messages owners get, and how often."""

from __future__ import annotations

import datetime as dt
import email
from email import policy
from pathlib import Path

import pytest

from certlc.deliver import compose, smtp_password
from certlc.errors import ConfigError
from certlc.notice_log import NoticeLog
from certlc.notify import Event, notice_for, parse_recipients, render
from certlc.renewal import Outcome

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
LATER = "2027-01-01T00:00:00Z"
GONE = "2026-11-01T00:00:00Z"


def outcome(kind: str, reason: str = "Issued", *, expires: str = LATER, **extra: str) -> Outcome:
    return Outcome(vault="prod", name="web01", outcome=kind, reason=reason, old_version="v1", old_thumbprint="AA" * 20,
                   old_not_after=expires, template="WebServer", **extra)


def test_recipients_split_on_commas_and_semicolons_without_duplicates() -> None:
    valid, invalid = parse_recipients(" a@contoso.com; b@contoso.com ,A@contoso.com;; not-an-address , c@x")
    assert valid == ["a@contoso.com", "b@contoso.com"]
    assert invalid == ["not-an-address", "c@x"]


def test_empty_tag_means_nobody() -> None:
    assert parse_recipients(None) == ([], [])
    assert parse_recipients(" ; , ") == ([], [])


@pytest.mark.parametrize(("kind", "reason", "expires", "event", "cause"), [
    ("Renewed", "Issued", LATER, Event.RENEWED, None),
    ("AlreadyRenewed", "Issued", GONE, Event.RENEWED, None),  # renewed is good news even after expiry
    ("Failed", "CaUnavailable", LATER, Event.FAILED, None),
    ("Pending", "Pending", LATER, Event.PENDING, None),
    ("Denied", "TemplateDenied", LATER, Event.DENIED, None),
    ("Failed", "TemplateMissing", LATER, Event.NOT_AUTOMATABLE, None),
    ("Failed", "CaProfileMissing", LATER, Event.NOT_AUTOMATABLE, None),
    ("Failed", "CaUnavailable", GONE, Event.EXPIRED, Event.FAILED),
    ("Denied", "TemplateDenied", GONE, Event.EXPIRED, Event.DENIED),
    ("Failed", "TemplateMissing", GONE, Event.EXPIRED, Event.NOT_AUTOMATABLE),
])
def test_each_outcome_is_the_event_owners_care_about(kind: str, reason: str, expires: str, event: Event,
                                                     cause: Event | None) -> None:
    notice = notice_for(outcome(kind, reason, expires=expires), now=NOW)
    assert notice is not None and (notice.event, notice.cause) == (event, cause)


def test_nothing_to_tell_when_nothing_happened() -> None:
    assert notice_for(outcome("NotDue", "NotDue"), now=NOW) is None


def test_renewed_message_names_everything_an_owner_checks() -> None:
    o = outcome("Renewed", new_not_after="2028-12-03T00:00:00Z", new_thumbprint="BB" * 20, new_version="v2")
    message = render(notice_for(o, ca_profile="adcs", run_url="https://prefect.contoso.com/runs/flow-run/1", now=NOW))
    assert message.subject == "Certificate web01 renewed"
    for part in (message.body, message.html):
        for fact in ("web01", "prod", "WebServer", "adcs", LATER, "2028-12-03T00:00:00Z", "AA" * 20, "BB" * 20, "v2",
                     "https://prefect.contoso.com/runs/flow-run/1"):
            assert fact in part, (fact, part)
    assert "Reason" not in message.body  # nothing went wrong


def test_failure_message_says_why_which_attempt_and_what_happens_next() -> None:
    notice = notice_for(outcome("Failed", "CaUnavailable", message="the CA did not answer"), attempt=3, now=NOW)
    message = render(notice)
    assert message.subject == "Certificate web01: renewal failed (CaUnavailable)"
    assert "the CA did not answer" in message.body and "Attempt:       3" in message.body
    assert "tries again by itself" in message.body


def test_expired_message_is_unmistakable() -> None:
    message = render(notice_for(outcome("Denied", "TemplateDenied", expires=GONE, message="denied by policy"), now=NOW))
    assert message.subject == "EXPIRED: certificate web01 in prod was not renewed"
    assert "has EXPIRED" in message.body and "denied: denied by policy" in message.body


def test_values_from_the_vault_or_the_ca_cannot_inject_html_or_headers() -> None:
    o = Outcome(vault="prod", name="web01", outcome="Denied", reason="X", message='<img src=x onerror="alert(1)">',
                old_not_after=LATER)
    message = render(notice_for(o, now=NOW))
    assert "<img" not in message.html and "&lt;img" in message.html
    o = Outcome(vault="prod\r\nBcc: evil@x.com", name="web01", outcome="Failed", reason="X", old_not_after=GONE)
    assert "\n" not in render(notice_for(o, now=NOW)).subject


def test_the_email_has_a_text_and_an_html_part_and_robot_headers() -> None:
    message = render(notice_for(outcome("Pending", "Pending", ca_request_id="4711"), now=NOW))
    mail = compose(message, sender="certlc@contoso.com", recipients=["a@contoso.com", "b@contoso.com"])
    parsed = email.message_from_bytes(mail.as_bytes(), policy=policy.default)
    assert parsed["To"] == "a@contoso.com, b@contoso.com" and parsed["From"] == "certlc@contoso.com"
    assert parsed["Auto-Submitted"] == "auto-generated" and parsed["Message-ID"].endswith("@contoso.com>")
    assert parsed.get_body(("plain",)).get_content().startswith("The renewal request for certificate web01")
    assert "4711" in parsed.get_body(("html",)).get_content()


def test_the_same_notice_is_sent_once_per_window_and_counted(tmp_path: Path) -> None:
    log = NoticeLog(tmp_path / "n.sqlite")
    failed = notice_for(outcome("Failed", "CaUnavailable"), now=NOW)
    window = dt.timedelta(hours=24)
    first = log.decide(failed, window, now=NOW)
    assert first.send and first.attempt == 1
    log.record(failed, sent=True, now=NOW)
    for hour in (1, 2, 3):  # the queue and the sweep try again: counted, not sent
        d = log.decide(failed, window, now=NOW + dt.timedelta(hours=hour))
        assert not d.send and d.attempt == hour + 1
        log.record(failed, sent=False, now=NOW + dt.timedelta(hours=hour))
    again = log.decide(failed, window, now=NOW + dt.timedelta(hours=25))
    assert again.send and again.attempt == 5
    # Another reason, another certificate or a renewal is news: sent at once.
    assert log.decide(notice_for(outcome("Failed", "CaAuthFailed"), now=NOW), window, now=NOW).send
    renewed = notice_for(outcome("Renewed", new_version="v2"), now=NOW)
    log.record(renewed, sent=True, now=NOW)
    assert log.decide(notice_for(outcome("Renewed", new_version="v3"), now=NOW), window, now=NOW).send
    assert not log.decide(renewed, window, now=NOW).send  # the same renewal twice is one e-mail


def test_a_delivery_that_failed_is_not_counted_as_sent(tmp_path: Path) -> None:
    log = NoticeLog(tmp_path / "n.sqlite")
    failed = notice_for(outcome("Failed", "CaUnavailable"), now=NOW)
    log.decide(failed, dt.timedelta(hours=24), now=NOW)  # decided, then the SMTP server was down: no record
    assert log.decide(failed, dt.timedelta(hours=24), now=NOW).send


def test_smtp_password_sources(tmp_path: Path) -> None:
    from certlc.config import SmtpSettings

    smtp = SmtpSettings(host="mail.contoso.com", username="certlc", password_env="SMTP_PW", sender="c@contoso.com")
    assert smtp_password(smtp, {"SMTP_PW": "s3cret"}) == "s3cret"
    with pytest.raises(ConfigError, match="SMTP_PW is not set"):
        smtp_password(smtp, {})
    (tmp_path / "pw").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        smtp_password(SmtpSettings(host="mail.contoso.com", username="u", password_file=tmp_path / "pw",
                                   sender="c@contoso.com"))


@pytest.mark.parametrize(("smtp", "expected"), [
    ({"host": "mail.contoso.com", "security": "none", "sender": "c@contoso.com"}, "clear text"),
    ({"host": "mail.contoso.com", "sender": "not an address"}, "is not an e-mail address"),
    ({"host": "mail.contoso.com", "sender": "c@contoso.com", "password_env": "X"}, "needs a username"),
    ({"host": "mail.contoso.com", "sender": "c@contoso.com", "username": "u", "password_env": "X",
      "password_file": "/x"}, "not both"),
])
def test_bad_smtp_settings_are_refused(smtp: dict[str, str], expected: str) -> None:
    from pydantic import ValidationError

    from certlc.config import Settings

    with pytest.raises(ValidationError, match=expected):
        Settings.model_validate({"notifications": {"smtp": smtp}})
