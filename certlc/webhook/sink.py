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

from certlc.errors import InvalidInput, TransientError, first_line
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
    """Starts a deployment's flow run: what ``run_deployment(timeout=0, idempotency_key=...)``
    does (look the deployment up, then ``POST /deployments/{id}/create_flow_run`` with the key),
    but on one kept-open client with the deployment id looked up once — ``run_deployment`` opens
    a client and reads the deployment for every call, twice the cost per event (measured with
    ``make bench-webhook``).

    At most ``max_concurrent`` starts run at once: a Prefect server on SQLite answers concurrent
    writes with 503 ("database is locked"), and waiting here is cheaper than its client's
    retries. ``run`` replaces the whole call in tests.
    """

    def __init__(self, deployment: str, run: Callable[..., Any] | None = None, max_concurrent: int = 4) -> None:
        self.deployment = deployment
        self._run = run
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._client: Any = None
        self._deployment_id: Any = None

    def _prefect(self) -> tuple[Any, Any]:
        with self._lock:
            if self._client is None:
                from prefect.client.orchestration import get_client

                client = get_client(sync_client=True)
                client.__enter__()
                self._client = client
            if self._deployment_id is None:
                self._deployment_id = self._client.read_deployment_by_name(self.deployment).id
            return self._client, self._deployment_id

    def _create(self, parameters: dict[str, Any], idempotency_key: str) -> Any:
        client, deployment_id = self._prefect()
        try:
            return client.create_flow_run_from_deployment(deployment_id, parameters=parameters,
                                                          idempotency_key=idempotency_key)
        except Exception as exc:
            if getattr(getattr(exc, "response", None), "status_code", None) == 404:
                with self._lock:  # the deployment was re-created under a new id: look it up again
                    self._deployment_id = None
            raise

    def start(self, parameters: dict[str, Any], idempotency_key: str) -> str:
        with self._slots:
            try:
                if self._run is not None:
                    flow_run = self._run(self.deployment, parameters=parameters, timeout=0,
                                         idempotency_key=idempotency_key, as_subflow=False)
                else:
                    flow_run = self._create(parameters, idempotency_key)
            except Exception as exc:  # the Prefect API is down, the deployment is missing, ...
                raise TransientError(f"could not start {self.deployment}: {first_line(exc, 200)}",
                                     reason="RunNotStarted") from None
        return str(flow_run.id)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.__exit__(None, None, None)
                self._client = None


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
        # event id -> (certificate version it names, flow run id)
        self._handed_on: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._guard = threading.Lock()
        self._in_flight: dict[str, tuple[threading.Lock, list[int]]] = {}  # event id -> (lock, [waiters])

    def accept(self, events: Sequence[AcceptedEvent]) -> None:
        for item in events:
            self._accept_one(item)

    def _accept_one(self, item: AcceptedEvent) -> None:
        event_id, key = item.event.id, item.event.renewal_key
        with self._guard:
            lock, waiters = self._in_flight.setdefault(event_id, (threading.Lock(), [0]))
            waiters[0] += 1
        try:
            with lock:
                with self._guard:
                    known = self._handed_on.get(event_id)
                if known is not None:
                    if known[0] != key:
                        # Event Grid ids are unique per event: the same id for another certificate
                        # is not a redelivery, and its idempotency key would return the other's run.
                        raise InvalidInput(f"event id {event_id!r} was already used for {known[0]}, not {key}",
                                           reason="EventIdReused")
                    log.info("webhook: event %s again: already handed on (flow run %s)", event_id, known[1])
                    return
                if self.queue is not None:
                    # The envelope as Event Grid sent it, base64 as Event Grid writes queues: the
                    # drain reads this exactly like a message Event Grid put there itself.
                    self.queue.send(dict(item.event.raw))
                run_id = self.starter.start(renewal_parameters(item), idempotency_key=event_id)
                with self._guard:
                    self._handed_on[event_id] = (key, run_id)
                    while len(self._handed_on) > self._remember:
                        self._handed_on.popitem(last=False)
                log.info("webhook: event %s -> flow run %s", event_id, run_id)
        finally:
            with self._guard:  # the last copy out removes the lock (a failure lets the next copy try)
                waiters[0] -= 1
                if waiters[0] == 0:
                    self._in_flight.pop(event_id, None)
