"""Step 6: tell the owners (the Recipient tag). This release writes the message to the run log."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from certlc.notify import parse_recipients, render
from certlc.renewal import Outcome
from tasks._policy import PERSIST


def _key(context: Any, parameters: dict[str, Any]) -> str:
    o = parameters["outcome"]
    # One message per version, outcome, reason and request: a retried run does not repeat it,
    # a different failure does get through.
    return f"certlc-{o['vault']}-{o['name']}-{o['old_version']}-notify-{o['outcome']}-{o['reason']}-{o['kv_request_id']}"


@task(name="notify", cache_key_fn=_key, **PERSIST)
def notify(outcome: dict[str, Any], recipient_tag: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    valid, invalid = parse_recipients(recipient_tag)
    if invalid:
        logger.warning("%s/%s: ignoring invalid recipient address(es) %s", outcome["vault"], outcome["name"], invalid)
    message = render(Outcome.from_dict(outcome))
    if valid:
        logger.info("%s/%s: notify %s: %s\n%s", outcome["vault"], outcome["name"], ", ".join(valid),
                    message.subject, message.body)
    else:
        logger.info("%s/%s: no recipients to notify (%s)", outcome["vault"], outcome["name"], message.subject)
    return {"recipients": valid, "invalid": invalid, "subject": message.subject, "channel": "log"}
