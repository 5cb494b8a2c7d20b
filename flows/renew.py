"""Renew one certificate: the seven steps of DESIGN §4, in order."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from certlc.ca import Disposition, DispositionStatus
from certlc.denials import Denial, denial_log, denial_message
from certlc.drain import Alert
from certlc.errors import CertlcError, TerminalError
from certlc.renewal import Outcome
from certlc.vault import CertificateSnapshot
from certlc.verify import REFUSED_RESPONSE
from tasks._policy import current_settings, stored
from tasks.alert import raise_alert
from tasks.create_csr import create_csr, discard_csr
from tasks.denial import record_denial
from tasks.fetch_event import fetch_event
from tasks.lock import certificate_lock
from tasks.log_outcome import log_outcome
from tasks.merge import merge
from tasks.notify import notify
from tasks.read_certificate import read_certificate
from tasks.submit_to_ca import retrieve_from_ca, submit_to_ca


def _outcome_for(snapshot: CertificateSnapshot, template: str, pending: dict[str, Any],
                 disposition: Disposition) -> Outcome:
    base = Outcome(vault=snapshot.vault, name=snapshot.name, outcome="Pending", reason=disposition.reason,
                   message=disposition.message, old_version=snapshot.version,
                   old_thumbprint=snapshot.thumbprint, old_not_after=snapshot.not_after, template=template,
                   ca_request_id=disposition.request_id, kv_request_id=pending["request_id"])
    if disposition.status is DispositionStatus.DENIED:
        base.outcome = "Denied"
    return base


# JSON results, also for a failure: never pickles in result storage.
@flow(name="renew-certificate", flow_run_name="renew-{vault}-{name}", validate_parameters=True, result_serializer="json")
def renew_certificate(vault: str, name: str, event_id: str | None = None, force: bool = False,
                      event: dict[str, Any] | None = None) -> dict[str, Any]:
    """Renew certificate ``name`` in ``vault`` through its CA if it is due (or ``force``, or
    ``event`` is Key Vault's near-expiry event for the current version); returns the outcome."""
    with contextlib.ExitStack() as held:
        try:
            request = stored(fetch_event)(vault, name, event_id, event)
            # One renewal of a certificate at a time: a racing duplicate waits, then finds it not due.
            held.enter_context(certificate_lock(request["vault"], request["name"],
                                                lease_seconds=current_settings().renewal.lock_lease_seconds))
        except CertlcError as exc:
            _report_failure(vault, name, exc, None, None)
            raise
        return _renew(request, force)


def _report_failure(vault: str, name: str, exc: CertlcError, snapshot: CertificateSnapshot | None,
                    template: str | None) -> None:
    get_run_logger().error("%s/%s: renewal failed (%s): %s", vault, name, exc.reason, exc.message)
    outcome = Outcome(vault=vault, name=name, outcome="Failed", reason=exc.reason, message=exc.message,
                      old_version=snapshot.version if snapshot else None,
                      old_thumbprint=snapshot.thumbprint if snapshot else None,
                      old_not_after=snapshot.not_after if snapshot else None, template=template)
    if snapshot is not None:
        _tell(outcome, snapshot, None)
    stored(log_outcome)(outcome.to_dict())


def _tell(outcome: Outcome, snapshot: CertificateSnapshot, ca_profile: str | None) -> None:
    """Notify the owners. A notice that cannot be delivered (after the task's retries) never
    fails the renewal: it is an operator alert instead."""
    try:
        stored(notify)(outcome.to_dict(), snapshot.tag(current_settings().renewal.recipient_tag), ca_profile)
    except Exception as exc:
        reason = getattr(exc, "reason", type(exc).__name__)
        summary = (f"{snapshot.vault}/{snapshot.name}: the owners could not be told that it {outcome.outcome} "
                   f"({reason}: {getattr(exc, 'message', '')})")
        raise_alert(asdict(Alert("NotificationFailed", summary, {"vault": snapshot.vault, "certificate": snapshot.name,
                                                                 "outcome": outcome.outcome, "reason": reason})),
                    f"certlc.certificate.{snapshot.vault}.{snapshot.name}")


def _held_back(snapshot: CertificateSnapshot, template: str, denial: Denial, window: dt.timedelta) -> dict[str, Any]:
    """A renewal not attempted because the CA denied it, or its answer was refused, recently."""
    message = denial_message(denial, window)
    get_run_logger().warning("%s/%s: not submitted: %s", snapshot.vault, snapshot.name, message)
    denied = denial.kind == "denied"
    outcome = Outcome(vault=snapshot.vault, name=snapshot.name, outcome="Denied" if denied else "Failed",
                      reason="DeniedBefore" if denied else "ResponseRefusedBefore", message=message,
                      old_version=snapshot.version, old_thumbprint=snapshot.thumbprint,
                      old_not_after=snapshot.not_after, template=template,
                      ca_request_id=denial.ca_request_id or None, kv_request_id=denial.kv_request_id or None)
    stored(log_outcome)(outcome.to_dict())
    return outcome.to_dict()


def _renew(request: dict[str, Any], force: bool) -> dict[str, Any]:
    logger = get_run_logger()
    try:
        current = stored(read_certificate)(request)
    except CertlcError as exc:
        _report_failure(request["vault"], request["name"], exc, None, None)
        raise
    snapshot = CertificateSnapshot.from_dict(current["snapshot"])
    template = current["template"]
    if not current["due"] and not force:
        logger.info("%s/%s: not due (%s; expires %s): nothing to do", snapshot.vault, snapshot.name,
                    current["due_reason"], snapshot.not_after)
        return Outcome(vault=snapshot.vault, name=snapshot.name, outcome="NotDue", reason=current["due_reason"],
                       old_version=snapshot.version, old_thumbprint=snapshot.thumbprint,
                       old_not_after=snapshot.not_after, template=template).to_dict()
    window = dt.timedelta(hours=current_settings().renewal.denied_retry_hours)
    if current.get("denied_before") and not force:
        # Denied recently for this very version, template and CA: the owners were told then.
        # Asking again now would only repeat the denial (and the e-mail); the log says why not.
        return _held_back(snapshot, template, Denial.from_dict(current["denied_before"]), window)
    try:
        pending = stored(create_csr)(current["snapshot"])
        refusals = denial_log(current_settings().results_path)
        refused = refusals.find(snapshot.vault, snapshot.name, snapshot.version, template, current["ca_profile"],
                                kind="refused", kv_request_id=pending["request_id"])
        if refused is not None and force:
            # Start over: the cached submission answered this CSR, so a new CSR means a new one.
            stored(discard_csr)(current["snapshot"], pending)
            refusals.forget(refused)
            pending = stored(create_csr).with_options(refresh_cache=True)(current["snapshot"])
        elif refused is not None and refused.retry_at(window) > dt.datetime.now(dt.UTC):
            return _held_back(snapshot, template, refused, window)
        disposition = Disposition.from_dict(
            stored(submit_to_ca)(current["snapshot"], pending, template, current["ca_profile"]))
        if disposition.status is DispositionStatus.PENDING:
            # Held for a CA manager: ask again now (it may have been approved since the first
            # submission); otherwise the next sweep asks again.
            disposition = Disposition.from_dict(
                stored(retrieve_from_ca)(current["snapshot"], disposition.request_id, current["ca_profile"]))
        if disposition.status is DispositionStatus.DENIED:
            # Leave the vault as it was: the next attempt (after the template, the tag or the CA
            # is fixed) starts from a fresh CSR, and so from a fresh CA submission.
            stored(discard_csr)(current["snapshot"], pending)
            stored(record_denial)(current["snapshot"], template, current["ca_profile"], disposition.to_dict())
        if disposition.status is not DispositionStatus.ISSUED:
            outcome = _outcome_for(snapshot, template, pending, disposition)
        else:
            try:
                merged = stored(merge)(current["snapshot"], pending, disposition.to_dict(), current["ca_profile"])
            except TerminalError as exc:
                if exc.reason in REFUSED_RESPONSE:  # keep the pending operation; tell once per window
                    stored(record_denial)(current["snapshot"], template, current["ca_profile"],
                                          {"request_id": disposition.request_id, "message": exc.message},
                                          "refused", pending["request_id"])
                raise
            outcome = Outcome(
                vault=snapshot.vault, name=snapshot.name,
                outcome="AlreadyRenewed" if merged["already_merged"] else "Renewed",
                reason="Issued", message=disposition.message, old_version=snapshot.version,
                new_version=merged["version"], old_thumbprint=snapshot.thumbprint,
                new_thumbprint=merged["thumbprint"], old_not_after=snapshot.not_after,
                new_not_after=merged["not_after"], template=template, ca_request_id=disposition.request_id,
                kv_request_id=pending["request_id"],
            )
    except CertlcError as exc:
        _report_failure(snapshot.vault, snapshot.name, exc, snapshot, template)
        raise
    _tell(outcome, snapshot, current["ca_profile"])
    stored(log_outcome)(outcome.to_dict())
    return outcome.to_dict()
