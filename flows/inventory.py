"""The inventory: what every configured vault holds, recorded for status, dashboard and metrics.

Scheduled (prefect.yaml: hourly). Each run lists the vaults and reads each certificate once
(:func:`certlc.inventory.take_inventory`), records the rows in the history store (the dashboard's
and ``/metrics``' source), and leaves a table artifact of the run in the Prefect UI. A vault that
cannot be read is named in the result and the log; the others are still recorded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from certlc.history import History
from certlc.inventory import take_inventory
from tasks._policy import RETRY, current_settings


@task(name="take-inventory", cache_policy=None, persist_result=False, **RETRY)
def collect(vaults: list[str] | None) -> dict[str, Any]:
    return take_inventory(current_settings(), vaults=vaults).to_dict()


@task(name="record-inventory", cache_policy=None, persist_result=False)
def record(inventory: dict[str, Any]) -> int:
    run_at = dt.datetime.fromisoformat(inventory["generated_at"].replace("Z", "+00:00"))
    return History(current_settings().history_path).record_inventory(inventory["certificates"], run_at=run_at)


@flow(name="inventory", validate_parameters=True, result_serializer="json")
def inventory(vaults: list[str] | None = None) -> dict[str, Any]:
    """Record every certificate of ``vaults`` (default: all configured) with its status."""
    logger = get_run_logger()
    settings = current_settings()
    for name in vaults or []:
        settings.vault(name)  # refuse unknown vaults before touching any
    taken = collect(vaults)
    recorded = record(taken)
    counts = taken["counts"]
    create_table_artifact(
        key="inventory", description=f"Certificates at {taken['generated_at']}: {counts['Expired']} expired, "
                                     f"{counts['ExpiringSoon']} expiring soon, {counts['NotExpired']} not expired",
        table=[{k: r[k] for k in ("vault", "name", "subject", "template", "issuer", "not_after", "days_left",
                                  "status", "last_outcome")} | {"recipients": ", ".join(r["recipients"])}
               for r in taken["certificates"]])
    for name, problem in taken["vault_errors"].items():
        logger.error("inventory: vault %s could not be read: %s", name, problem)
    logger.info("inventory: %d certificate(s) recorded: %s", recorded, counts)
    return {"generated_at": taken["generated_at"], "counts": counts, "vault_errors": taken["vault_errors"],
            "certificates": len(taken["certificates"])}
