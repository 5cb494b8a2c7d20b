"""Notifications delivered for real: an SMTP server started by the test (aiosmtpd, STARTTLS and
AUTH required, as a corporate relay is set up) receives one message per event, and an Apprise
`json://` channel posts to an HTTP endpoint started by the test."""

from __future__ import annotations

import datetime as dt
import email
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from certlc.config import SmtpSettings
from certlc.deliver import compose, send_apprise, send_email
from certlc.errors import TerminalError, TransientError
from certlc.localca.tls import localhost_tls
from certlc.notify import Event, notice_for, parse_recipients, render
from certlc.renewal import Outcome
from certlc.stack import free_port

pytestmark = pytest.mark.e2e

PASSWORD = "smtp-e2e-s3cret"
NOW = dt.datetime.now(dt.UTC)
FUTURE = (NOW + dt.timedelta(days=20)).isoformat()
PAST = (NOW - dt.timedelta(days=2)).isoformat()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.original_content, policy=policy.default)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == b"certlc" and data.password == PASSWORD.encode()
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Inbox, SmtpSettings]]:
    tls = localhost_tls(tmp_path_factory.mktemp("smtp-tls"), "smtp")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_pem, tls.key_pem)
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            authenticator=inbox.authenticate, auth_required=True)
    controller.start()
    smtp = SmtpSettings(host="localhost", port=port, security="starttls", username="certlc",
                        password_env="CERTLC_E2E_SMTP_PW", sender="certlc@contoso.com", ca_bundle=tls.ca_pem,
                        timeout=10)
    yield inbox, smtp
    controller.stop()


OUTCOMES = {
    Event.RENEWED: Outcome(vault="prod", name="web01", outcome="Renewed", reason="Issued", old_version="v1",
                           new_version="v2", old_thumbprint="AA" * 20, new_thumbprint="BB" * 20,
                           old_not_after=FUTURE, new_not_after="2028-12-03T00:00:00+00:00", template="WebServer"),
    Event.FAILED: Outcome(vault="prod", name="web01", outcome="Failed", reason="CaUnavailable",
                          message="the CA did not answer", old_version="v1", old_not_after=FUTURE,
                          template="WebServer"),
    Event.PENDING: Outcome(vault="prod", name="web01", outcome="Pending", reason="Pending",
                           message="Taken Under Submission", old_version="v1", old_not_after=FUTURE,
                           template="WebServer", ca_request_id="4711"),
    Event.DENIED: Outcome(vault="prod", name="web01", outcome="Denied", reason="TemplateDenied",
                          message="Denied by Policy Module 0x80094012", old_version="v1", old_not_after=FUTURE,
                          template="WebServer"),
    Event.NOT_AUTOMATABLE: Outcome(vault="prod", name="web01", outcome="Failed", reason="TemplateMissing",
                                   message="no template: neither an extension nor a Template tag",
                                   old_version="v1", old_not_after=FUTURE),
    Event.EXPIRED: Outcome(vault="prod", name="web01", outcome="Failed", reason="CaUnavailable",
                           message="the CA did not answer", old_version="v1", old_not_after=PAST,
                           template="WebServer"),
}
# What each message must say beyond the common facts.
SAYS = {
    Event.RENEWED: ["was renewed", "BB" * 20, "2028-12-03"],
    Event.FAILED: ["failed", "the CA did not answer", "Attempt", "tries again"],
    Event.PENDING: ["approval", "4711"],
    Event.DENIED: ["denied", "0x80094012"],
    Event.NOT_AUTOMATABLE: ["cannot be renewed automatically", "no template"],
    Event.EXPIRED: ["has EXPIRED", "the CA did not answer"],
}


@pytest.mark.parametrize("event", list(Event), ids=[e.value for e in Event])
def test_each_event_arrives_with_the_right_recipients_and_content(
        relay: tuple[Inbox, SmtpSettings], event: Event, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, smtp = relay
    monkeypatch.setenv("CERTLC_E2E_SMTP_PW", PASSWORD)
    valid, invalid = parse_recipients("web-team@contoso.com; pki@contoso.com, WEB-TEAM@contoso.com, broken@")
    assert invalid == ["broken@"]
    notice = notice_for(OUTCOMES[event], ca_profile="adcs", run_url="https://prefect.contoso.com/runs/flow-run/9",
                        attempt=2)
    assert notice is not None and notice.event is event
    before = len(inbox.messages)
    refused = send_email(smtp, compose(render(notice), sender=smtp.sender, recipients=valid))
    assert refused == [] and len(inbox.messages) == before + 1
    rcpt, mail = inbox.messages[-1]
    assert rcpt == ["web-team@contoso.com", "pki@contoso.com"]
    assert mail["From"] == "certlc@contoso.com" and mail["To"] == "web-team@contoso.com, pki@contoso.com"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert mail["Subject"] == render(notice).subject and "web01" in mail["Subject"]
    for part in (text, html):
        for fact in ["web01", "prod", "adcs", "https://prefect.contoso.com/runs/flow-run/9", *SAYS[event]]:
            assert fact in part, (event, fact)
    assert PASSWORD not in mail.as_string()


def test_a_wrong_password_is_a_terminal_error_naming_the_setting_not_the_password(
        relay: tuple[Inbox, SmtpSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    _, smtp = relay
    monkeypatch.setenv("CERTLC_E2E_SMTP_PW", "wrong-password-123")
    mail = compose(render(notice_for(OUTCOMES[Event.RENEWED])), sender=smtp.sender, recipients=["a@contoso.com"])
    with pytest.raises(TerminalError) as info:
        send_email(smtp, mail)
    assert info.value.reason == "SmtpAuthFailed" and "notifications.smtp.username" in info.value.message
    assert "wrong-password-123" not in info.value.message


def test_an_untrusted_server_and_a_server_that_is_down(relay: tuple[Inbox, SmtpSettings],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, smtp = relay
    monkeypatch.setenv("CERTLC_E2E_SMTP_PW", PASSWORD)
    mail = compose(render(notice_for(OUTCOMES[Event.RENEWED])), sender=smtp.sender, recipients=["a@contoso.com"])
    with pytest.raises(TerminalError) as info:
        send_email(smtp.model_copy(update={"ca_bundle": None}), mail)
    assert info.value.reason == "SmtpTlsUntrusted" and "ca_bundle" in info.value.message
    with pytest.raises(TransientError) as down:
        send_email(smtp.model_copy(update={"port": free_port()}), mail)
    assert down.value.reason == "SmtpUnavailable"


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_apprise_channels_get_the_notice_and_a_failing_one_is_named_by_scheme_only(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        message = render(notice_for(OUTCOMES[Event.DENIED]))
        port = server.server_address[1]
        failed = send_apprise([f"json://127.0.0.1:{port}/hook?token=t0ken", f"json://127.0.0.1:{free_port()}/x",
                               "nonsense"], message)
        assert [r["title"] for r in _Hook.received] == [message.subject]
        assert "0x80094012" in _Hook.received[0]["message"]
        assert failed == ["json://", "?:// (not an Apprise URL)"]
    finally:
        server.shutdown()
