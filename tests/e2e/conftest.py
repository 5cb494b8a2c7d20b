"""Fixtures that run the Key Vault emulator in a thread, for any end-to-end test.

- ``emulator``: one emulator per test module (vaults ``demo`` and ``other``, free ports).
- ``emulator_factory``: start more emulators (e.g. on a state dir you keep), stopped at teardown.
- ``emulator_env``: the environment ``DefaultAzureCredential`` needs to reach the emulator's
  managed identity, with every other Azure credential variable removed.
- ``emulator_clients``: ``(CertificateClient, SecretClient)`` for a vault and principal.
- ``emulator_connect``: the same for any emulator's endpoints (e.g. one from the factory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.identity import DefaultAzureCredential
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.secrets import SecretClient

from certlc.config import EmulatorSettings
from certlc.emulator import EmulatorEndpoints, EmulatorHandle, start_in_thread

# Variables that would make DefaultAzureCredential pick another credential before managed
# identity (service principal, workload identity) or another managed-identity flavour.
AZURE_CREDENTIAL_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TOKEN_CREDENTIALS",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
)

EmulatorFactory = Callable[..., EmulatorHandle]
ClientsFactory = Callable[..., tuple[CertificateClient, SecretClient]]
ConnectFactory = Callable[..., tuple[CertificateClient, SecretClient]]


@pytest.fixture
def emulator_factory(tmp_path: Path) -> Iterator[EmulatorFactory]:
    """``start(state_dir=None, **settings)`` -> a running emulator; all stopped at teardown."""
    handles: list[EmulatorHandle] = []

    def start(state_dir: Path | None = None, **settings: Any) -> EmulatorHandle:
        options: dict[str, Any] = {"port": 0, "identity_port": 0, "vaults": ["demo"], **settings}
        handle = start_in_thread(EmulatorSettings(**options), state_dir or tmp_path / f"emulator{len(handles)}")
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    settings = EmulatorSettings(port=0, identity_port=0, vaults=["demo", "other"])
    handle = start_in_thread(settings, tmp_path_factory.mktemp("emulator"))
    yield handle
    handle.stop()


def _use_environment(monkeypatch: pytest.MonkeyPatch, endpoints: EmulatorEndpoints) -> None:
    for name in AZURE_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in endpoints.environment().items():
        monkeypatch.setenv(name, value)


def _client_pair(
    endpoints: EmulatorEndpoints, vault: str, principal: str
) -> tuple[CertificateClient, SecretClient]:
    # The credential must be made after the environment is set: ManagedIdentityCredential
    # picks its flavour (App Service, from IDENTITY_ENDPOINT/IDENTITY_HEADER) in its constructor.
    credential = DefaultAzureCredential(managed_identity_client_id=endpoints.principals[principal])
    kwargs: dict[str, Any] = {"connection_verify": endpoints.ca_bundle, "verify_challenge_resource": False}
    url = endpoints.vault_urls[vault]
    return CertificateClient(url, credential, **kwargs), SecretClient(url, credential, **kwargs)


@pytest.fixture
def emulator_connect(monkeypatch: pytest.MonkeyPatch) -> ConnectFactory:
    """``connect(endpoints, vault="demo", principal="worker")`` -> (CertificateClient, SecretClient).

    Points the environment at that emulator's identity endpoint (undone after the test) and
    builds the official clients exactly as certlc does for a loopback vault.
    """

    def connect(
        endpoints: EmulatorEndpoints, vault: str = "demo", principal: str = "worker"
    ) -> tuple[CertificateClient, SecretClient]:
        _use_environment(monkeypatch, endpoints)
        return _client_pair(endpoints, vault, principal)

    return connect


@pytest.fixture
def emulator_env(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorEndpoints:
    """The module emulator's endpoints, with the environment pointing at its identity endpoint."""
    _use_environment(monkeypatch, emulator.endpoints)
    return emulator.endpoints


@pytest.fixture
def emulator_clients(emulator_env: EmulatorEndpoints) -> ClientsFactory:
    """``clients(vault="demo", principal="worker")`` -> (CertificateClient, SecretClient) on the module emulator."""

    def make(vault: str = "demo", principal: str = "worker") -> tuple[CertificateClient, SecretClient]:
        return _client_pair(emulator_env, vault, principal)

    return make
