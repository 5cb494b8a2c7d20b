"""After a denial: remember it, so the next triggers do not submit (and alert) again at once."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import task

from certlc.denials import Denial, denial_log
from certlc.times import iso_utc
from tasks._policy import PERSIST, RETRY, current_settings


@task(name="record-denial", cache_policy=None, **RETRY, **PERSIST)
def record_denial(snapshot: dict[str, Any], template: str, ca_profile: str, disposition: dict[str, Any]) -> str:
    denial = Denial(vault=snapshot["vault"], name=snapshot["name"], version=snapshot["version"], template=template,
                    ca_profile=ca_profile, ca_request_id=str(disposition.get("request_id") or ""),
                    message=str(disposition.get("message") or ""), at=iso_utc(dt.datetime.now(dt.UTC)) or "")
    denial_log(current_settings().results_path).record(denial)
    return denial.at
