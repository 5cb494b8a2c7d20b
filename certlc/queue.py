"""The renewal queue: Key Vault events as Event Grid writes them to a storage queue.

Messages are read with no decode policy and decoded by :func:`certlc.events.decode_queue_message`
(base64 JSON or plain JSON). A received message stays hidden for longer than a renewal takes; it
is deleted only when its renewal merged, or was definitively refused and alerted
(:meth:`RenewalQueue.complete`). A message received ``max_dequeues`` times, or one that cannot
be read at all, is moved to the dead-letter queue (:meth:`RenewalQueue.dead_letter`). Duplicates
of one certificate version in a batch collapse to one renewal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import QueueClient
from requests.adapters import HTTPAdapter

from certlc.config import QueueSettings, Settings
from certlc.errors import ConfigError, InvalidInput, TransientError, first_line
from certlc.events import KeyVaultEvent, decode_queue_message, encode_queue_message

__all__ = ["Poison", "QueuedEvent", "RenewalQueue", "queue_clients"]


@dataclass(frozen=True)
class QueuedEvent:
    """A received message whose event is readable; ``receipt`` completes or releases it."""

    message_id: str
    pop_receipt: str
    dequeue_count: int
    event: KeyVaultEvent
    content: str = ""  # the message text as it was, for postpone and dead-letter


@dataclass(frozen=True)
class Poison:
    """A received message that cannot be renewed from: unreadable, or received too often."""

    message_id: str
    pop_receipt: str
    dequeue_count: int
    content: str
    reason: str


@contextlib.contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    try:
        yield
    except AzureError as exc:
        raise TransientError(f"queue: {action} failed: {first_line(exc, 200)}", reason="QueueUnavailable") from None


def queue_clients(settings: Settings, credential: Any = None) -> tuple[QueueClient, QueueClient]:
    """The renewal queue and its dead-letter queue, from configuration (connection string, or
    account URL + credential)."""
    q: QueueSettings = settings.queue
    kwargs: dict[str, Any] = {"api_version": q.api_version} if q.api_version else {}
    # The webhook sends from up to 40 threads; requests' default pool keeps 10 connections and
    # discards the rest after each use. One larger pool, shared by both queues.
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=64))
    session.mount("https://", HTTPAdapter(pool_maxsize=64))
    kwargs["transport"] = RequestsTransport(session=session, session_owner=False)
    # Fail within seconds when the account is unreachable (the SDK's default retries take
    # minutes): the caller retries — Event Grid, the drain's schedule, Prefect's task retries.
    kwargs.update(retry_total=2, connection_timeout=5, read_timeout=30)
    if q.connection_string is not None:
        secret = q.connection_string.get_secret_value()
        return (QueueClient.from_connection_string(secret, q.name, **kwargs),
                QueueClient.from_connection_string(secret, q.dead_letter_name, **kwargs))
    if q.account_url:
        if credential is None:
            from certlc.clients import credential as default_credential

            credential = default_credential(settings)
        return (QueueClient(q.account_url, q.name, credential=credential, **kwargs),
                QueueClient(q.account_url, q.dead_letter_name, credential=credential, **kwargs))
    raise ConfigError("queue: set queue.connection_string or queue.account_url", reason="QueueNotConfigured")


class RenewalQueue:
    def __init__(self, queue: QueueClient, dead_letter: QueueClient, settings: QueueSettings) -> None:
        self.queue = queue
        self.dead_letter_queue = dead_letter
        self.settings = settings

    def ensure(self) -> None:
        """Create both queues if they do not exist (idempotent)."""
        for client in (self.queue, self.dead_letter_queue):
            with _storage_errors("create queue"), contextlib.suppress(ResourceExistsError):
                client.create_queue()

    def send(self, event: dict[str, Any], *, base64_encoded: bool = True) -> None:
        """Put one event on the queue, as Event Grid does (base64 JSON by default)."""
        with _storage_errors("send"):
            self.queue.send_message(encode_queue_message(event, base64_encoded=base64_encoded))

    def receive(self, max_messages: int = 32) -> tuple[list[QueuedEvent], list[Poison]]:
        """Up to ``max_messages`` messages, hidden for the visibility timeout. Readable events
        come first, renewing ones de-duplicated by certificate version (the extra copies are completed at once:
        one renewal serves them all); unreadable or over-received messages come back as Poison."""
        events: list[QueuedEvent] = []
        poison: list[Poison] = []
        seen: dict[str, QueuedEvent] = {}
        with _storage_errors("receive"):
            messages = list(self.queue.receive_messages(
                messages_per_page=min(max_messages, 32), max_messages=max_messages,
                visibility_timeout=self.settings.visibility_timeout_seconds))
        for message in messages:
            content = message.content if isinstance(message.content, str) else bytes(message.content).decode(
                "utf-8", "replace")
            count = int(message.dequeue_count or 0)
            if count > self.settings.max_dequeues:
                poison.append(Poison(message.id, message.pop_receipt, count, content,
                                     f"received {count} times (limit {self.settings.max_dequeues})"))
                continue
            try:
                event = decode_queue_message(content)
            except InvalidInput as exc:
                poison.append(Poison(message.id, message.pop_receipt, count, content, exc.message))
                continue
            if not isinstance(event, KeyVaultEvent):
                poison.append(Poison(message.id, message.pop_receipt, count, content,
                                     f"not a Key Vault certificate event ({type(event).__name__})"))
                continue
            item = QueuedEvent(message.id, message.pop_receipt, count, event, content)
            if not event.renews:  # NewVersionCreated: nothing to renew, nothing to collapse
                events.append(item)
                continue
            if event.renewal_key in seen:
                self.complete(item)  # a duplicate of a version already in this batch
                continue
            seen[event.renewal_key] = item
            events.append(item)
        return events, poison

    def complete(self, item: QueuedEvent | Poison) -> bool:
        """Delete a message whose renewal is done (or definitively refused and alerted). False
        when it was no longer ours to delete: gone, or visible again and received by someone
        else (its receipt expired) — it will be seen once more, and found done."""
        with _storage_errors("delete"):
            try:
                self.queue.delete_message(item.message_id, item.pop_receipt)
            except ResourceNotFoundError:
                return False
            except HttpResponseError as exc:
                if exc.error_code == "PopReceiptMismatch" or exc.status_code in (400, 404):
                    return False
                raise
        return True

    def release(self, item: QueuedEvent, delay_seconds: int = 0) -> None:
        """Make a message visible again after ``delay_seconds`` (its renewal failed and may
        succeed later); its receive count keeps growing towards the dead-letter limit."""
        with _storage_errors("release"):
            self.queue.update_message(item.message_id, item.pop_receipt, visibility_timeout=max(delay_seconds, 0))

    def postpone(self, item: QueuedEvent, delay_seconds: int) -> None:
        """Put a fresh copy back, visible after ``delay_seconds``, and delete this one: waiting
        (for a CA manager) must not count as a failed attempt."""
        with _storage_errors("postpone"):
            self.queue.send_message(item.content, visibility_timeout=max(delay_seconds, 0))
        self.complete(item)

    def dead_letter(self, item: Poison | QueuedEvent) -> None:
        """Move a poison message to the dead-letter queue, as it was, then delete the original."""
        with _storage_errors("dead-letter"):
            self.dead_letter_queue.send_message(item.content)
        self.complete(item)

    def depth(self) -> int:
        with _storage_errors("count"):
            return int(self.queue.get_queue_properties().approximate_message_count or 0)
