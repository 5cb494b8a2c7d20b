"""Send a rendered notice: e-mail over SMTP (smtplib) and other channels through Apprise.

SMTP: STARTTLS (587) or implicit TLS (465), the server's certificate checked against the
system roots plus an optional bundle, AUTH after TLS with a password from the environment or a
file; plain SMTP only to a server on this machine (checked by the settings). Failures map onto
certlc's errors: a server that is down or busy (4xx) is a TransientError (the task retries), a
refused login or sender is a TerminalError naming the setting to fix. No error message carries
the password, and Apprise URLs (they hold tokens) are never logged, only their scheme.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from certlc.config import SmtpSettings
from certlc.errors import ConfigError, TerminalError, TransientError
from certlc.notify import Message

__all__ = ["compose", "send_apprise", "send_email", "smtp_password"]

log = logging.getLogger("certlc.notify")


def compose(message: Message, *, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """A multipart/alternative e-mail: the plain text first, the HTML as the richer part."""
    mail = EmailMessage()
    mail["Subject"] = message.subject
    mail["From"] = sender
    mail["To"] = ", ".join(recipients)
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    mail.set_content(message.body)
    mail.add_alternative(message.html, subtype="html")
    return mail


def smtp_password(smtp: SmtpSettings, environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    if smtp.password_env is not None:
        value = environ.get(smtp.password_env)
        if not value:
            raise ConfigError(f"notifications.smtp.password_env: the variable {smtp.password_env} is not set",
                              reason="SmtpPasswordMissing")
        return value
    if smtp.password_file is not None:
        try:
            lines = Path(smtp.password_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"notifications.smtp.password_file: cannot read {smtp.password_file}: "
                              f"{getattr(exc, 'strerror', None) or type(exc).__name__}",
                              reason="SmtpPasswordMissing") from None
        if not lines or not lines[0]:
            raise ConfigError(f"notifications.smtp.password_file: {smtp.password_file} is empty",
                              reason="SmtpPasswordMissing")
        return lines[0]
    return None


def _tls(smtp: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if smtp.ca_bundle is not None:
        context.load_verify_locations(cafile=str(smtp.ca_bundle))
    return context


def send_email(smtp: SmtpSettings, mail: EmailMessage, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Deliver ``mail`` to its To: addresses; returns the addresses the server refused (others got it)."""
    password = smtp_password(smtp, environ)
    where = f"{smtp.host}:{smtp.resolved_port}"
    try:
        if smtp.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.resolved_port, timeout=smtp.timeout,
                                                    context=_tls(smtp))
        else:
            client = smtplib.SMTP(smtp.host, smtp.resolved_port, timeout=smtp.timeout)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=_tls(smtp))
            if smtp.username:
                client.login(smtp.username, password or "")
            refused = client.send_message(mail)
    except smtplib.SMTPAuthenticationError as exc:
        raise TerminalError(f"the SMTP server {where} refused the login of {smtp.username!r} ({exc.smtp_code}); "
                            "check notifications.smtp.username and its password", reason="SmtpAuthFailed") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise TerminalError(f"the SMTP server {where} does not offer what notifications.smtp asks for: "
                            f"{_text(exc)}", reason="SmtpUnsupported") from None
    except smtplib.SMTPSenderRefused as exc:
        raise _by_code(exc.smtp_code, f"the SMTP server {where} refused the sender {smtp.sender!r}: "
                       f"{_text(exc.smtp_error)}; check notifications.smtp.sender", "SmtpSenderRefused") from None
    except smtplib.SMTPRecipientsRefused as exc:
        # Every recipient refused: nothing to retry for a bad address; 4xx ones may come back.
        codes = [code for code, _ in exc.recipients.values()]
        if any(400 <= c < 500 for c in codes):
            raise TransientError(f"the SMTP server {where} deferred every recipient", reason="SmtpBusy") from None
        return sorted(exc.recipients)
    except smtplib.SMTPResponseException as exc:
        raise _by_code(exc.smtp_code, f"the SMTP server {where} answered {exc.smtp_code}: {_text(exc.smtp_error)}",
                       "SmtpRefused") from None
    except ssl.SSLCertVerificationError as exc:
        raise TerminalError(f"the SMTP server {where}'s certificate is not trusted ({exc.verify_message}); "
                            "set notifications.smtp.ca_bundle", reason="SmtpTlsUntrusted") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise TransientError(f"cannot deliver through the SMTP server {where}: {type(exc).__name__}: {_text(exc)}",
                             reason="SmtpUnavailable") from None
    return sorted(refused)


def _text(value: object) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:200]


def _by_code(code: int, message: str, reason: str) -> TransientError | TerminalError:
    return TransientError(message, reason="SmtpBusy") if 400 <= code < 500 else TerminalError(message, reason=reason)


def send_apprise(urls: Sequence[str], message: Message) -> list[str]:
    """Notify every Apprise URL; returns the schemes of those that failed (the URLs hold tokens)."""
    import apprise

    # Apprise's own log lines can carry a channel's URL, and so its token: ours name the scheme.
    logging.getLogger("apprise").setLevel(logging.CRITICAL)
    failed = []
    for url in urls:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        notifier = apprise.Apprise()
        if not notifier.add(url):
            failed.append(f"{scheme}:// (not an Apprise URL)")
            continue
        if not notifier.notify(title=message.subject, body=message.body, body_format=apprise.NotifyFormat.TEXT):
            failed.append(f"{scheme}://")
    if failed:
        log.warning("notification not delivered to %s", ", ".join(failed))
    return failed
