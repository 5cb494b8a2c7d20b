"""Step 1: what to renew — validate the request and check the vault is one we manage."""

from __future__ import annotations

from typing import Any

from prefect import task

from certlc.renewal import Trigger
from certlc.vault import validate_name
from tasks._policy import PERSIST, WITHIN_RUN, current_settings


@task(name="fetch-event", cache_policy=WITHIN_RUN, **PERSIST)
def fetch_event(vault: str, name: str, event_id: str | None = None,
                event: dict[str, Any] | None = None) -> dict[str, Any]:
    """The renewal request as plain data; refuses unknown vaults and malformed events without
    contacting anything."""
    settings = current_settings()
    configured = settings.vault(vault)  # ConfigError (an InvalidInput) names the configured vaults
    validate_name(name, vault)
    trigger = Trigger.from_dict(event).to_dict() if event is not None else None
    return {"vault": configured.name, "vault_url": configured.url, "name": name,
            "event_id": event_id or (trigger["event_id"] if trigger else None), "trigger": trigger}
