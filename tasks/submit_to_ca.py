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


# The template is part of the key: after a denial for a wrong template, fixing the Template tag
# must lead to a new submission, not to the cached denial.
@task(name="submit-to-ca", cache_key_fn=step_key("submit", "pending.request_id", "template"),
      cache_expiration=timedelta(days=30), **RETRY, **PERSIST)
def submit_to_ca(snapshot: dict[str, Any], pending: dict[str, Any], template: str) -> dict[str, Any]:
    settings = current_settings()
    snap = CertificateSnapshot.from_dict(snapshot)
    vault = settings.vault(snap.vault)
    connector = connector_for(vault.ca_profile, settings)
    disposition = connector.submit(signing_request(snap, PendingCsr.from_dict(pending), template))
    get_run_logger().info("%s/%s: CA profile %s answered %s (CA request %s) %s", snap.vault, snap.name,
                          vault.ca_profile, disposition.status.value, disposition.request_id, disposition.message)
    return disposition.to_dict()


@task(name="retrieve-from-ca", cache_policy=None, **RETRY, **PERSIST)
def retrieve_from_ca(snapshot: dict[str, Any], ca_request_id: str) -> dict[str, Any]:
    settings = current_settings()
    snap = CertificateSnapshot.from_dict(snapshot)
    vault = settings.vault(snap.vault)
    disposition: Disposition = connector_for(vault.ca_profile, settings).retrieve(ca_request_id)
    get_run_logger().info("%s/%s: CA request %s is %s", snap.vault, snap.name, ca_request_id,
                          disposition.status.value)
    return disposition.to_dict()
