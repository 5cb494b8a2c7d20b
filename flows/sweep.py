"""Sweep the vaults: find every certificate due for renewal and renew each, a few at a time.

The sweep is the safety net behind events: a lost or never-sent event never means an expired
certificate. Each renewal is its own ``renew-certificate`` flow run (visible and retryable in
the UI); concurrency is bounded by ``renewal.concurrency``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from certlc.clients import certificate_client
from certlc.errors import CertlcError
from certlc.policy import is_due
from certlc.times import iso_utc
from certlc.vault import list_certificates
from flows.renew import renew_certificate
from tasks._policy import PERSIST, RETRY, current_settings, stored


@task(name="find-due", cache_policy=None, **RETRY, **PERSIST)
def find_due(vault: str) -> list[dict[str, Any]]:
    """Every certificate of ``vault`` with whether it is due and why."""
    settings = current_settings()
    configured = settings.vault(vault)
    now = dt.datetime.now(dt.UTC)
    found = []
    for item in list_certificates(certificate_client(configured, settings), configured.name):
        try:
            due = is_due(item.not_before, item.not_after, settings.renewal, now=now, tags=item.tags,
                         enabled=item.enabled)
        except (ValueError, OverflowError) as exc:  # one odd certificate must not stop the sweep
            get_run_logger().warning("%s/%s: cannot tell whether it is due: %s", vault, item.name, exc)
            continue
        found.append({"vault": configured.name, "name": item.name, "version": item.version, "due": due.due,
                      "reason": due.reason,
                      "not_after": iso_utc(item.not_after)})
    return found


def _renew_one(vault: str, name: str) -> dict[str, Any]:
    state = renew_certificate(vault=vault, name=name, return_state=True)
    try:
        return state.result()
    except CertlcError as exc:
        return {"vault": vault, "name": name, "outcome": "Failed", "reason": exc.reason, "message": exc.message}
    except Exception as exc:  # a crash in one renewal must not stop the others
        # Only the exception's class reaches the summary artifact: an arbitrary message could
        # carry a URL with credentials. The run's own log holds the details.
        return {"vault": vault, "name": name, "outcome": "Failed", "reason": type(exc).__name__,
                "message": "unexpected error; see the renew-certificate run's log"}


@flow(name="sweep", validate_parameters=True, result_serializer="json")
def sweep(vaults: list[str] | None = None) -> dict[str, Any]:
    """Renew every due certificate in ``vaults`` (default: all configured vaults)."""
    logger = get_run_logger()
    settings = current_settings()
    names = vaults or [v.name for v in settings.vaults]
    for name in names:
        settings.vault(name)  # refuse unknown vaults before touching any
    inventory: list[dict[str, Any]] = []
    for name in names:
        inventory.extend(stored(find_due)(name))
    due = [c for c in inventory if c["due"]]
    logger.info("sweep: %d certificate(s) in %d vault(s), %d due", len(inventory), len(names), len(due))
    with ThreadPoolExecutor(max_workers=settings.renewal.concurrency, thread_name_prefix="renew") as pool:
        # Each renewal runs in a copy of this flow's context, so Prefect records it as a child
        # run of the sweep (and cancelling the sweep reaches it).
        futures = [pool.submit(contextvars.copy_context().run, _renew_one, c["vault"], c["name"]) for c in due]
        results = [f.result() for f in futures]
    by_key = {(r["vault"], r["name"]): r for r in results}
    rows = []
    for cert in inventory:
        result = by_key.get((cert["vault"], cert["name"]))
        rows.append({
            "vault": cert["vault"], "name": cert["name"], "due": cert["due"], "due_reason": cert["reason"],
            "not_after": cert["not_after"],
            "outcome": result["outcome"] if result else "NotDue",
            "reason": result.get("reason") if result else cert["reason"],
            "new_not_after": result.get("new_not_after") if result else None,
        })
    create_table_artifact(key="sweep-summary", table=rows, description="Certificates seen by the sweep")
    failed = [r for r in results if r["outcome"] == "Failed"]
    logger.info("sweep: %d renewed, %d pending/denied, %d failed", sum(r["outcome"] in ("Renewed", "AlreadyRenewed")
                for r in results), sum(r["outcome"] in ("Pending", "Denied") for r in results), len(failed))
    return {"certificates": rows, "results": results}
