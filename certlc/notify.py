"""Who to tell and what to say (DESIGN §4 step 6): plain data in, plain data out, no I/O.

Recipients come from the certificate's ``Recipient`` tag: addresses separated by commas or
semicolons, spaces ignored, duplicates dropped, invalid ones reported but not fatal. A renewal's
:class:`~certlc.renewal.Outcome` becomes a :class:`Notice` for one of the events owners care
about, rendered as a subject, a plain-text body and an HTML body (Jinja templates in
``certlc/templates``). Delivery (SMTP, Apprise) is :mod:`certlc.deliver`; how often the same
notice may go out is :mod:`certlc.notice_log`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import cache
from typing import Any

import jinja2

from certlc.renewal import Outcome
from certlc.times import parse_utc

__all__ = ["NOT_AUTOMATABLE", "Event", "Message", "Notice", "notice_for", "parse_recipients", "render"]

# Deliberately simple: local@domain with a dot in the domain. Full RFC 5322 is not the point here;
# catching typos ("ops@contoso", "ops contoso.com") is.
_ADDRESS = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\"]+$")


def parse_recipients(value: str | None) -> tuple[list[str], list[str]]:
    """(valid, invalid) addresses from a Recipient tag value, in order, without duplicates."""
    valid: list[str] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for part in re.split(r"[;,]", value or ""):
        address = part.strip()
        if not address or address.lower() in seen:
            continue
        seen.add(address.lower())
        (valid if _ADDRESS.match(address) else invalid).append(address)
    return valid, invalid


class Event(StrEnum):
    """What happened, in the words of the owner's inbox."""

    RENEWED = "renewed"
    FAILED = "failed"
    PENDING = "pending"  # waiting for a CA manager's approval
    DENIED = "denied"
    NOT_AUTOMATABLE = "not-automatable"  # no template, unknown CA: a person must act
    EXPIRED = "expired"  # it has expired and was not renewed (the cause says why)


# Failures no retry can fix: the certificate cannot be renewed automatically until someone acts.
NOT_AUTOMATABLE = frozenset({
    "TemplateMissing", "CaProfileMissing", "CaKindUnknown", "CaProfileInvalid", "KeyTypeUnsupported",
    "SanNotRepresentable", "TemplateNotSupported",
})


@dataclass(frozen=True)
class Notice:
    """One message's facts. JSON-able; never holds key material or credentials."""

    event: Event
    vault: str
    certificate: str
    reason: str
    message: str = ""
    cause: Event | None = None  # for EXPIRED: the event that kept it from being renewed
    old_version: str | None = None
    new_version: str | None = None
    old_thumbprint: str | None = None
    new_thumbprint: str | None = None
    old_not_after: str | None = None
    new_not_after: str | None = None
    template: str | None = None
    ca_profile: str | None = None
    ca_request_id: str | None = None
    run_url: str | None = None
    attempt: int | None = None  # how many times this failure has been seen for this version
    next_try: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def topic(self) -> str:
        """What makes two notices "the same" for rate limiting: a renewal is new per new version;
        anything else per event, reason and the version it is about."""
        if self.event is Event.RENEWED:
            return f"renewed:{self.new_version}"
        return f"{self.event}:{self.cause or ''}:{self.reason}:{self.old_version}"


_EVENTS = {"Renewed": Event.RENEWED, "AlreadyRenewed": Event.RENEWED, "Pending": Event.PENDING,
           "Denied": Event.DENIED, "Failed": Event.FAILED}


def _expired(not_after: str | None, now: dt.datetime) -> bool:
    when = parse_utc(not_after)
    return when is not None and when <= now


def notice_for(outcome: Outcome, *, ca_profile: str | None = None, run_url: str | None = None,
               attempt: int | None = None, next_try: str | None = None,
               now: dt.datetime | None = None) -> Notice | None:
    """The notice ``outcome`` calls for, or None (not due, skipped: nothing to tell)."""
    event = _EVENTS.get(outcome.outcome)
    if event is None:
        return None
    if event is Event.FAILED and outcome.reason in NOT_AUTOMATABLE:
        event = Event.NOT_AUTOMATABLE
    cause = None
    if event is not Event.RENEWED and _expired(outcome.old_not_after, now or dt.datetime.now(dt.UTC)):
        event, cause = Event.EXPIRED, event
    if event is Event.FAILED or cause is Event.FAILED:
        next_try = next_try or "certlc tries again by itself (the queue retries within the hour, the sweep every 6 h)"
    return Notice(event=event, vault=outcome.vault, certificate=outcome.name, reason=outcome.reason,
                  message=outcome.message, cause=cause, old_version=outcome.old_version,
                  new_version=outcome.new_version, old_thumbprint=outcome.old_thumbprint,
                  new_thumbprint=outcome.new_thumbprint, old_not_after=outcome.old_not_after,
                  new_not_after=outcome.new_not_after, template=outcome.template, ca_profile=ca_profile,
                  ca_request_id=outcome.ca_request_id, run_url=run_url, attempt=attempt,
                  next_try=next_try if event in (Event.FAILED, Event.EXPIRED) else None)


@dataclass(frozen=True)
class Message:
    subject: str
    body: str  # plain text
    html: str


_SUBJECTS = {
    Event.RENEWED: "Certificate {c} renewed",
    Event.FAILED: "Certificate {c}: renewal failed ({reason})",
    Event.PENDING: "Certificate {c} waits for CA approval",
    Event.DENIED: "Certificate {c}: renewal denied by the CA",
    Event.NOT_AUTOMATABLE: "Certificate {c} cannot be renewed automatically ({reason})",
    Event.EXPIRED: "EXPIRED: certificate {c} in {vault} was not renewed",
}


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("certlc", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(notice: Notice) -> Message:
    """Subject, text and HTML of ``notice``. Values from the vault or the CA are escaped in HTML."""
    subject = _SUBJECTS[notice.event].format(c=notice.certificate, vault=notice.vault, reason=notice.reason)
    # A certificate name or CA message must not break the Subject header onto a new line.
    subject = " ".join(subject.split())
    env = _environment()
    # The lead sentence is rendered once as text; the HTML template escapes it like any value.
    lead = " ".join(env.get_template("_lead.j2").render(n=notice, Event=Event).split())
    context = {"n": notice, "Event": Event, "lead": lead}
    return Message(subject=subject, body=env.get_template("notice.txt.j2").render(context),
                   html=env.get_template("notice.html.j2").render(context))
