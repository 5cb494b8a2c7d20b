"""How one request reaches a subscription's destination: a webhook or a storage queue.

A sender does one handshake or one delivery attempt and reports the outcome; when to retry and
when to give up is :mod:`certlc.emulator.delivery`'s job. Requests follow azure-reference.md §7:
the Event Grid schema handshake (POST of a ``SubscriptionValidationEvent``, answered 200 with
the ``validationResponse``), the CloudEvents handshake (OPTIONS with ``WebHook-Request-Origin``),
Event Grid's content types and ``aeg-*`` headers; queue messages hold one event each, base64 of
UTF-8 JSON unless ``queue_base64`` is false.

Secrets: a webhook URL carries its shared key in the query string and a queue connection string
holds the account key, so only :func:`display_endpoint` forms are ever logged or shown; httpx's
own request log line is redacted the same way (:func:`_redact_httpx_log`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import secrets
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from certlc.config import EventSubscriptionSettings
from certlc.emulator.events import EmulatorEvent, event_time, render
from certlc.emulator.retry import NOT_RETRIED_QUEUE, NOT_RETRIED_WEBHOOK, SUCCESS_STATUSES, outcome_for_status
from certlc.errors import InvalidInput

__all__ = [
    "CE_ORIGIN",
    "Attempt",
    "QueueSender",
    "Sender",
    "WebhookSender",
    "display_endpoint",
    "make_sender",
]

logger = logging.getLogger(__name__)

CE_ORIGIN = "eventgrid.azure.net"
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
EG_CONTENT_TYPE = "application/json; charset=utf-8"
CE_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
CE_BATCH_CONTENT_TYPE = "application/cloudevents-batch+json; charset=utf-8"


def display_endpoint(url: str) -> str:
    """``url`` without user info, query or fragment: safe to log and print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def describe(settings: EventSubscriptionSettings) -> str:
    """One line naming the subscription's destination without any secret."""
    if settings.destination == "webhook":
        return f"webhook {display_endpoint(settings.endpoint or '')} ({settings.event_schema})"
    return f"storage queue {settings.queue_name} ({settings.event_schema}, {'base64' if settings.queue_base64 else 'plain'} JSON)"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt."""

    outcome: str  # "Success" or Event Grid's lastDeliveryOutcome name
    retry: bool  # False: success, or a failure Event Grid dead-letters at once
    detail: str = ""  # for the log (never holds a secret)

    @property
    def ok(self) -> bool:
        return self.outcome == "Success"


class Sender(Protocol):
    batch_size: int
    needs_handshake: bool

    def handshake(self) -> str | None:
        """None once the destination consents to deliveries; else why not."""

    def send(self, events: Sequence[EmulatorEvent], delivery_count: int) -> Attempt: ...

    def close(self) -> None: ...


def make_sender(settings: EventSubscriptionSettings, topic: str) -> Sender:
    if settings.destination == "webhook":
        return WebhookSender(settings, topic)
    return QueueSender(settings)


class WebhookSender:
    """Event Grid's webhook delivery over httpx (sync; each subscription has its own thread)."""

    needs_handshake = True

    def __init__(self, settings: EventSubscriptionSettings, topic: str) -> None:
        _redact_httpx_log()
        self._settings = settings
        self._url = settings.endpoint or ""
        self._shown = display_endpoint(self._url)
        self._topic = topic  # the validation event's topic: the (first) vault's ARM id
        self._cloudevents = settings.event_schema == "cloudevents"
        self.batch_size = settings.max_events_per_batch
        verify: ssl.SSLContext | bool = True
        if settings.ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_bundle))
        self._client = httpx.Client(verify=verify, timeout=settings.delivery_timeout_seconds, follow_redirects=False)

    def _headers(self, event_type: str, delivery_count: int, data_version: str) -> dict[str, str]:
        return {
            "aeg-event-type": event_type,
            "aeg-subscription-name": self._settings.name.upper(),
            "aeg-delivery-count": str(delivery_count),
            "aeg-data-version": data_version,
            "aeg-metadata-version": "1",
        }

    def handshake(self) -> str | None:
        try:
            return self._cloudevents_handshake() if self._cloudevents else self._eventgrid_handshake()
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} from {self._shown}"

    def _eventgrid_handshake(self) -> str | None:
        code = secrets.token_hex(16)
        event = {
            "id": str(uuid.uuid4()),
            "topic": self._topic,
            "subject": "",
            "eventType": VALIDATION_EVENT,
            "eventTime": event_time(dt.datetime.now(dt.UTC)),
            # The emulator offers no manual (asynchronous) validation: the URL never resolves.
            "data": {"validationCode": code,
                     "validationUrl": f"https://eventgrid.invalid:553/eventsubscriptions/{self._settings.name}"
                                      f"/validate?id={code}"},
            "dataVersion": "2",
            "metadataVersion": "1",
        }
        headers = {**self._headers("SubscriptionValidation", 0, "2"), "Content-Type": EG_CONTENT_TYPE}
        response = self._client.post(self._url, content=json.dumps([event]).encode("utf-8"), headers=headers)
        if response.status_code != 200:
            return f"{self._shown} answered the validation event with HTTP {response.status_code} (needs 200)"
        try:
            answer = response.json()
        except ValueError:
            return f"{self._shown} answered the validation event with a body that is not JSON"
        if not isinstance(answer, dict) or answer.get("validationResponse") != code:
            return f"{self._shown} did not echo the validationCode in validationResponse"
        return None

    def _cloudevents_handshake(self) -> str | None:
        response = self._client.request("OPTIONS", self._url, headers={"WebHook-Request-Origin": CE_ORIGIN})
        if not 200 <= response.status_code < 300:
            return f"{self._shown} answered the OPTIONS handshake with HTTP {response.status_code}"
        allowed = response.headers.get("WebHook-Allowed-Origin", "")
        if allowed not in (CE_ORIGIN, "*"):
            return f"{self._shown} did not allow origin {CE_ORIGIN} (WebHook-Allowed-Origin: {allowed[:80]!r})"
        return None

    def send(self, events: Sequence[EmulatorEvent], delivery_count: int) -> Attempt:
        rendered = [render(e, self._settings.event_schema) for e in events]
        headers = self._headers("Notification", delivery_count, "1")
        body: Any
        if not self._cloudevents:
            body, headers["Content-Type"] = rendered, EG_CONTENT_TYPE
        elif self.batch_size > 1:
            body, headers["Content-Type"] = rendered, CE_BATCH_CONTENT_TYPE
        else:
            body, headers["Content-Type"] = rendered[0], CE_CONTENT_TYPE
        if self._cloudevents:
            headers["Origin"] = CE_ORIGIN
        try:
            response = self._client.post(self._url, content=json.dumps(body).encode("utf-8"), headers=headers)
        except httpx.TimeoutException:
            return Attempt("TimedOut", retry=True, detail=f"no answer from {self._shown} in time")
        except httpx.HTTPError as exc:
            return Attempt("GenericError", retry=True, detail=f"{type(exc).__name__} from {self._shown}")
        status = response.status_code
        return Attempt(outcome_for_status(status), retry=status not in NOT_RETRIED_WEBHOOK | SUCCESS_STATUSES,
                       detail=f"HTTP {status} from {self._shown}")

    def close(self) -> None:
        self._client.close()


class QueueSender:
    """Event Grid's storage-queue delivery: one event per message (no handshake)."""

    needs_handshake = False
    batch_size = 1

    def __init__(self, settings: EventSubscriptionSettings) -> None:
        self._settings = settings
        self._queue: Any = None  # QueueClient, made on first use (the import is heavy)

    def handshake(self) -> str | None:
        return None

    def _client(self) -> Any:
        if self._queue is None:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.queue import QueueClient

            secret = self._settings.queue_connection_string
            assert secret is not None  # the settings validator requires it for a queue
            queue = QueueClient.from_connection_string(secret.get_secret_value(), self._settings.queue_name)
            with contextlib.suppress(ResourceExistsError):  # created before: fine
                queue.create_queue()
            self._queue = queue
        return self._queue

    def send(self, events: Sequence[EmulatorEvent], delivery_count: int) -> Attempt:
        from azure.core.exceptions import AzureError, HttpResponseError

        from certlc.events import encode_queue_message

        name = self._settings.queue_name
        try:
            for event in events:
                message = encode_queue_message(render(event, self._settings.event_schema),
                                               base64_encoded=self._settings.queue_base64)
                self._client().send_message(message, time_to_live=self._settings.queue_message_ttl_seconds)
        except InvalidInput as exc:
            return Attempt("PayloadTooLarge", retry=False, detail=f"queue {name}: {exc.message}")
        except HttpResponseError as exc:
            status = exc.status_code or 0
            return Attempt(outcome_for_status(status), retry=status not in NOT_RETRIED_QUEUE,
                           detail=f"queue {name}: HTTP {status} {exc.reason or ''}".rstrip())
        except AzureError as exc:  # connection refused, timeouts: the account is unreachable
            return Attempt("GenericError", retry=True, detail=f"queue {name}: {type(exc).__name__}")
        return Attempt("Success", retry=False, detail=f"queue {name}")

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()


class _QueryRedactingFilter(logging.Filter):
    """Drops the query string of URLs in httpx's "HTTP Request: POST <url>" lines (shared keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                display_endpoint(str(a)) if isinstance(a, httpx.URL) and a.query else a for a in record.args
            )
        return True


_FILTER = _QueryRedactingFilter()


def _redact_httpx_log() -> None:
    # httpx logs every request's full URL at INFO; the webhook's key sits in that URL.
    httpx_logger = logging.getLogger("httpx")
    if _FILTER not in httpx_logger.filters:
        httpx_logger.addFilter(_FILTER)
