"""Delivery to one subscription: handshake, attempts, Event Grid's retries, dead-lettering.

Each subscription has its own daemon thread (:class:`SubscriptionWorker`), so a slow or dead
endpoint holds up only its own events and never the Key Vault API, which only appends to the
outbox. The worker:

1. shakes hands first (webhooks); until the endpoint consents, events are held and the
   handshake is tried again every ``retry_seconds`` (the event scan interval);
2. sends due events, ``max_events_per_batch`` at a time (a batch succeeds or fails whole);
3. on failure retries on Event Grid's schedule scaled by ``retry_time_scale``
   (:mod:`certlc.emulator.retry`); 400/401/403/413 (webhook) or 400/413 (queue) are not retried;
4. gives up after ``max_delivery_attempts`` attempts or when the (equally scaled) time to live
   has passed at the next attempt, and writes the dead letter after ``dead_letter_delay_seconds``.

While publishing is paused (:class:`Gate` closed) nothing is sent; held events go out on resume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certlc.config import EventSubscriptionSettings
from certlc.emulator.clock import EmulatorClock
from certlc.emulator.deadletter import DeadLetter, dead_lettered_event, write_dead_letters
from certlc.emulator.events import event_time, render
from certlc.emulator.outbox import Outbox, OutboxEntry
from certlc.emulator.retry import MAX_DELIVERY_ATTEMPTS_EXCEEDED, TIME_TO_LIVE_EXCEEDED, retry_delay, ttl_seconds
from certlc.emulator.senders import Attempt, Sender, describe

__all__ = ["Gate", "SubscriptionWorker"]

logger = logging.getLogger(__name__)

IDLE_WAIT = 60.0  # seconds between checks with nothing due (a wake-up comes sooner)


class Gate:
    """Whether events are published and delivered at all (``PUT /admin/events``)."""

    def __init__(self, enabled: bool = True) -> None:
        self._open = enabled
        self._listeners: list[Callable[[], None]] = []

    @property
    def open(self) -> bool:
        return self._open

    def set(self, enabled: bool) -> None:
        self._open = enabled
        for listener in list(self._listeners):
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)


class SubscriptionWorker:
    """Delivers one subscription's outbox in a daemon thread."""

    def __init__(
        self,
        settings: EventSubscriptionSettings,
        outbox: Outbox,
        sender: Sender,
        clock: EmulatorClock,
        gate: Gate,
        dead_letter_dir: Path,
        retry_seconds: float,
        real_time: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self._sender = sender
        self._clock = clock
        self._gate = gate
        self._dead_letter_dir = dead_letter_dir
        self._retry_seconds = retry_seconds
        self._now = real_time
        self._wake = threading.Condition()
        self._woken = False
        self._stopping = False
        self.validated = not sender.needs_handshake  # not persisted: a restart shakes hands again
        self._handshake_problem: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"certlc-events-{settings.name}", daemon=True)

    # Control ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._wake:
            self._woken = True
            self._wake.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        self._sender.close()

    def stats(self) -> dict[str, Any]:
        entries, counters = self.outbox.snapshot()
        return {
            "name": self.settings.name,
            "destination": describe(self.settings),
            "validated": self.validated,
            "delivered": counters.delivered,
            "pending": sum(1 for e in entries if e.dead_letter is None),
            "retries": counters.retries,
            "dead_lettered": counters.dead_lettered,
            "dead_letter_waiting": sum(1 for e in entries if e.dead_letter is not None),
            "last_outcome": counters.last_outcome,
            "last_attempt_time": counters.last_attempt_time,
        }

    # The loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            try:
                wait = self.step()
            except Exception:  # a bug or a full disk must not end deliveries for good
                logger.exception("events: subscription %s: delivery step failed", self.settings.name)
                wait = self._retry_seconds
            self._sleep(wait)

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            if not self._woken and not self._stopping:
                self._wake.wait(max(0.0, seconds))
            self._woken = False

    def step(self) -> float:
        """Do what is due now; return how long to sleep before the next step (unless woken)."""
        if not self._gate.open:
            return IDLE_WAIT
        now = self._now()
        self._write_dead_letters(now)
        if not self.validated:
            problem = self._sender.handshake()
            if problem is not None:
                held = len(self.outbox.snapshot()[0])
                # Loud once per distinct problem, quiet while it repeats every scan.
                level = logging.DEBUG if problem == self._handshake_problem else logging.WARNING
                self._handshake_problem = problem
                logger.log(level, "events: subscription %s is not validated, holding %d event(s); "
                           "trying again every %gs: %s", self.settings.name, held, self._retry_seconds, problem)
                return self._retry_seconds
            self._handshake_problem = None
            self.validated = True
            logger.info("events: subscription %s validated (%s)", self.settings.name, describe(self.settings))
        batch = self._due_batch(now)
        if batch:
            attempt = self._sender.send([e.event for e in batch], batch[0].attempts)
            self._record(batch, attempt, self._now())
            return 0.0  # more may be due
        return self._next_wait(now)

    # Helpers ------------------------------------------------------------------------------------
    def _due_batch(self, now: float) -> list[OutboxEntry]:
        """Up to one batch of due events; events past their time to live are dead-lettered first."""
        ttl = ttl_seconds(self.settings.event_ttl_minutes, self.settings.retry_time_scale)
        if not any(e.dead_letter is None and e.next_attempt <= now for e in self.outbox.snapshot()[0]):
            return []  # nothing due: no outbox rewrite
        with self.outbox.change() as (entries, _):
            due = [e for e in entries if e.dead_letter is None and e.next_attempt <= now]
            for entry in due:
                if now - entry.published_at > ttl:
                    self._give_up(entry, TIME_TO_LIVE_EXCEEDED, now)
            return [e for e in due if e.dead_letter is None][: self._sender.batch_size]

    def _record(self, batch: list[OutboxEntry], attempt: Attempt, now: float) -> None:
        moment = event_time(self._clock.now_datetime())
        name = self.settings.name
        with self.outbox.change() as (entries, stats):
            stats.last_outcome, stats.last_attempt_time = attempt.outcome, moment
            if attempt.ok:
                for entry in batch:
                    entries.remove(entry)
                stats.delivered += len(batch)
                logger.info("events: delivered %d event(s) to %s (%s)", len(batch), name, attempt.detail)
                return
            for entry in batch:
                entry.attempts += 1
                entry.last_outcome, entry.last_attempt_time = attempt.outcome, moment
                if not attempt.retry:
                    self._give_up(entry, attempt.outcome, now)
                elif entry.attempts >= self.settings.max_delivery_attempts:
                    self._give_up(entry, MAX_DELIVERY_ATTEMPTS_EXCEEDED, now)
                else:
                    entry.next_attempt = now + retry_delay(entry.attempts, self.settings.retry_time_scale)
                    stats.retries += 1
            logger.warning("events: delivery of %d event(s) to %s failed (attempt %d, %s): %s",
                           len(batch), name, batch[0].attempts, attempt.outcome, attempt.detail)

    def _give_up(self, entry: OutboxEntry, reason: str, now: float) -> None:
        entry.dead_letter = DeadLetter(
            reason=reason,
            attempts=entry.attempts,
            last_outcome=entry.last_outcome or "Undelivered",
            publish_time=entry.publish_time,
            last_attempt_time=entry.last_attempt_time or entry.publish_time,
        )
        entry.dead_letter_due = now + self.settings.dead_letter_delay_seconds
        logger.warning("events: subscription %s gives up event %s (%s) after %d attempt(s)",
                       self.settings.name, entry.event.id, reason, entry.attempts)

    def _write_dead_letters(self, now: float) -> None:
        if not any(e.dead_letter is not None and (e.dead_letter_due or 0) <= now for e in self.outbox.snapshot()[0]):
            return
        with self.outbox.change() as (entries, stats):
            due = [e for e in entries if e.dead_letter is not None and (e.dead_letter_due or 0) <= now]
            if not due:
                return
            schema = self.settings.event_schema
            letters = [dead_lettered_event(render(e.event, schema), schema, e.dead_letter) for e in due
                       if e.dead_letter is not None]
            path = write_dead_letters(self._dead_letter_dir, self.settings.name, letters, self._clock.now_datetime())
            for entry in due:
                entries.remove(entry)
            stats.dead_lettered += len(due)
        logger.warning("events: dead-lettered %d event(s) of subscription %s to %s", len(due), self.settings.name, path)

    def _next_wait(self, now: float) -> float:
        entries, _ = self.outbox.snapshot()
        times = [e.dead_letter_due if e.dead_letter is not None else e.next_attempt for e in entries]
        upcoming = [t for t in times if t is not None]
        return min([IDLE_WAIT, *(t - now for t in upcoming)])
