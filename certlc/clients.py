"""The one place Azure SDK clients are built: from configuration, with no emulator branches.

Against Azure and against the local emulator alike, the only differences are the vault URL,
the credential (``DefaultAzureCredential``: a managed identity, a service principal, the
developer's login) and the CA bundle trusted for TLS. Challenge-resource verification stays
on except for loopback vaults, whose auth challenge cannot name a dot-suffix of ``localhost``.
"""

from __future__ import annotations

import threading
from typing import Any

from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.secrets import SecretClient

from certlc.config import Settings, VaultSettings, is_loopback_url
from certlc.errors import ConfigError

__all__ = ["certificate_client", "credential", "reset_clients", "secret_client"]

_lock = threading.Lock()
_credentials: dict[tuple[str | None], TokenCredential] = {}
_clients: dict[tuple[str, str, str | None, str | None], Any] = {}


def credential(settings: Settings) -> TokenCredential:
    """The worker's credential; one per process and identity so tokens are cached."""
    key = (settings.azure.managed_identity_client_id,)
    with _lock:
        if key not in _credentials:
            _credentials[key] = DefaultAzureCredential(
                managed_identity_client_id=settings.azure.managed_identity_client_id,
                exclude_interactive_browser_credential=True,
            )
        return _credentials[key]


def _client_kwargs(vault: VaultSettings, settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    bundle = settings.azure.ca_bundle
    if bundle is not None:
        # Checked here, not when the configuration loads: the emulator creates its bundle on start.
        if not bundle.is_file():
            raise ConfigError(f"azure.ca_bundle: {bundle} is not a readable file (the PEM bundle to trust "
                              "for the vault's TLS)", reason="CaBundleMissing")
        kwargs["connection_verify"] = str(bundle)
    verify = settings.azure.verify_challenge_resource
    if verify is None:
        verify = not is_loopback_url(vault.url)
    kwargs["verify_challenge_resource"] = verify
    return kwargs


def _build(kind: str, factory: Any, vault: VaultSettings, settings: Settings) -> Any:
    key = (kind, vault.url, str(settings.azure.ca_bundle) if settings.azure.ca_bundle else None,
           settings.azure.managed_identity_client_id)
    with _lock:
        client = _clients.get(key)
    if client is None:
        client = factory(vault_url=vault.url, credential=credential(settings), **_client_kwargs(vault, settings))
        with _lock:
            client = _clients.setdefault(key, client)
    return client


def certificate_client(vault: VaultSettings, settings: Settings) -> CertificateClient:
    return _build("certificates", CertificateClient, vault, settings)


def secret_client(vault: VaultSettings, settings: Settings) -> SecretClient:
    return _build("secrets", SecretClient, vault, settings)


def reset_clients() -> None:
    """Forget cached clients and credentials (tests, or after the configuration changed)."""
    with _lock:
        _clients.clear()
        _credentials.clear()
