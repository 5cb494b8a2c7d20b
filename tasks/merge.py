"""Step 5: verify what the CA returned, then merge it into Key Vault and re-apply the tags."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from typing import Any

from prefect import get_run_logger, task

from certlc.ca import connector_for
from certlc.clients import certificate_client
from certlc.vault import CertificateSnapshot, PendingCsr, merge_issued
from certlc.verify import verify_issued
from tasks._policy import PERSIST, RETRY, current_settings, step_key


@task(name="merge", cache_key_fn=step_key("merge", "pending.request_id"),
      cache_expiration=timedelta(days=30), **RETRY, **PERSIST)
def merge(snapshot: dict[str, Any], pending: dict[str, Any], disposition: dict[str, Any],
          ca_profile: str | None = None) -> dict[str, Any]:
    settings = current_settings()
    snap = CertificateSnapshot.from_dict(snapshot)
    pend = PendingCsr.from_dict(pending)
    # ACME CAs write the subject from the validated names; AD CS, cfssl and the dev CA keep the CSR's.
    connector = connector_for(ca_profile, settings) if ca_profile else None
    chain = verify_issued(
        disposition["certificate_pem"], disposition.get("chain_pem") or [], pend.csr_pem, snap,
        skew=dt.timedelta(seconds=settings.renewal.skew_seconds),
        subject_from_names=bool(getattr(connector, "subject_from_names", False)),
    )
    result = merge_issued(certificate_client(settings.vault(snap.vault), settings), snap, pend, chain)
    get_run_logger().info("%s/%s: %s version %s, thumbprint %s, expires %s", snap.vault, snap.name,
                          "found already merged" if result.already_merged else "merged new",
                          result.version, result.thumbprint, result.not_after)
    return result.to_dict()
