"""Drain the renewal queue: renew from every Key Vault event Event Grid left on the storage queue.

The queue is the durable copy of each near-expiry event, written by Event Grid and by the
webhook receiver. Deployed on a cron with concurrency 1 (a run that finds one in progress is
cancelled). Each renewal is a ``renew-certificate`` child run; what happens to its message after
is decided by :mod:`certlc.drain` (complete, postpone, release with backoff, or dead-letter
with an alert).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from certlc.drain import MAX_RETRY_DELAY_SECONDS, Alert, Verdict, verdict_for_error, verdict_for_outcome
from certlc.errors import InvalidInput
from certlc.events import vault_for
from certlc.queue import Poison, QueuedEvent, RenewalQueue, queue_clients
from certlc.webhook.receiver import AcceptedEvent
from certlc.webhook.sink import renewal_parameters
from flows.renew import renew_certificate
from tasks._policy import current_settings
from tasks.alert import raise_alert


def _renew(item: QueuedEvent, parameters: dict[str, Any], cap: int) -> Verdict:
    state = renew_certificate(**parameters, return_state=True)
    try:
        outcome = state.result()
    except Exception as exc:  # the run failed: its own log and notification say why
        return verdict_for_error(exc, item.dequeue_count, cap)
    return verdict_for_outcome(outcome, item.dequeue_count, cap)


@flow(name="drain-queue", validate_parameters=True, result_serializer="json")
def drain_queue(max_messages: int = 1000) -> dict[str, Any]:
    """Renew from up to ``max_messages`` queued events; dead-letter what cannot be renewed from."""
    logger = get_run_logger()
    settings = current_settings()
    queue = RenewalQueue(*queue_clients(settings), settings.queue)
    resource = f"certlc.queue.{settings.queue.name}"
    cap = MAX_RETRY_DELAY_SECONDS
    # As many messages as run at once: a received message stays hidden for the visibility
    # timeout, which must outlast its renewal, not a whole batch's.
    per_round = min(32, settings.renewal.concurrency)
    rows: list[dict[str, Any]] = []
    done: set[str] = set()  # certificate versions handled by this drain: later copies need no run
    received = 0

    def dead_letter(item: Poison | QueuedEvent, reason: str) -> None:
        queue.dead_letter(item)
        raise_alert(asdict(Alert("QueueMessageDeadLettered",
                                 f"queue message {item.message_id} moved to {settings.queue.dead_letter_name}: {reason}",
                                 {"message_id": item.message_id, "dequeue_count": item.dequeue_count,
                                  "reason": reason, "queue": settings.queue.name})), resource)
        rows.append({"message": item.message_id, "certificate": None, "action": "dead_letter", "reason": reason})

    while received < max_messages:
        events, poison = queue.receive(min(per_round, max_messages - received))
        if not events and not poison:
            break
        received += len(events) + len(poison)
        for bad in poison:
            dead_letter(bad, bad.reason)
        work: list[tuple[QueuedEvent, dict[str, Any]]] = []
        for item in events:
            key = item.event.renewal_key
            if not item.event.renews:
                queue.complete(item)
                rows.append({"message": item.message_id, "certificate": key, "action": "complete",
                             "reason": f"{item.event.type.value.rsplit('.', 1)[-1]}: nothing to renew"})
                continue
            if key in done:
                queue.complete(item)
                rows.append({"message": item.message_id, "certificate": key, "action": "complete",
                             "reason": "duplicate of a version renewed in this drain"})
                continue
            try:
                vault = vault_for(item.event, settings)
            except InvalidInput as exc:
                dead_letter(item, exc.message)
                continue
            work.append((item, renewal_parameters(AcceptedEvent(item.event, vault))))
        with ThreadPoolExecutor(max_workers=settings.renewal.concurrency, thread_name_prefix="drain") as pool:
            # Each renewal runs in a copy of this flow's context: a child run of the drain.
            futures = [pool.submit(contextvars.copy_context().run, _renew, item, params, cap) for item, params in work]
            verdicts = [f.result() for f in futures]
        for (item, _), verdict in zip(work, verdicts, strict=True):
            key = item.event.renewal_key
            if verdict.action == "complete":
                if not queue.complete(item):
                    logger.warning("%s: message %s came back before its renewal finished (visibility timeout "
                                   "too short?); it will be seen again and found done", key, item.message_id)
                done.add(key)
            elif verdict.action == "postpone":
                queue.postpone(item, verdict.delay_seconds)
            elif verdict.action == "release":
                queue.release(item, verdict.delay_seconds)
            else:
                dead_letter(item, verdict.reason)
                continue
            logger.info("%s: %s (%s)", key, verdict.action, verdict.reason)
            rows.append({"message": item.message_id, "certificate": key, "action": verdict.action,
                         "reason": verdict.reason})
    summary = {action: sum(r["action"] == action for r in rows)
               for action in ("complete", "postpone", "release", "dead_letter")}
    logger.info("drain: %d message(s): %s", received, ", ".join(f"{k} {v}" for k, v in summary.items()))
    if rows:
        create_table_artifact(key="drain-summary", table=rows, description="Queue messages handled by the drain")
    return {"received": received, **summary, "messages": rows}
