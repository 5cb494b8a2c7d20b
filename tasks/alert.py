"""Raise an operator alert: an ERROR line in the run log and a Prefect event.

The event (``certlc.alert.<kind>``, resource ``certlc.<what>``) is what a Prefect automation
matches to page someone, e.g. a send-notification action on ``certlc.alert.*``. Owners of a
certificate are told through ``notify``; alerts are for whoever runs certlc.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.events import emit_event

from certlc.drain import Alert


@task(name="alert", cache_policy=None, persist_result=False)
def raise_alert(alert: dict[str, Any], resource: str) -> dict[str, Any]:
    item = Alert(**alert)
    get_run_logger().error("ALERT %s: %s", item.kind, item.summary)
    emit_event(event=f"certlc.alert.{item.kind}", resource={"prefect.resource.id": resource},
               payload={"summary": item.summary, **item.details})
    return alert
