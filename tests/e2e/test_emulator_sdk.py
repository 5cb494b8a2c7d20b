"""The Key Vault emulator spoken to by the official SDK clients, unchanged.

``CertificateClient``/``SecretClient`` 4.12 with ``DefaultAzureCredential`` (managed identity
through the emulator's App Service-style token endpoint), ``connection_verify=<local root>``
and ``verify_challenge_resource=False``: nothing else is configured. Raw httpx requests are used
only where the SDK cannot show the wire (the challenge, JSON shapes, the token endpoint).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificateOperation,
    CertificatePolicy,
    KeyUsageType,
    KeyVaultCertificate,
)
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from certlc.emulator import EmulatorEndpoints, EmulatorHandle, read_audit_log, read_endpoints
from certlc.emulator.identity import TokenIssuer
from certlc.emulator.sealing import MasterKey

pytestmark = pytest.mark.e2e

ClientsFactory = Callable[..., tuple[CertificateClient, SecretClient]]
EmulatorFactory = Callable[..., EmulatorHandle]

UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
WRONG_KEY = (
    "The public key of the end-entity certificate in the specified X.509 certificate content does not match "
    "the public part of the specified private key. Please check if certificate is valid"
)
FAST = {"_polling_interval": 0}  # the emulator finishes at once; never sleep between polls


# Helpers ------------------------------------------------------------------------------------------
def ec_policy(issuer: str = "Self", **kw: Any) -> CertificatePolicy:
    options: dict[str, Any] = {"subject": "CN=app.contoso.com", "key_type": "EC", "key_curve_name": "P-256"}
    return CertificatePolicy(issuer_name=issuer, **{**options, **kw})


def spki(key_or_cert: Any) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class ThrowawayCA:
    """A CA made in the test to sign the emulator's CSRs (the role AD CS plays in production)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Throwaway Test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def sign(self, csr: x509.CertificateSigningRequest, days: int = 90, public_key: Any = None) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.cert.subject)
            .public_key(public_key or csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=days))
        )
        for ext in csr.extensions:
            builder = builder.add_extension(ext.value, critical=ext.critical)
        return builder.sign(self.key, hashes.SHA256())

    def der_chain(self, leaf: x509.Certificate) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in (leaf, self.cert)]


def token(endpoints: EmulatorEndpoints, principal: str = "worker") -> str:
    response = httpx.get(
        endpoints.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net",
                "client_id": endpoints.principals[principal]},
        headers={"X-IDENTITY-HEADER": endpoints.identity_header},
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def raw(
    endpoints: EmulatorEndpoints, method: str, path: str, bearer: str | None = None,
    headers: dict[str, str] | None = None, **kw: Any,
) -> httpx.Response:
    """A request to the demo vault without the SDK, trusting the emulator's local root."""
    headers = {**(headers or {}), **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
    url = endpoints.vault_urls["demo"] + path
    tls = ssl.create_default_context(cafile=endpoints.ca_bundle)
    return httpx.request(method, url, params={"api-version": "2026-04-01"}, headers=headers, verify=tls, **kw)


def self_signed(key: Any, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(key, hashes.SHA256())
    )


# Authentication --------------------------------------------------------------------------------------
def test_a_bodiless_unauthenticated_post_gets_the_challenge(emulator: EmulatorHandle) -> None:
    endpoints = emulator.endpoints
    response = raw(endpoints, "POST", "/certificates/anything/create", headers={"Content-Length": "0"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer authorization="https://login.windows.net/00000000-0000-0000-0000-0000000ce1c0", '
        'resource="https://vault.azure.net"'
    )
    assert response.json() == {
        "error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}
    }
    # A body that would be refused is never looked at before authentication.
    assert raw(endpoints, "POST", "/certificates/bad_name/create", content=b"{not json").status_code == 401


def test_a_forged_or_expired_token_is_refused(emulator: EmulatorHandle) -> None:
    endpoints = emulator.endpoints
    forged = raw(endpoints, "GET", "/certificates", bearer="gAAAAAforged")
    assert forged.status_code == 401 and "WWW-Authenticate" in forged.headers
    issuer = TokenIssuer(MasterKey.load_or_create(emulator.state_dir).fernet("tokens"), {"worker": endpoints.principals["worker"]})
    principal = issuer.principal_for(None)
    assert principal is not None
    expired, _ = issuer.issue(principal, "https://vault.azure.net", lifetime=-1)
    response = raw(endpoints, "GET", "/certificates", bearer=expired)
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]
    other_audience, _ = issuer.issue(principal, "https://storage.azure.com")
    assert raw(endpoints, "GET", "/certificates", bearer=other_audience).status_code == 401
    assert raw(endpoints, "GET", "/certificates", bearer=token(endpoints)).status_code == 200


def test_the_identity_endpoint_refuses_a_wrong_header_and_an_unknown_client(emulator: EmulatorHandle) -> None:
    endpoints = emulator.endpoints
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}
    wrong = httpx.get(endpoints.identity_endpoint, params=params, headers={"X-IDENTITY-HEADER": "guess"})
    assert wrong.status_code == 401
    unknown = httpx.get(endpoints.identity_endpoint, params={**params, "client_id": "11111111-2222-3333-4444-555555555555"},
                        headers={"X-IDENTITY-HEADER": endpoints.identity_header})
    assert unknown.status_code == 400 and "client id" in unknown.json()["message"]
    default = httpx.get(endpoints.identity_endpoint, params=params, headers={"X-IDENTITY-HEADER": endpoints.identity_header})
    body = default.json()
    assert default.status_code == 200 and body["token_type"] == "Bearer" and body["resource"] == params["resource"]
    assert body["client_id"] == endpoints.principals["worker"]  # no client_id: the first principal
    assert int(body["expires_on"]) > time.time() + 600


# Create ------------------------------------------------------------------------------------------------
def test_create_self_signed_returns_a_complete_certificate(emulator_clients: ClientsFactory) -> None:
    certificates, secrets = emulator_clients()
    policy = ec_policy(san_dns_names=["app.contoso.com"], validity_in_months=6)
    cert = certificates.begin_create_certificate("self-ec", policy, tags={"Owner": "ops"}, **FAST).result()

    assert isinstance(cert, KeyVaultCertificate)
    vault_url = certificates.vault_url
    assert cert.id == f"{vault_url}/certificates/self-ec/{cert.properties.version}"
    assert cert.key_id == f"{vault_url}/keys/self-ec/{cert.properties.version}"
    assert cert.secret_id == f"{vault_url}/secrets/self-ec/{cert.properties.version}"
    parsed = x509.load_der_x509_certificate(bytes(cert.cer))
    assert cert.properties.x509_thumbprint == hashlib.sha1(bytes(cert.cer)).digest()  # noqa: S324
    assert parsed.subject.rfc4514_string() == "CN=app.contoso.com"
    assert cert.properties.expires_on == parsed.not_valid_after_utc
    assert cert.properties.tags == {"Owner": "ops"} and cert.properties.enabled
    assert cert.properties.recovery_level == "CustomizedRecoverable+Purgeable"
    assert cert.policy.issuer_name == "Self" and cert.policy.validity_in_months == 6
    assert cert.policy.enhanced_key_usage == ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]  # defaults echoed
    assert cert.policy.content_type == CertificateContentType.pkcs12

    secret = secrets.get_secret("self-ec")
    key, leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), b"")
    assert leaf == parsed and key is not None and spki(key) == spki(parsed)
    assert secret.properties.managed and secret.properties.key_id == cert.key_id
    assert secret.properties.version == cert.properties.version


def test_bundles_on_the_wire_have_integer_times_and_echoed_defaults(emulator_clients: ClientsFactory,
                                                                    emulator_env: EmulatorEndpoints) -> None:
    certificates, _ = emulator_clients()
    certificates.begin_create_certificate("wire-shape", ec_policy(), **FAST).wait()
    bundle = raw(emulator_env, "GET", "/certificates/wire-shape/", bearer=token(emulator_env)).json()
    attributes = bundle["attributes"]
    assert all(isinstance(attributes[k], int) for k in ("nbf", "exp", "created", "updated"))
    assert attributes["recoverableDays"] == 7
    assert "=" not in bundle["x5t"] and "+" not in bundle["x5t"]
    policy = bundle["policy"]
    assert policy["id"].endswith("/certificates/wire-shape/policy")
    assert policy["x509_props"]["basic_constraints"] == {"ca": False}
    assert policy["x509_props"]["key_usage"] == ["digitalSignature", "keyEncipherment"]
    assert policy["lifetime_actions"] == [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}]
    assert policy["issuer"] == {"name": "Self", "cert_transparency": False}
    assert policy["key_props"] == {"exportable": True, "kty": "EC", "key_size": 256, "crv": "P-256", "reuse_key": False}


def test_unknown_issuer_csr_sign_and_merge(emulator_clients: ClientsFactory) -> None:
    certificates, secrets = emulator_clients()
    policy = CertificatePolicy(
        issuer_name="Unknown", subject="CN=web01.contoso.com, O=Contoso", key_type="RSA", key_size=2048,
        san_dns_names=["web01.contoso.com", "web01"], san_ip_addresses=["10.0.0.7", "2001:db8::1"],
        san_uris=["spiffe://contoso/web01"], san_emails=["ops@contoso.com"], san_user_principal_names=["web01@contoso.com"],
        enhanced_key_usage=["1.3.6.1.5.5.7.3.1"], key_usage=[KeyUsageType.digital_signature, KeyUsageType.key_encipherment],
    )
    operation = certificates.begin_create_certificate("web01", policy, tags={"Template": "WebServer"}).result()
    assert isinstance(operation, CertificateOperation)
    assert operation.status == "inProgress" and operation.issuer_name == "Unknown"

    csr = x509.load_der_x509_csr(bytes(operation.csr))
    assert csr.is_signature_valid and isinstance(csr.public_key(), rsa.RSAPublicKey)
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web01.contoso.com"
    assert csr.subject.rfc4514_string() == "CN=web01.contoso.com,O=Contoso"
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web01.contoso.com", "web01"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("2001:db8::1")]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://contoso/web01"]
    assert sans.get_values_for_type(x509.RFC822Name) == ["ops@contoso.com"]
    assert [o.type_id for o in sans.get_values_for_type(x509.OtherName)] == [UPN_OID]
    key_usage = csr.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical and key_usage.value.digital_signature and key_usage.value.key_encipherment
    assert list(csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    # While pending, the first version exists only as a disabled placeholder without a certificate.
    placeholder = certificates.get_certificate("web01")
    assert placeholder.properties.enabled is False and placeholder.cer is None
    with pytest.raises(ResourceExistsError):  # 409: an operation is in progress
        certificates.begin_create_certificate("web01", policy)

    ca = ThrowawayCA()
    leaf = ca.sign(csr)
    merged = certificates.merge_certificate("web01", ca.der_chain(leaf))
    assert bytes(merged.cer) == leaf.public_bytes(serialization.Encoding.DER)
    assert merged.properties.version == placeholder.properties.version  # the reserved version id
    assert merged.properties.enabled and merged.properties.tags == {"Template": "WebServer"}
    assert merged.properties.not_before == leaf.not_valid_before_utc.replace(microsecond=0)
    assert merged.properties.expires_on == leaf.not_valid_after_utc.replace(microsecond=0)

    done = certificates.get_certificate_operation("web01")
    assert done.status == "completed" and done.target == f"{certificates.vault_url}/certificates/web01"

    key, cert, chain = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret("web01").value), None)
    assert cert == leaf and chain == [ca.cert]
    assert key is not None and spki(key) == spki(leaf)  # the key made inside the vault


def test_merge_refuses_a_certificate_for_another_key(emulator_clients: ClientsFactory) -> None:
    certificates, _ = emulator_clients()
    operation = certificates.begin_create_certificate("wrong-key", ec_policy("Unknown")).result()
    csr = x509.load_der_x509_csr(bytes(operation.csr))
    ca = ThrowawayCA()
    stranger = ca.sign(csr, public_key=ec.generate_private_key(ec.SECP256R1()).public_key())

    with pytest.raises(HttpResponseError) as refused:
        certificates.merge_certificate("wrong-key", ca.der_chain(stranger))
    assert refused.value.status_code == 400
    assert refused.value.error is not None and refused.value.error.code == "BadParameter"
    assert WRONG_KEY in str(refused.value)

    with pytest.raises(HttpResponseError) as garbage:
        certificates.merge_certificate("wrong-key", [b"not a certificate"])
    assert garbage.value.status_code == 400
    assert certificates.get_certificate_operation("wrong-key").status == "inProgress"  # still mergeable

    leaf = ca.sign(csr)  # the leaf may come anywhere in x5c: the emulator finds it by its key
    merged = certificates.merge_certificate("wrong-key", list(reversed(ca.der_chain(leaf))))
    assert bytes(merged.cer) == leaf.public_bytes(serialization.Encoding.DER)


# Import --------------------------------------------------------------------------------------------------
def test_import_a_password_protected_pfx(emulator_clients: ClientsFactory) -> None:
    certificates, secrets = emulator_clients()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, "imported.contoso.com")
    pfx = pkcs12.serialize_key_and_certificates(b"x", key, cert, None, serialization.BestAvailableEncryption(b"s3cret"))

    imported = certificates.import_certificate("imported-pfx", pfx, password="s3cret", tags={"Source": "pfx"})
    assert bytes(imported.cer) == cert.public_bytes(serialization.Encoding.DER)
    assert imported.policy.san_dns_names == ["imported.contoso.com"] and imported.policy.key_type == "EC"
    value = base64.b64decode(secrets.get_secret("imported-pfx").value)
    exported_key, exported_cert, _ = pkcs12.load_key_and_certificates(value, b"")  # blank password
    assert exported_cert == cert and exported_key is not None and spki(exported_key) == spki(key)

    with pytest.raises(HttpResponseError) as wrong_password:
        certificates.import_certificate("imported-pfx-2", pfx, password="guess")
    assert wrong_password.value.status_code == 400


def test_import_pem_with_a_pem_policy_gives_a_pem_secret(emulator_clients: ClientsFactory) -> None:
    certificates, secrets = emulator_clients()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(key, "pem.contoso.com")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)
    policy = CertificatePolicy(issuer_name="Unknown", subject="CN=pem.contoso.com", content_type=CertificateContentType.pem)

    imported = certificates.import_certificate("imported-pem", pem, policy=policy)
    assert imported.policy.content_type == CertificateContentType.pem
    secret = secrets.get_secret("imported-pem")
    assert secret.properties.content_type == "application/x-pem-file"
    assert secret.value is not None and secret.value.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert secret.value.endswith("-----END CERTIFICATE-----\n")
    loaded = serialization.load_pem_private_key(secret.value.encode(), None)
    assert spki(loaded) == spki(cert)
    assert x509.load_pem_x509_certificate(secret.value.encode()) == cert


# Listing, versions, properties, policy ---------------------------------------------------------------------
def test_lists_page_with_maxresults_and_versions_accumulate(emulator_clients: ClientsFactory) -> None:
    certificates, _ = emulator_clients(vault="other")
    names = [f"bulk-{i:02d}" for i in range(30)]
    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent creates: the store must stay consistent
        list(pool.map(lambda n: certificates.begin_create_certificate(n, ec_policy(), **FAST).result(), names))
    certificates.begin_create_certificate("bulk-pending", ec_policy("Unknown")).result()

    pages = [list(page) for page in certificates.list_properties_of_certificates(max_page_size=7).by_page()]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert sorted(p.name for page in pages for p in page) == names
    assert len(list(certificates.list_properties_of_certificates())) == 30  # default page size 25
    with_pending = {p.name for p in certificates.list_properties_of_certificates(include_pending=True)}
    assert "bulk-pending" in with_pending

    for _ in range(2):
        newest = certificates.begin_create_certificate("bulk-00", ec_policy(), **FAST).result()
    versions = list(certificates.list_properties_of_certificate_versions("bulk-00", max_page_size=1))
    assert len({v.version for v in versions}) == 3 and all(v.name == "bulk-00" for v in versions)
    assert certificates.get_certificate("bulk-00").properties.version == newest.properties.version


def test_reuse_key_keeps_the_key_across_versions(emulator_clients: ClientsFactory) -> None:
    certificates, _ = emulator_clients()
    first = certificates.begin_create_certificate("reused", ec_policy(reuse_key=True)).result()
    second = certificates.begin_create_certificate("reused", ec_policy(reuse_key=True)).result()
    fresh = certificates.begin_create_certificate("reused", ec_policy(reuse_key=False)).result()
    keys = [spki(x509.load_der_x509_certificate(bytes(c.cer))) for c in (first, second, fresh)]
    assert second.properties.version != first.properties.version
    assert keys[0] == keys[1] != keys[2]


def test_update_tags_and_enabled_on_latest_and_on_a_version(emulator_clients: ClientsFactory) -> None:
    certificates, secrets = emulator_clients()
    first = certificates.begin_create_certificate("tagged", ec_policy(), **FAST).result()
    second = certificates.begin_create_certificate("tagged", ec_policy(), **FAST).result()

    updated = certificates.update_certificate_properties("tagged", tags={"Recipient": "ops@contoso.com"})
    assert updated.properties.version == second.properties.version
    assert updated.properties.tags == {"Recipient": "ops@contoso.com"}
    assert certificates.get_certificate("tagged").properties.tags == {"Recipient": "ops@contoso.com"}

    certificates.update_certificate_properties("tagged", first.properties.version, enabled=False)
    assert certificates.get_certificate_version("tagged", first.properties.version).properties.enabled is False
    with pytest.raises(HttpResponseError) as disabled:
        secrets.get_secret("tagged", first.properties.version)
    assert disabled.value.status_code == 403


def test_policy_get_and_update_shape_the_next_csr(emulator_clients: ClientsFactory) -> None:
    certificates, _ = emulator_clients()
    certificates.begin_create_certificate("policy-cert", ec_policy(), **FAST).wait()
    policy = certificates.get_certificate_policy("policy-cert")
    assert policy.subject == "CN=app.contoso.com" and policy.key_curve_name == "P-256"

    wider = ec_policy("Unknown", san_dns_names=["app.contoso.com", "api.contoso.com"])
    updated = certificates.update_certificate_policy("policy-cert", wider)
    assert updated.issuer_name == "Unknown" and updated.san_dns_names == ["app.contoso.com", "api.contoso.com"]

    # Renewal the certlc way: send the stored policy back so SANs and EKUs survive.
    operation = certificates.begin_create_certificate("policy-cert", certificates.get_certificate_policy("policy-cert")).result()
    csr = x509.load_der_x509_csr(bytes(operation.csr))
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["app.contoso.com", "api.contoso.com"]


def test_cancel_then_delete_a_pending_operation(emulator_clients: ClientsFactory) -> None:
    certificates, _ = emulator_clients()
    current = certificates.begin_create_certificate("renewing", ec_policy(), **FAST).result()
    certificates.begin_create_certificate("renewing", ec_policy("Unknown")).result()

    cancelled = certificates.cancel_certificate_operation("renewing")
    assert cancelled.cancellation_requested is True
    deleted = certificates.delete_certificate_operation("renewing")
    assert deleted.id == cancelled.id
    with pytest.raises(ResourceNotFoundError) as gone:
        certificates.get_certificate_operation("renewing")
    assert gone.value.error is not None and gone.value.error.code == "PendingCertificateNotFound"
    # The current version was never touched by the abandoned renewal.
    assert certificates.get_certificate("renewing").properties.version == current.properties.version

    certificates.begin_create_certificate("never-merged", ec_policy("Unknown")).result()
    certificates.delete_certificate_operation("never-merged")
    with pytest.raises(ResourceNotFoundError):
        certificates.get_certificate("never-merged")


def test_errors_use_key_vault_statuses_and_codes(emulator_clients: ClientsFactory) -> None:
    certificates, secrets = emulator_clients()
    with pytest.raises(ResourceNotFoundError) as missing:
        certificates.get_certificate("does-not-exist")
    assert missing.value.error is not None and missing.value.error.code == "CertificateNotFound"
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret("does-not-exist")
    with pytest.raises(HttpResponseError) as bad_name:
        certificates.begin_create_certificate("bad_name", ec_policy())
    assert bad_name.value.status_code == 400


def test_delete_recover_and_purge_through_the_sdk_pollers(emulator_clients: ClientsFactory) -> None:
    certificates, _ = emulator_clients()
    created = certificates.begin_create_certificate("doomed", ec_policy(), **FAST).result()

    poller = certificates.begin_delete_certificate("doomed", **FAST)
    poller.wait()
    deleted = poller.result()
    assert deleted.recovery_id == f"{certificates.vault_url}/deletedcertificates/doomed"
    assert deleted.deleted_on is not None and deleted.scheduled_purge_date is not None
    assert certificates.get_deleted_certificate("doomed").properties.version == created.properties.version
    assert "doomed" in {d.name for d in certificates.list_deleted_certificates()}
    with pytest.raises(ResourceNotFoundError):
        certificates.get_certificate("doomed")
    with pytest.raises(ResourceExistsError):  # the name is held while the certificate is recoverable
        certificates.begin_create_certificate("doomed", ec_policy())

    recover = certificates.begin_recover_deleted_certificate("doomed", **FAST)
    recover.wait()
    assert certificates.get_certificate("doomed").properties.version == created.properties.version

    certificates.begin_delete_certificate("doomed", **FAST).wait()
    certificates.purge_deleted_certificate("doomed")
    with pytest.raises(ResourceNotFoundError):
        certificates.get_deleted_certificate("doomed")
    certificates.begin_create_certificate("doomed", ec_policy(), **FAST).wait()  # the name is free again


# State, keys at rest, audit ---------------------------------------------------------------------------------
def test_state_survives_a_restart_and_keys_are_never_stored_in_clear(
    emulator_factory: EmulatorFactory, emulator_connect: ClientsFactory, tmp_path: Path
) -> None:
    state = tmp_path / "kept"
    first = emulator_factory(state)
    certificates, secrets = emulator_connect(first.endpoints)
    rsa_cert = certificates.begin_create_certificate(
        "kept-rsa", CertificatePolicy(issuer_name="Self", subject="CN=kept", key_type="RSA", key_size=2048),
        tags={"Recipient": "ops@contoso.com"}, **FAST,
    ).result()
    pending = certificates.begin_create_certificate("kept-pending", ec_policy("Unknown")).result()
    certificates.begin_create_certificate("kept-deleted", ec_policy(), **FAST).wait()
    certificates.begin_delete_certificate("kept-deleted", **FAST).wait()
    key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret("kept-rsa").value), None)
    assert key is not None
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    first.stop()

    on_disk = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())
    for needle in (b"BEGIN PRIVATE KEY", b"BEGIN RSA PRIVATE KEY", b"BEGIN EC PRIVATE KEY", key_der[-64:],
                   base64.b64encode(key_der)[-64:]):
        assert needle not in on_disk

    second = emulator_factory(state)
    certificates, secrets = emulator_connect(second.endpoints)
    again = certificates.get_certificate("kept-rsa")
    assert again.properties.version == rsa_cert.properties.version and bytes(again.cer) == bytes(rsa_cert.cer)
    assert again.properties.tags == {"Recipient": "ops@contoso.com"}
    assert bytes(certificates.get_certificate_operation("kept-pending").csr) == bytes(pending.csr)
    assert certificates.get_deleted_certificate("kept-deleted").recovery_id is not None
    restored_key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret("kept-rsa").value), None)
    assert restored_key is not None
    assert restored_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) == key_der
    assert read_endpoints(state).vault_urls == second.endpoints.vault_urls
    assert os.stat(state / "endpoints.json").st_mode & 0o077 == 0
    assert os.stat(state / "master.key").st_mode & 0o077 == 0


def test_the_audit_log_names_each_calling_principal(emulator: EmulatorHandle, emulator_clients: ClientsFactory) -> None:
    worker, _ = emulator_clients(principal="worker")
    _, agent_secrets = emulator_clients(principal="agent")
    worker.begin_create_certificate("audited", ec_policy(), **FAST).wait()
    agent_secrets.get_secret("audited")
    assert raw(emulator.endpoints, "GET", "/certificates/audited/", bearer="forged").status_code == 401

    records = read_audit_log(emulator.state_dir)
    mine = [r for r in records if "/audited" in r.path]
    assert {("worker", "POST", "/certificates/audited/create", 202), ("agent", "GET", "/secrets/audited/", 200)} <= {
        (r.principal, r.method, r.path, r.status) for r in mine
    }
    assert ("worker", emulator.endpoints.principals["worker"]) in {(r.principal, r.client_id) for r in mine}
    assert any(r.principal is None and r.status == 401 for r in mine)
    assert all(r.vault == "demo" for r in mine)
    raw_log = (emulator.state_dir / "audit.jsonl").read_text()
    assert token(emulator.endpoints) not in raw_log and "api-version" not in raw_log and "forged" not in raw_log


# CLI -----------------------------------------------------------------------------------------------------------
CLI = [sys.executable, "-c", "from certlc.cli import main; main()"]


def test_cli_refuses_a_bad_config_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[emulator]\nport = 'not a number'\n")
    proc = subprocess.run([*CLI, "emulator", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("certlc: error: ") and "emulator.port" in lines[0]


def test_cli_runs_in_the_foreground_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "cli-state"
    proc = subprocess.Popen([*CLI, "emulator", "--state-dir", str(state), "--port", "0", "--identity-port", "0",
                             "--vault", "one", "two"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (state / "endpoints.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        endpoints = read_endpoints(state)
        assert set(endpoints.vault_urls) == {"one", "two"}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert endpoints.vault_urls["one"] in out and f"IDENTITY_ENDPOINT={endpoints.identity_endpoint}" in out
    assert endpoints.ca_bundle in out and endpoints.identity_header not in out + err
    assert not (state / "endpoints.json").exists()
    assert json.loads(json.dumps(endpoints.__dict__))["principals"] == endpoints.principals
