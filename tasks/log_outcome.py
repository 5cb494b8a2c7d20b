"""Step 7: record the outcome — the history store, a Prefect table artifact and a log line."""

from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from certlc.history import History
from tasks._policy import current_settings


@task(name="log-outcome", cache_policy=None, **{"persist_result": True, "result_serializer": "json"})
def log_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    row = {k: outcome.get(k) for k in ("vault", "name", "outcome", "reason", "old_thumbprint", "new_thumbprint",
                                       "old_not_after", "new_not_after", "template", "ca_request_id")}
    key = re.sub(r"[^a-z0-9-]", "-", f"renewal-{outcome['vault']}-{outcome['name']}".lower())
    create_table_artifact(key=key, table=[row],
                          description=f"Renewal of {outcome['name']} in {outcome['vault']}")
    logger = get_run_logger()
    logger.info("%s/%s: outcome %s (%s) %s", outcome["vault"], outcome["name"], outcome["outcome"],
                outcome["reason"], outcome.get("message") or "")
    from prefect.runtime import flow_run

    try:
        History(current_settings().history_path).record_outcome(outcome, run_id=flow_run.id)
    except Exception as exc:  # the history feeds status and dashboards; it never fails a renewal
        logger.warning("%s/%s: outcome not recorded in the history store: %s: %s", outcome["vault"],
                       outcome["name"], type(exc).__name__, exc)
    return row
