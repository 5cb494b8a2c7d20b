"""Step 6: tell the owners (the Recipient tag): e-mail and Apprise channels, at most once per
``notifications.repeat_after_hours`` for the same notice, and always the run log."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from prefect import get_run_logger, task

from certlc.deliver import compose, send_apprise, send_email
from certlc.notice_log import NoticeLog
from certlc.notify import Event, notice_for, parse_recipients, render
from certlc.renewal import Outcome
from tasks._policy import PERSIST, RETRY, current_settings


def _key(context: Any, parameters: dict[str, Any]) -> str:
    o = parameters["outcome"]
    # One message per version, outcome, reason and request: a retried run does not repeat it,
    # a different failure does get through.
    return f"certlc-{o['vault']}-{o['name']}-{o['old_version']}-notify-{o['outcome']}-{o['reason']}-{o['kv_request_id']}"


def _run_url(ui_url: str | None) -> str | None:
    """This run in the Prefect UI (its route is /runs/flow-run/<id>)."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    base = ui_url or PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run.id}" if base and flow_run.id else None


@task(name="notify", cache_key_fn=_key, **PERSIST, **RETRY)
def notify(outcome: dict[str, Any], recipient_tag: str | None, ca_profile: str | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    settings = current_settings().notifications
    where = f"{outcome['vault']}/{outcome['name']}"
    valid, invalid = parse_recipients(recipient_tag)
    if invalid:
        logger.warning("%s: ignoring invalid recipient address(es) %s", where, invalid)
    notice = notice_for(Outcome.from_dict(outcome), ca_profile=ca_profile, run_url=_run_url(settings.ui_url))
    if notice is None:
        return {"recipients": valid, "invalid": invalid, "sent": False, "channels": []}
    notices = NoticeLog(current_settings().state_dir / "notifications.sqlite")
    decision = notices.decide(notice, dt.timedelta(hours=settings.repeat_after_hours))
    if Event.FAILED in (notice.event, notice.cause):
        notice = dataclasses.replace(notice, attempt=decision.attempt)
    message = render(notice)
    result: dict[str, Any] = {"recipients": valid, "invalid": invalid, "subject": message.subject,
                              "event": notice.event.value, "attempt": decision.attempt, "sent": False, "channels": []}
    if not decision.send:
        notices.record(notice, sent=False)
        logger.info("%s: %s (attempt %d): owners were told at %s; not again before %s h have passed", where,
                    message.subject, decision.attempt, decision.last_sent, settings.repeat_after_hours)
        return result
    if settings.smtp is not None and valid:
        # A TransientError (server down or busy) fails this task and Prefect retries it.
        refused = send_email(settings.smtp, compose(message, sender=settings.smtp.sender, recipients=valid))
        result["channels"].append("email")
        result["refused"] = refused
        if refused:
            logger.warning("%s: the SMTP server refused %s", where, ", ".join(refused))
    if settings.apprise_urls:
        failed = send_apprise([u.get_secret_value() for u in settings.apprise_urls], message)
        result["channels"].append("apprise")
        result["apprise_failed"] = failed
    notices.record(notice, sent=True)
    result["sent"] = bool(result["channels"])
    logger.info("%s: told %s by %s: %s", where, ", ".join(valid) or "nobody", ", ".join(result["channels"]) or
                "the run log only", message.subject)
    if not result["channels"]:
        logger.info("%s\n%s", message.subject, message.body)
    return result
