"""What the receiver does with an accepted event: queue it, then start its renewal run.

Both must succeed before Event Grid gets its 200 (the receiver answers 503 otherwise, and Event
Grid delivers again). Both are idempotent per event: the queue drain collapses copies of one
certificate version, and Prefect's ``idempotency_key`` (the Event Grid event id) makes a
redelivery return the run the first delivery created instead of starting a second one.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from certlc.errors import TransientError, first_line
from certlc.renewal import Trigger
from certlc.times import iso_utc
from certlc.webhook.receiver import AcceptedEvent

__all__ = ["DeploymentStarter", "RenewalSink", "renewal_parameters"]

log = logging.getLogger("certlc.webhook")


class EventQueue(Protocol):
    def send(self, event: dict[str, Any], *, base64_encoded: bool = True) -> None: ...


class RunStarter(Protocol):
    def start(self, parameters: dict[str, Any], idempotency_key: str) -> str: ...


def renewal_parameters(item: AcceptedEvent) -> dict[str, Any]:
    """The ``renew-certificate`` flow's parameters for one event (vault by its configured name)."""
    event = item.event
    parameters: dict[str, Any] = {"vault": item.vault.name, "name": event.object_name, "event_id": event.id}
    if event.version:
        parameters["event"] = Trigger(event_id=event.id, event_type=event.type.value, version=event.version,
                                      expires=iso_utc(event.expires)).to_dict()
    return parameters


class DeploymentStarter:
    """Starts a deployment's flow run with ``run_deployment(timeout=0, idempotency_key=...)``.

    ``run`` is injectable for tests; by default it is Prefect's ``run_deployment``, which reads
    ``PREFECT_API_URL`` like every Prefect client.
    """

    def __init__(self, deployment: str, run: Callable[..., Any] | None = None) -> None:
        self.deployment = deployment
        self._run = run

    def start(self, parameters: dict[str, Any], idempotency_key: str) -> str:
        run = self._run
        if run is None:
            from prefect.deployments import run_deployment

            run = run_deployment
        try:
            flow_run = run(self.deployment, parameters=parameters, timeout=0, idempotency_key=idempotency_key,
                           as_subflow=False)
        except Exception as exc:  # the Prefect API is down, the deployment is missing, ...
            raise TransientError(f"could not start {self.deployment}: {first_line(exc, 200)}",
                                 reason="RunNotStarted") from None
        return str(flow_run.id)


class RenewalSink:
    """The receiver's sink: queue (when configured) then start a run, per event, in order.

    Event Grid redelivers, and duplicates often arrive together: copies of an event this process
    already handed on are answered from memory (the first copy's queue message and run stand),
    and concurrent copies wait for the first instead of each calling the queue and Prefect.
    Prefect's idempotency key still covers copies that reach another receiver or a restart.
    """

    def __init__(self, starter: RunStarter, queue: EventQueue | None = None, remember: int = 10_000) -> None:
        self.starter = starter
        self.queue = queue
        self._remember = remember
        self._handed_on: OrderedDict[str, str] = OrderedDict()  # event id -> flow run id
        self._guard = threading.Lock()
        self._in_flight: dict[str, threading.Lock] = {}

    def accept(self, events: Sequence[AcceptedEvent]) -> None:
        for item in events:
            self._accept_one(item)

    def _accept_one(self, item: AcceptedEvent) -> None:
        event_id = item.event.id
        with self._guard:
            lock = self._in_flight.setdefault(event_id, threading.Lock())
        with lock:
            with self._guard:
                if event_id in self._handed_on:
                    log.info("webhook: event %s again: already handed on (flow run %s)", event_id,
                             self._handed_on[event_id])
                    return
            try:
                if self.queue is not None:
                    # The envelope as Event Grid sent it, base64 as Event Grid writes queues: the
                    # drain reads this exactly like a message Event Grid put there itself.
                    self.queue.send(dict(item.event.raw))
                run_id = self.starter.start(renewal_parameters(item), idempotency_key=event_id)
            except BaseException:
                with self._guard:
                    self._in_flight.pop(event_id, None)
                raise
            with self._guard:  # remembered and released in one step: no copy slips in between
                self._handed_on[event_id] = run_id
                while len(self._handed_on) > self._remember:
                    self._handed_on.popitem(last=False)
                self._in_flight.pop(event_id, None)
        log.info("webhook: event %s -> flow run %s", event_id, run_id)
