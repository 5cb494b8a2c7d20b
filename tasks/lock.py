"""One renewal of a certificate at a time, across every worker and host.

A Prefect global concurrency limit of 1 per certificate (created on first use) serialises the
renewals of that certificate; different certificates renew in parallel. Slots are leased, so a
run that crashes frees its slot when the lease runs out. The second of two racing runs then
reads the new version, finds it not due, and stops: one renewal, one new version.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from certlc.errors import TransientError

__all__ = ["certificate_lock", "lock_name"]

# Waiting longer than this for another renewal of the same certificate means something is stuck.
LOCK_TIMEOUT_SECONDS = 900.0


def lock_name(vault: str, name: str) -> str:
    """One lock per certificate whatever the spelling (Key Vault names are case-insensitive); the
    digest keeps ("a", "b-c") and ("a-b", "c") apart."""
    ident = f"{vault}\n{name.lower()}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return "certlc-renew-" + re.sub(r"[^a-z0-9-]", "-", f"{vault}-{name}".lower()) + "-" + digest


@contextmanager
def certificate_lock(vault: str, name: str, lease_seconds: float = 60,
                     timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the renewal lock of one certificate. The holder renews its lease while alive; a
    crashed holder's lease expires after ``lease_seconds``."""
    limit = lock_name(vault, name)
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    held = concurrency(limit, occupy=1, timeout_seconds=timeout, strict=True, lease_duration=lease_seconds,
                       # A short API hiccup while renewing the lease must not kill a renewal
                       # between the CA's answer and the merge.
                       raise_on_lease_renewal_failure=False)
    # Only the acquisition is translated: errors of the renewal itself pass through unchanged.
    release = ExitStack()
    try:
        release.enter_context(held)
    except ConcurrencySlotAcquisitionError as exc:
        raise TransientError(f"{vault}/{name}: cannot take the renewal lock: {exc}", reason="LockUnavailable",
                             vault=vault, certificate=name) from None
    except TimeoutError:
        raise TransientError(f"{vault}/{name}: another renewal of this certificate has held its lock for "
                             f"{timeout:.0f} s", reason="RenewalBusy", vault=vault, certificate=name) from None
    with release:
        yield
