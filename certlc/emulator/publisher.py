"""The emulator's Event Grid: finds Key Vault certificate events and hands them to subscriptions.

* ``CertificateNewVersionCreated`` comes from the vaults themselves: :meth:`EventPublisher.version_created`
  is the hook every :class:`~certlc.emulator.vault.Vault` calls once per new version (self-issued
  create, import, merge).
* ``CertificateNearExpiry`` / ``CertificateExpired`` come from :meth:`EventPublisher.scan`, run
  every ``event_scan_seconds``, right after the clock offset changes, and on demand
  (``POST /admin/events/scan``); :mod:`certlc.emulator.expiry` decides what is due, once per version.

Each event gets one id and goes to every subscription whose ``event_types`` include it, through
that subscription's outbox and worker (:mod:`certlc.emulator.delivery`). With publishing paused
(``PUT /admin/events {"enabled": false}``) events that happen are dropped, as with Event Grid
delivery switched off: expiry events found meanwhile are marked fired and never sent later.
With no subscriptions configured, nothing is scanned or recorded at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from certlc.config import EmulatorSettings
from certlc.emulator.clock import EmulatorClock
from certlc.emulator.delivery import Gate, SubscriptionWorker
from certlc.emulator.events import NEW_VERSION, EmulatorEvent, certificate_event, event_time, vault_resource_id
from certlc.emulator.expiry import FiredSet, current_versions, due_events
from certlc.emulator.outbox import Outbox, OutboxEntry
from certlc.emulator.senders import make_sender
from certlc.emulator.vault import Vault

__all__ = ["EVENTS_DIR", "EventPublisher"]

logger = logging.getLogger(__name__)

EVENTS_DIR = "events"


class EventPublisher:
    """Publishes the emulator's certificate events to the configured subscriptions."""

    def __init__(self, settings: EmulatorSettings, state_dir: Path, clock: EmulatorClock,
                 vault_urls: Mapping[str, str]) -> None:
        self._settings = settings
        self._clock = clock
        self._vault_urls = dict(vault_urls)
        self._vaults: list[Vault] = []
        self.gate = Gate()
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._scanner: threading.Thread | None = None
        self.workers: list[SubscriptionWorker] = []
        self._fired: FiredSet | None = None
        if not settings.subscriptions:
            return
        events_dir = state_dir / EVENTS_DIR
        self._fired = FiredSet(events_dir)
        topic = vault_resource_id(next(iter(self._vault_urls), "vault"))
        for sub in settings.subscriptions:
            self.workers.append(SubscriptionWorker(
                sub, Outbox(events_dir / "outbox", sub.name), make_sender(sub, topic), clock, self.gate,
                sub.dead_letter_dir or state_dir / "deadletter", retry_seconds=settings.event_scan_seconds,
            ))
        self.gate.on_change(self._wake_all)
        clock.on_change(lambda _offset: self.scan())

    @property
    def active(self) -> bool:
        return bool(self.workers)

    # Lifecycle ----------------------------------------------------------------------------------
    def start(self, vaults: list[Vault]) -> None:
        """Begin scanning ``vaults`` and delivering (a no-op without subscriptions)."""
        self._vaults = list(vaults)
        if not self.active:
            return
        for worker in self.workers:
            worker.start()
        self._scanner = threading.Thread(target=self._scan_loop, name="certlc-events-scan", daemon=True)
        self._scanner.start()
        logger.info("events: publishing to %d subscription(s); expiry scan every %gs",
                    len(self.workers), self._settings.event_scan_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._scanner is not None:
            self._scanner.join(5)
        for worker in self.workers:
            worker.stop()

    # Publishing ---------------------------------------------------------------------------------
    def version_created(self, vault_name: str, name: str, version: str, nbf: int, exp: int) -> None:
        """The vaults' hook: a certificate version was created (fires NewVersionCreated)."""
        if not self.active:
            return
        self._publish([self._event(NEW_VERSION, vault_name, name, version, nbf, exp)])

    def scan(self) -> int:
        """Fire the expiry events that are due now; return how many were published."""
        if not self.active or self._fired is None:
            return 0
        with self._scan_lock:  # one scan at a time, so nothing fires twice
            now = self._clock.now()
            events: list[EmulatorEvent] = []
            fired: list[tuple[str, str]] = []
            for vault in self._vaults:
                with vault.store.read() as state:
                    versions = current_versions(vault.name, state)
                for version in versions:
                    for event_type in due_events(version, now, self._fired):
                        events.append(self._event(event_type, version.vault_name, version.name, version.version,
                                                  version.nbf, version.exp))
                        fired.append((event_type, version.key))
            # Recorded first: a crash in between loses an event rather than repeating it later.
            self._fired.add(fired, self._clock.now_datetime())
            return self._publish(events)

    def _event(self, event_type: str, vault_name: str, name: str, version: str, nbf: int, exp: int) -> EmulatorEvent:
        url = self._vault_urls.get(vault_name, f"https://localhost/{vault_name}")
        return certificate_event(event_type, vault_name, url, name, version, nbf, exp, self._clock.now_datetime())

    def _publish(self, events: list[EmulatorEvent]) -> int:
        if not events:
            return 0
        if not self.gate.open:
            logger.info("events: publishing is off; dropped %d event(s)", len(events))
            return 0
        for event in events:
            logger.info("events: %s for %s/%s version %s (event %s)", event.type.rsplit(".", 1)[-1],
                        event.vault_name, event.subject, event.data["Version"], event.id)
        published_at = self._clock.now_datetime()
        for worker in self.workers:
            wanted = [e for e in events if e.type in worker.settings.event_types]
            if wanted:
                worker.outbox.add([OutboxEntry(event=e, published_at=time.time(), publish_time=event_time(published_at))
                                   for e in wanted])
                worker.wake()
        return len(events)

    # Admin --------------------------------------------------------------------------------------
    def set_enabled(self, enabled: bool) -> None:
        self.gate.set(enabled)
        logger.info("events: publishing and delivery %s", "resumed" if enabled else "paused")

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.gate.open,
            "clock_offset_seconds": self._clock.offset_seconds,
            "fired": len(self._fired) if self._fired is not None else 0,
            "subscriptions": [worker.stats() for worker in self.workers],
        }

    def _wake_all(self) -> None:
        for worker in self.workers:
            worker.wake()

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:  # keep scanning: a transient failure (disk) must not end events
                logger.exception("events: expiry scan failed")
            self._stop.wait(self._settings.event_scan_seconds)
