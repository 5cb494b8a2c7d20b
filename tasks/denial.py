"""After a denial or a refused response: remember it, so the next triggers neither ask (nor alert) again at once."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import task

from certlc.denials import Denial, denial_log
from certlc.times import iso_utc
from tasks._policy import PERSIST, RETRY, current_settings


@task(name="record-denial", cache_policy=None, **RETRY, **PERSIST)
def record_denial(snapshot: dict[str, Any], template: str, ca_profile: str, disposition: dict[str, Any],
                  kind: str = "denied", kv_request_id: str = "") -> str:
    """Remember a CA's denial (``kind`` "denied") or a response merge refused ("refused", for the
    pending Key Vault operation ``kv_request_id``)."""
    denial = Denial(vault=snapshot["vault"], name=snapshot["name"], version=snapshot["version"], template=template,
                    ca_profile=ca_profile, ca_request_id=str(disposition.get("request_id") or ""),
                    message=str(disposition.get("message") or ""), at=iso_utc(dt.datetime.now(dt.UTC)) or "",
                    kind=kind, kv_request_id=kv_request_id)
    denial_log(current_settings().results_path).record(denial)
    return denial.at
