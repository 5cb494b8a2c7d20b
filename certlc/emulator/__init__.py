"""A local Key Vault for certlc: the certificates/secrets REST API over HTTPS, plus a managed
identity token endpoint, so the official SDK clients and ``DefaultAzureCredential`` work
against it unchanged.

Client configuration (see :class:`EmulatorEndpoints`)::

    os.environ.update(endpoints.environment())      # IDENTITY_ENDPOINT, IDENTITY_HEADER
    credential = DefaultAzureCredential(managed_identity_client_id=endpoints.principals["worker"])
    client = CertificateClient(endpoints.vault_urls["demo"], credential,
                               connection_verify=endpoints.ca_bundle, verify_challenge_resource=False)

Modules: ``server`` (start/stop), ``keyvault`` (routes, challenge auth), ``vault`` (operations),
``store`` (encrypted persistent state), ``pki``/``keys``/``policy`` (X.509 and keys), ``wire``
(JSON shapes), ``identity`` (tokens), ``audit`` (who called what), ``tls`` (local root CA).
"""

from __future__ import annotations

from certlc.emulator.audit import AuditRecord, read_audit_log
from certlc.emulator.server import EmulatorEndpoints, EmulatorHandle, read_endpoints, start_in_thread

__all__ = [
    "AuditRecord",
    "EmulatorEndpoints",
    "EmulatorHandle",
    "read_audit_log",
    "read_endpoints",
    "start_in_thread",
]
