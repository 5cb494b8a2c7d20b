"""Key Vault certificate events as the emulator publishes them, and their two envelopes.

An :class:`EmulatorEvent` is schema-neutral (that is what the outbox stores); each subscription
renders it with :func:`to_eventgrid` or :func:`to_cloudevent`. The data and envelopes follow
azure-reference.md §6: PascalCase data keys, ``NBF``/``EXP`` as Unix-second numbers,
``subject`` the bare certificate name, ``topic``/``source`` the vault's ARM resource id. One
event has one id, whichever subscriptions receive it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "EXPIRED",
    "NEAR_EXPIRY",
    "NEAR_EXPIRY_WINDOW",
    "NEW_VERSION",
    "RESOURCE_GROUP",
    "SUBSCRIPTION_ID",
    "EmulatorEvent",
    "certificate_event",
    "event_time",
    "render",
    "to_cloudevent",
    "to_eventgrid",
    "vault_resource_id",
]

NEW_VERSION = "Microsoft.KeyVault.CertificateNewVersionCreated"
NEAR_EXPIRY = "Microsoft.KeyVault.CertificateNearExpiry"
EXPIRED = "Microsoft.KeyVault.CertificateExpired"

# Key Vault's NearExpiry window is fixed, not configurable (azure-reference.md §6).
NEAR_EXPIRY_WINDOW = dt.timedelta(days=30)

# The emulated vaults live in a fake subscription and resource group: ARM ids only need the shape.
SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "certlc-local"


def vault_resource_id(vault_name: str) -> str:
    return (f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}"
            f"/providers/Microsoft.KeyVault/vaults/{vault_name}")


def event_time(moment: dt.datetime) -> str:
    """``2023-11-23T15:53:16.3658314Z``: UTC with seven fractional digits, as Event Grid writes."""
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


@dataclass(frozen=True)
class EmulatorEvent:
    """One published event, before it is put in a subscription's envelope."""

    id: str
    type: str
    vault_name: str
    subject: str  # the certificate name
    time: str  # event_time() of the emulator clock when it happened
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmulatorEvent:
        return cls(**data)


def certificate_event(
    event_type: str, vault_name: str, vault_url: str, name: str, version: str, nbf: int, exp: int,
    moment: dt.datetime,
) -> EmulatorEvent:
    """The event Key Vault publishes about one certificate version, with a fresh id."""
    data = {
        "Id": f"{vault_url.rstrip('/')}/certificates/{name}/{version}",
        "VaultName": vault_name,
        "ObjectType": "Certificate",
        "ObjectName": name,
        "Version": version,
        "NBF": int(nbf),
        "EXP": int(exp),
    }
    return EmulatorEvent(id=str(uuid.uuid4()), type=event_type, vault_name=vault_name, subject=name,
                         time=event_time(moment), data=data)


def to_eventgrid(event: EmulatorEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "topic": vault_resource_id(event.vault_name),
        "subject": event.subject,
        "eventType": event.type,
        "eventTime": event.time,
        "data": dict(event.data),
        "dataVersion": "1",
        "metadataVersion": "1",
    }


def to_cloudevent(event: EmulatorEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": vault_resource_id(event.vault_name),
        "subject": event.subject,
        "type": event.type,
        "time": event.time,
        "data": dict(event.data),
        "specversion": "1.0",
    }


def render(event: EmulatorEvent, schema: str) -> dict[str, Any]:
    """The event in a subscription's schema (``eventgrid`` or ``cloudevents``)."""
    return to_cloudevent(event) if schema == "cloudevents" else to_eventgrid(event)
