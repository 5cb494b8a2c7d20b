"""Key Vault events as Event Grid delivers them: parse, validate, and tell which vault they are for.

Two envelopes reach certlc, from a webhook or a storage queue:

* the Event Grid schema (``id``, ``topic``, ``subject``, ``eventType``, ``eventTime``, ``data``,
  ``dataVersion``), a JSON array on a webhook even for one event;
* CloudEvents 1.0 (``id``, ``source``, ``subject``, ``type``, ``time``, ``data``, ``specversion``),
  one object, or an array in batched mode (``application/cloudevents-batch+json``).

A queue message holds one event object, as base64 of UTF-8 JSON (what Event Grid writes today)
or as plain JSON (what older documentation describes): both are accepted.

Key Vault's ``data`` keys are matched case-insensitively and with surrounding spaces ignored (a
published sample has ``"ObjectName "``), and ``NBF``/``EXP`` may be numbers or strings. An event
type certlc does not handle parses to :class:`UnrecognizedEvent` and is refused by the caller
with a clear message; malformed input raises :class:`~certlc.errors.InvalidInput`. Nothing here
does I/O: whether an event's vault is managed is decided from the configuration alone, so no
request ever goes to a host named in an event.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from certlc.config import Settings, VaultSettings
from certlc.errors import InvalidInput
from certlc.times import iso_utc

__all__ = [
    "MAX_DELIVERY_BYTES",
    "MAX_EVENT_ID_CHARS",
    "MAX_QUEUE_MESSAGE_BYTES",
    "RENEWING_TYPES",
    "Event",
    "EventType",
    "KeyVaultEvent",
    "UnrecognizedEvent",
    "ValidationEvent",
    "decode_queue_message",
    "encode_queue_message",
    "parse_delivery",
    "parse_event",
    "vault_for",
]

# Event Grid delivers at most 1 MB per request (batches included); a queue message is 64 KiB.
MAX_DELIVERY_BYTES = 1024 * 1024
MAX_QUEUE_MESSAGE_BYTES = 64 * 1024
MAX_EVENT_ID_CHARS = 200
_PRINTABLE_ID = re.compile(r"[\x21-\x7e]+")


class EventType(StrEnum):
    NEAR_EXPIRY = "Microsoft.KeyVault.CertificateNearExpiry"
    NEW_VERSION = "Microsoft.KeyVault.CertificateNewVersionCreated"
    EXPIRED = "Microsoft.KeyVault.CertificateExpired"
    VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"


# The events that call for a renewal; NewVersionCreated is accepted and needs nothing.
RENEWING_TYPES = frozenset({EventType.NEAR_EXPIRY, EventType.EXPIRED})


# --- wire models: the envelopes as they arrive (unknown fields ignored) ------------------------

class _EventGridEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str
    eventType: str
    subject: str = ""
    topic: str = ""
    eventTime: str = ""
    data: Any = None
    dataVersion: str = ""


class _CloudEventEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str
    type: str
    specversion: str
    source: str = ""
    subject: str = ""
    time: str = ""
    data: Any = None


# --- what the rest of certlc sees --------------------------------------------------------------

@dataclass(frozen=True)
class KeyVaultEvent:
    """A certificate event from Key Vault, whatever envelope it came in."""

    id: str
    type: EventType
    schema: str  # "eventgrid" | "cloudevents"
    vault_name: str
    object_name: str
    version: str
    object_id: str  # the versioned object URL, e.g. https://v.vault.azure.net/certificates/c/<ver>
    topic: str = ""
    time: str = ""
    not_before: dt.datetime | None = None
    expires: dt.datetime | None = None
    # The envelope as it arrived: what the receiver puts on the queue (Event Grid's own shape).
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def renews(self) -> bool:
        """Whether this event calls for a renewal (near expiry, expired)."""
        return self.type in RENEWING_TYPES

    @property
    def renewal_key(self) -> str:
        """Duplicates (event, queue, sweep, redelivery) of one certificate version share this key."""
        return f"{self.vault_name.lower()}/{self.object_name.lower()}/{self.version.lower()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "type": self.type.value, "schema": self.schema, "vault_name": self.vault_name,
            "object_name": self.object_name, "version": self.version, "object_id": self.object_id,
            "topic": self.topic, "time": self.time,
            "not_before": iso_utc(self.not_before), "expires": iso_utc(self.expires),
        }


@dataclass(frozen=True)
class ValidationEvent:
    """Event Grid's subscription validation handshake (Event Grid schema)."""

    id: str
    validation_code: str
    validation_url: str | None


@dataclass(frozen=True)
class UnrecognizedEvent:
    """A well-formed event of a type certlc does not handle (refused by the caller, by type)."""

    id: str
    type: str


Event = KeyVaultEvent | ValidationEvent | UnrecognizedEvent


def _short(text: str, limit: int = 80) -> str:
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"{loc}: {first['msg']}" if loc else first["msg"]


def _data_field(data: Mapping[str, Any], name: str) -> Any:
    # Keys are PascalCase in the current schema, camelCase in older ones, and one published
    # sample has a trailing space: match loosely.
    wanted = name.lower()
    for key, value in data.items():
        if isinstance(key, str) and key.strip().lower() == wanted:
            return value
    return None


def _timestamp(value: Any, field: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"event data {field} is not a Unix timestamp: {_short(str(value))!r}",
                           reason="EventInvalid") from None
    if not 0 <= seconds < 253402300800:  # before year 10000
        raise InvalidInput(f"event data {field} is out of range: {value!r}", reason="EventInvalid")
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _text(data: Mapping[str, Any], field: str, *, required: bool = True) -> str:
    value = _data_field(data, field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"event data has no {field}", reason="EventInvalid")
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"event data {field} is not a string", reason="EventInvalid")
    return value.strip()


def _key_vault_event(event_id: str, event_type: EventType, schema: str, topic: str, time: str,
                     subject: str, data: Any, raw: Mapping[str, Any]) -> KeyVaultEvent:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"event {_short(event_id)!r} has no data object", reason="EventInvalid")
    object_type = _text(data, "ObjectType", required=False)
    if object_type and object_type.lower() != "certificate":
        raise InvalidInput(f"event {_short(event_id)!r} is about a {_short(object_type)}, not a certificate",
                           reason="EventInvalid")
    object_id = _text(data, "Id")
    name = _text(data, "ObjectName", required=False) or subject
    version = _text(data, "Version", required=False)
    parts = urlsplit(object_id)
    segments = [s for s in parts.path.split("/") if s]
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        raise InvalidInput(f"event data Id {_short(object_id)!r} has an invalid port", reason="EventInvalid") from None
    if parts.scheme != "https" or not parts.hostname or len(segments) < 2 or segments[0].lower() != "certificates":
        raise InvalidInput(f"event data Id {_short(object_id)!r} is not a Key Vault certificate URL",
                           reason="EventInvalid")
    if not name:
        name = segments[1]
    if name.lower() != segments[1].lower():
        raise InvalidInput(f"event names certificate {_short(name)!r} but its Id is for {_short(segments[1])!r}",
                           reason="EventInvalid")
    if not version and len(segments) > 2:
        version = segments[2]
    if not re.fullmatch(r"[0-9a-zA-Z-]{1,127}", name):
        raise InvalidInput(f"event names {_short(name)!r}, which is not a Key Vault certificate name",
                           reason="EventInvalid")
    if version and not re.fullmatch(r"[0-9a-zA-Z]{1,64}", version):
        raise InvalidInput(f"event version {_short(version)!r} is not a Key Vault version id", reason="EventInvalid")
    vault_name = _text(data, "VaultName", required=False) or parts.hostname.split(".")[0]
    return KeyVaultEvent(
        id=event_id, type=event_type, schema=schema, vault_name=vault_name, object_name=name, version=version,
        object_id=object_id, topic=topic, time=time,
        not_before=_timestamp(_data_field(data, "NBF"), "NBF"), expires=_timestamp(_data_field(data, "EXP"), "EXP"),
        raw=dict(raw),
    )


def parse_event(obj: Any) -> Event:
    """One event object in either schema. InvalidInput says what is wrong with a malformed one."""
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"an event must be a JSON object, got {type(obj).__name__}", reason="EventInvalid")
    try:
        if "specversion" in obj:
            ce = _CloudEventEnvelope.model_validate(obj)
            if not ce.specversion.startswith("1."):
                raise InvalidInput(f"CloudEvents specversion {_short(ce.specversion)!r} is not 1.x",
                                   reason="EventInvalid")
            event_id, kind, schema, topic, time, subject, data = (
                ce.id, ce.type, "cloudevents", ce.source, ce.time, ce.subject, ce.data)
        else:
            eg = _EventGridEnvelope.model_validate(obj)
            event_id, kind, schema, topic, time, subject, data = (
                eg.id, eg.eventType, "eventgrid", eg.topic, eg.eventTime, eg.subject, eg.data)
    except ValidationError as exc:
        raise InvalidInput(f"not an Event Grid or CloudEvents event: {_first_error(exc)}",
                           reason="EventInvalid") from None
    if not event_id:
        raise InvalidInput("event has an empty id", reason="EventInvalid")
    if len(event_id) > MAX_EVENT_ID_CHARS or not _PRINTABLE_ID.fullmatch(event_id):
        # Event Grid ids are GUIDs; anything else would end up in logs and Prefect's idempotency keys.
        raise InvalidInput(f"event id {_short(event_id)!r} is not a printable id of at most {MAX_EVENT_ID_CHARS} "
                           "characters", reason="EventInvalid")
    if kind == EventType.VALIDATION:
        if not isinstance(data, Mapping) or not isinstance(_data_field(data, "validationCode"), str):
            raise InvalidInput("subscription validation event has no validationCode", reason="EventInvalid")
        url = _data_field(data, "validationUrl")
        return ValidationEvent(id=event_id, validation_code=_data_field(data, "validationCode"),
                               validation_url=url if isinstance(url, str) else None)
    try:
        event_type = EventType(kind)
    except ValueError:
        return UnrecognizedEvent(id=event_id, type=_short(kind, 200))
    return _key_vault_event(event_id, event_type, schema, topic, time, subject, data, obj)


def _json(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {_short(str(exc))}", reason="EventInvalid") from None
    except RecursionError:  # [[[[...]]]] deeper than the interpreter's stack
        raise InvalidInput(f"{what} nests too deeply to be an event", reason="EventInvalid") from None


def parse_delivery(body: bytes) -> list[Event]:
    """The events of one webhook delivery: an array (Event Grid schema, CloudEvents batch) or one
    CloudEvent object. Refuses an empty, oversized or malformed body."""
    if len(body) > MAX_DELIVERY_BYTES:
        raise InvalidInput(f"delivery of {len(body)} bytes exceeds the {MAX_DELIVERY_BYTES} byte limit",
                           reason="DeliveryTooLarge")
    payload = _json(body, "delivery body")
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise InvalidInput("delivery holds no events", reason="EventInvalid")
    return [parse_event(item) for item in items]


def encode_queue_message(event: Mapping[str, Any], *, base64_encoded: bool = True) -> str:
    """One event as Event Grid writes it to a storage queue: base64 of UTF-8 JSON by default."""
    text = json.dumps(event, separators=(",", ":"))
    out = base64.b64encode(text.encode("utf-8")).decode("ascii") if base64_encoded else text
    if len(out.encode("utf-8")) > MAX_QUEUE_MESSAGE_BYTES:
        raise InvalidInput(f"event does not fit in a {MAX_QUEUE_MESSAGE_BYTES} byte queue message",
                           reason="EventTooLarge")
    return out


def decode_queue_message(content: str | bytes) -> Event:
    """The event in a queue message, base64 JSON or plain JSON (the sources disagree on which
    Event Grid writes, so both are read). A one-element array is accepted too."""
    raw = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if len(raw) > MAX_QUEUE_MESSAGE_BYTES:
        raise InvalidInput(f"queue message of {len(raw)} bytes exceeds {MAX_QUEUE_MESSAGE_BYTES}",
                           reason="EventTooLarge")
    text = raw.strip()
    if text[:1] in (b"{", b"["):
        payload = _json(text, "queue message")
    else:
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("queue message is neither JSON nor base64 of JSON", reason="EventInvalid") from None
        payload = _json(decoded, "decoded queue message")
    if isinstance(payload, list):
        if len(payload) != 1:
            raise InvalidInput(f"queue message holds {len(payload)} events, expected one", reason="EventInvalid")
        payload = payload[0]
    return parse_event(payload)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or 443)


def vault_for(event: KeyVaultEvent, settings: Settings) -> VaultSettings:
    """The configured vault an event is about, matched on the origin (scheme, host, port) of the
    event's object URL; InvalidInput (VaultNotManaged) for any other vault. Nothing is contacted,
    and the vault URL used later is the configured one, never one taken from the event."""
    origin = _origin(event.object_id)
    for vault in settings.vaults:
        if _origin(vault.url) == origin:
            return vault
    raise InvalidInput(f"event {_short(event.id)!r} is for vault {_short(event.vault_name)!r} "
                       f"({_short(origin[1])}), which is not in the configuration", reason="VaultNotManaged")
