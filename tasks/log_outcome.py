"""Step 7: record the outcome — a Prefect table artifact and a structured log line."""

from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact


@task(name="log-outcome", cache_policy=None, **{"persist_result": True, "result_serializer": "json"})
def log_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    row = {k: outcome.get(k) for k in ("vault", "name", "outcome", "reason", "old_thumbprint", "new_thumbprint",
                                       "old_not_after", "new_not_after", "template", "ca_request_id")}
    key = re.sub(r"[^a-z0-9-]", "-", f"renewal-{outcome['vault']}-{outcome['name']}".lower())
    create_table_artifact(key=key, table=[row],
                          description=f"Renewal of {outcome['name']} in {outcome['vault']}")
    get_run_logger().info("%s/%s: outcome %s (%s) %s", outcome["vault"], outcome["name"], outcome["outcome"],
                          outcome["reason"], outcome.get("message") or "")
    return row
