"""Step 3: have Key Vault make the CSR (the key is generated inside the vault and stays there).

Cached only within one flow run (a UI retry skips it). Across runs the pending operation in Key
Vault is the memory: ensure_pending_csr reuses it when it matches, so a new run after a crash
finds the same CSR there.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from certlc.clients import certificate_client
from certlc.vault import CertificateSnapshot, PendingCsr, discard_pending, ensure_pending_csr
from tasks._policy import PERSIST, RETRY, WITHIN_RUN, current_settings


@task(name="create-csr", cache_policy=WITHIN_RUN, **RETRY, **PERSIST)
def create_csr(snapshot: dict[str, Any]) -> dict[str, Any]:
    settings = current_settings()
    snap = CertificateSnapshot.from_dict(snapshot)
    pending = ensure_pending_csr(certificate_client(settings.vault(snap.vault), settings), snap)
    if pending.replaced:
        get_run_logger().warning("%s/%s: deleted a pending operation that did not match this renewal: %s",
                                 snap.vault, snap.name, pending.replaced)
    get_run_logger().info(
        "%s/%s: %s pending version (Key Vault request %s)", snap.vault, snap.name,
        "reusing the" if pending.reused else "created a", pending.request_id,
    )
    return pending.to_dict()


@task(name="discard-csr", cache_policy=None, **RETRY, **PERSIST)
def discard_csr(snapshot: dict[str, Any], pending: dict[str, Any]) -> bool:
    """Delete our pending operation (after a denial); True if there was one to delete."""
    settings = current_settings()
    snap = CertificateSnapshot.from_dict(snapshot)
    deleted = discard_pending(certificate_client(settings.vault(snap.vault), settings), snap,
                              PendingCsr.from_dict(pending))
    if deleted:
        get_run_logger().info("%s/%s: deleted pending version (Key Vault request %s)", snap.vault, snap.name,
                              pending["request_id"])
    return deleted
