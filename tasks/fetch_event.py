"""Step 1: what to renew — validate the request and check the vault is one we manage."""

from __future__ import annotations

from prefect import task

from certlc.vault import validate_name
from tasks._policy import PERSIST, current_settings


@task(name="fetch-event", cache_policy=None, **PERSIST)
def fetch_event(vault: str, name: str, event_id: str | None = None) -> dict[str, str | None]:
    """The renewal request as plain data; refuses unknown vaults without contacting them."""
    settings = current_settings()
    configured = settings.vault(vault)  # ConfigError (an InvalidInput) names the configured vaults
    validate_name(name, vault)
    return {"vault": configured.name, "vault_url": configured.url, "name": name, "event_id": event_id}
