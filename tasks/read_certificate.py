"""Step 2: read the current version and the template to renew it with."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import task

from certlc.ca import connector_for
from certlc.clients import certificate_client
from certlc.denials import denial_log
from certlc.renewal import Trigger, choose_ca, due_status
from certlc.vault import read_certificate as read_snapshot
from tasks._policy import PERSIST, RETRY, WITHIN_RUN, current_settings


@task(name="read-certificate", cache_policy=WITHIN_RUN, **RETRY, **PERSIST)
def read_certificate(request: dict[str, Any]) -> dict[str, Any]:
    """The current version, whether it is due, its CA profile and template; refuses what cannot
    be renewed (no template, unknown CA profile or kind) before anything is written."""
    settings = current_settings()
    vault = settings.vault(request["vault"])
    connector_for(vault.ca_profile, settings)  # a bad CA profile is a config error, found now
    snapshot = read_snapshot(certificate_client(vault, settings), vault.name, request["name"])
    ca_profile, template = choose_ca(snapshot, vault, settings)  # the CaProfile tag may pick another CA
    trigger = Trigger.from_dict(request["trigger"]) if request.get("trigger") else None
    due, reason = due_status(snapshot, settings, trigger=trigger)
    denied = denial_log(settings.results_path).blocking(
        snapshot.vault, snapshot.name, snapshot.version, template, ca_profile,
        dt.timedelta(hours=settings.renewal.denied_retry_hours)) if due else None
    return {"snapshot": snapshot.to_dict(), "template": template, "ca_profile": ca_profile, "due": due,
            "due_reason": reason, "denied_before": denied.to_dict() if denied else None}
