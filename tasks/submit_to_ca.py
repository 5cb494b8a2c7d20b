"""Step 4: send the CSR to the CA with the template — the one step that talks to the CA.

Cached on (vault, certificate, version, Key Vault request id): a retried or duplicate run never
submits the same request twice. A held request is asked about again with retrieve.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import get_run_logger, task

from certlc.ca import Disposition, connector_for
from certlc.renewal import signing_request
from certlc.vault import CertificateSnapshot, PendingCsr
from tasks._policy import PERSIST, RETRY, current_settings, step_key


# Keyed on the Key Vault request, the template and the CA profile: one submission per pending
# CSR; a changed template or CA profile means a new submission. Kept long enough for a CA
# manager's approval to come.
@task(name="submit-to-ca", cache_key_fn=step_key("submit", "pending.request_id", "template", "ca_profile"),
      cache_expiration=timedelta(days=90), **RETRY, **PERSIST)
def submit_to_ca(snapshot: dict[str, Any], pending: dict[str, Any], template: str, ca_profile: str) -> dict[str, Any]:
    settings = current_settings()
    snap = CertificateSnapshot.from_dict(snapshot)
    connector = connector_for(ca_profile, settings)
    disposition = connector.submit(signing_request(snap, PendingCsr.from_dict(pending), template))
    get_run_logger().info("%s/%s: CA profile %s answered %s (CA request %s) %s", snap.vault, snap.name,
                          ca_profile, disposition.status.value, disposition.request_id, disposition.message)
    return disposition.to_dict()


@task(name="retrieve-from-ca", cache_policy=None, **RETRY, **PERSIST)
def retrieve_from_ca(snapshot: dict[str, Any], ca_request_id: str, ca_profile: str) -> dict[str, Any]:
    settings = current_settings()
    snap = CertificateSnapshot.from_dict(snapshot)
    disposition: Disposition = connector_for(ca_profile, settings).retrieve(ca_request_id)
    get_run_logger().info("%s/%s: CA request %s is %s", snap.vault, snap.name, ca_request_id,
                          disposition.status.value)
    return disposition.to_dict()
