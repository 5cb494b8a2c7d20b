"""A local Key Vault for certlc: the certificates/secrets REST API over HTTPS, plus a managed
identity token endpoint, so the official SDK clients and ``DefaultAzureCredential`` work
against it unchanged.

Client configuration (see :class:`EmulatorEndpoints`)::

    os.environ.update(endpoints.environment())      # IDENTITY_ENDPOINT, IDENTITY_HEADER
    credential = DefaultAzureCredential(managed_identity_client_id=endpoints.principals["worker"])
    client = CertificateClient(endpoints.vault_urls["demo"], credential,
                               connection_verify=endpoints.ca_bundle, verify_challenge_resource=False)

Event Grid: with ``emulator.subscriptions`` configured, the emulator publishes Key Vault's
certificate events (NewVersionCreated, NearExpiry, Expired) to webhooks and storage queues.
Shift its clock and watch deliveries through the admin helpers (``certlc.emulator.admin``)::

    set_clock_offset(state_dir, "25d"); get_event_stats(state_dir); set_events_enabled(state_dir, False)

Modules: ``server`` (start/stop), ``keyvault`` (routes, challenge auth), ``vault`` (operations),
``store`` (encrypted persistent state), ``pki``/``keys``/``policy`` (X.509 and keys), ``wire``
(JSON shapes), ``identity`` (tokens), ``audit`` (who called what), ``tls`` (local root CA);
events: ``clock`` (offset clock), ``events`` (envelopes), ``expiry`` (what is due, fired once),
``publisher`` (scan and fan-out), ``outbox`` (pending deliveries), ``delivery`` (retries,
dead letters), ``senders`` (webhook, queue), ``retry``, ``deadletter``, ``admin_api``/``admin``.
"""

from __future__ import annotations

from certlc.emulator.admin import get_clock, get_event_stats, scan_events, set_clock_offset, set_events_enabled
from certlc.emulator.audit import AuditRecord, read_audit_log
from certlc.emulator.clock import EmulatorClock
from certlc.emulator.server import EmulatorEndpoints, EmulatorHandle, read_endpoints, start_in_thread

__all__ = [
    "AuditRecord",
    "EmulatorClock",
    "EmulatorEndpoints",
    "EmulatorHandle",
    "get_clock",
    "get_event_stats",
    "read_audit_log",
    "read_endpoints",
    "scan_events",
    "set_clock_offset",
    "set_events_enabled",
    "start_in_thread",
]
