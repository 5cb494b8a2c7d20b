"""The ACME connector without servers: options, error mapping through a fake ``ClientV2``, chain
selection on real chains, and each solver's present/cleanup (the responder over real HTTP, the
RFC 2136 message parsed back by dnspython, Azure DNS through a recording transport)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import httpx
import pytest
import requests
from acme import challenges, messages
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certlc.ca import DispositionStatus, SigningRequest, connector_for
from certlc.ca import acme as acme_module
from certlc.ca.acme import AcmeConnector, ExternalAccount, select_chain, split_pem
from certlc.ca.acme_solvers import (
    TSIG_ALGORITHMS,
    AzureDnsSolver,
    Challenge,
    HttpResponderSolver,
    Rfc2136Solver,
    WebrootSolver,
    txt_update,
)
from certlc.config import load_settings
from certlc.errors import ConfigError, TerminalError, TransientError
from certlc.stack import free_port

EAB_HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
TSIG_SECRET = base64.b64encode(b"certlc unit tsig secret 32 bytes").decode()
DIRECTORY = "https://acme.example.test/dir"
ORDER_URL = "https://acme.example.test/order/1"


# --- certificates ---------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, public_key: Any, signer: Any, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


@dataclass
class Chains:
    """A leaf for a CSR's key, under one intermediate cross-signed by two roots."""

    csr_pem: str
    leaf: x509.Certificate
    default: str  # leaf, intermediate (issued by "Root X1")
    alternate: str  # leaf, intermediate (issued by "Root X2"), "Root X2" itself cross-signed by "Legacy Root"


def _csr(*names: str, cn: str | None = None, extra: list[x509.GeneralName] | None = None,
         key: Any = None) -> tuple[str, Any]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(cn if cn is not None else names[0]))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names] + list(extra or [])
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode(), key


def _chains(*names: str) -> Chains:
    csr_pem, key = _csr(*(names or ("www.example.test",)))
    inter_key, root_key, legacy_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    leaf = _cert(names[0] if names else "www.example.test", "Issuing CA", key.public_key(), inter_key, ca=False)
    inter_x1 = _cert("Issuing CA", "Root X1", inter_key.public_key(), root_key, ca=True)
    inter_x2 = _cert("Issuing CA", "Root X2", inter_key.public_key(), root_key, ca=True)
    x2_by_legacy = _cert("Root X2", "Legacy Root", root_key.public_key(), legacy_key, ca=True)
    return Chains(csr_pem, leaf, _pem(leaf, inter_x1), _pem(leaf, inter_x2, x2_by_legacy))


# --- a ClientV2-shaped fake -----------------------------------------------------------------------
def _authz(name: str, typ: str = "http-01", status: messages.Status = messages.STATUS_PENDING,
           wildcard: bool = False) -> messages.AuthorizationResource:
    chall = challenges.HTTP01(token=os.urandom(16)) if typ == "http-01" else challenges.DNS01(token=os.urandom(16))
    body = messages.ChallengeBody(chall=chall, uri=f"https://acme.example.test/chall/{name}/{typ}", status=status)
    identifier = messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name)
    return messages.AuthorizationResource(
        body=messages.Authorization(identifier=identifier, challenges=[body], status=status, wildcard=wildcard or None),
        uri=f"https://acme.example.test/authz/{name}")


def _order(*authzs: messages.AuthorizationResource) -> messages.OrderResource:
    return messages.OrderResource(body=messages.Order(status=messages.STATUS_PENDING), uri=ORDER_URL,
                                  authorizations=list(authzs))


class FakeNet:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.account: Any = None
        self.retry_after: str | None = None

    def post(self, url: str, obj: Any, **kwargs: Any) -> Any:
        return self.client.on_post(url, obj, **kwargs)


@dataclass
class FakeClient:
    """Function fields, one per ClientV2 verb the connector uses; calls are recorded."""

    chains: Chains
    calls: list[str] = field(default_factory=list)
    on_new_account: Callable[[Any], Any] | None = None
    on_new_order: Callable[[bytes], Any] | None = None
    on_poll: Callable[[Any], Any] | None = None
    on_finalize: Callable[[Any], Any] | None = None
    on_post: Callable[..., Any] = lambda url, obj, **kw: None
    on_poll_finalization: Callable[[Any], Any] | None = None
    alternatives: bool = False
    names: tuple[str, ...] = ("www.example.test",)

    def __post_init__(self) -> None:
        self.net = FakeNet(self)
        self.directory = {"newNonce": "https://acme.example.test/nonce", "newAccount": "https://acme.example.test/acct",
                          "newOrder": "https://acme.example.test/order"}
        self.answered: list[tuple[str, Any]] = []
        self.registrations: list[Any] = []

    def new_account(self, registration: Any) -> Any:
        self.calls.append("new_account")
        self.registrations.append(registration)
        if self.on_new_account:
            return self.on_new_account(registration)
        return messages.RegistrationResource(body=messages.Registration(), uri="https://acme.example.test/acct/1")

    def new_order(self, csr_pem: bytes) -> Any:
        self.calls.append("new_order")
        if self.on_new_order:
            return self.on_new_order(csr_pem)
        return _order(*(_authz(n) for n in self.names))

    def answer_challenge(self, challb: Any, response: Any) -> None:
        self.calls.append("answer_challenge")
        self.answered.append((challb.chall.typ, response))

    def poll_authorizations(self, order: Any, deadline: dt.datetime) -> Any:
        self.calls.append("poll_authorizations")
        return self.on_poll(order) if self.on_poll else order

    def _valid(self, order: Any) -> Any:
        alternatives = [self.chains.alternate] if self.alternatives else None
        return order.update(fullchain_pem=self.chains.default, alternative_fullchains_pem=alternatives)

    def finalize_order(self, order: Any, deadline: dt.datetime, fetch_alternative_chains: bool = False) -> Any:
        self.calls.append("finalize_order")
        if self.on_finalize:
            return self.on_finalize(order)
        return self._valid(order)

    def poll_finalization(self, order: Any, deadline: dt.datetime, fetch_alternative_chains: bool = False) -> Any:
        self.calls.append("poll_finalization")
        if self.on_poll_finalization:
            return self.on_poll_finalization(order)
        return self._valid(order)


class RecordingSolver:
    challenge_type = "http-01"

    def __init__(self, typ: str = "http-01") -> None:
        self.challenge_type = typ
        self.presented: list[Challenge] = []
        self.cleaned: list[Challenge] = []

    def present(self, items: Any) -> None:
        self.presented += list(items)

    def cleanup(self, items: Any) -> None:
        self.cleaned += list(items)

    def check(self) -> list[str]:
        return []


def _key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(autouse=True)
def _fresh_accounts() -> Iterator[None]:
    acme_module._accounts.clear()
    yield
    acme_module._accounts.clear()


def _connector(client: FakeClient, *, solver: Any = None, **kwargs: Any) -> AcmeConnector:
    return AcmeConnector("le", DIRECTORY, _key_pem(), solver or RecordingSolver(), client_factory=lambda: client,
                         **kwargs)


def _submit(connector: AcmeConnector, csr_pem: str) -> Any:
    return connector.submit(SigningRequest(csr_pem, "", request_key="rk-1"))


def _problem(code: str, detail: str = "", identifier: str | None = None) -> messages.Error:
    ident = messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=identifier) if identifier else None
    return messages.Error.with_code(code, detail=detail, identifier=ident)


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc
    return fail


# --- options ---------------------------------------------------------------------------------------
def _settings(tmp_path: Path, endpoint: str | None = DIRECTORY, **options: Any) -> Any:
    profile: dict[str, Any] = {"kind": "acme", "options": options}
    if endpoint is not None:
        profile["endpoint"] = endpoint
    return load_settings(state_dir=str(tmp_path / "state"), ca_profiles={"le": profile})


HTTP = {"challenge": "http-01", "http_listen": "127.0.0.1:5002"}
RFC = {"challenge": "dns-01", "dns_provider": "rfc2136", "rfc2136_server": "127.0.0.1:5353",
       "rfc2136_tsig_key_name": "certlc", "rfc2136_tsig_secret": TSIG_SECRET}


@pytest.mark.parametrize(("endpoint", "options", "fragment"), [
    pytest.param(None, HTTP, "needs endpoint = the ACME directory URL", id="no endpoint"),
    pytest.param(DIRECTORY, {}, 'needs options.challenge = "http-01" or "dns-01"', id="no challenge"),
    pytest.param(DIRECTORY, {"challenge": "tls-alpn-01"}, "challenge must be", id="unknown challenge"),
    pytest.param(DIRECTORY, {**HTTP, "colour": "blue"}, "unknown option(s) ['colour']", id="unknown option"),
    pytest.param(DIRECTORY, {"challenge": "http-01"}, "exactly one of options.webroot", id="http-01 without target"),
    pytest.param(DIRECTORY, {**HTTP, "webroot": "/srv"}, "exactly one of options.webroot", id="webroot and listen"),
    pytest.param(DIRECTORY, {**HTTP, "http_listen": "nowhere"}, "http_listen must be host:port", id="listen no port"),
    pytest.param(DIRECTORY, {**HTTP, "http_listen": "127.0.0.1:99999"}, "http_listen must be", id="listen bad port"),
    pytest.param(DIRECTORY, {**HTTP, "dns_provider": "rfc2136"}, "do not apply to challenge http-01",
                 id="dns option on http-01"),
    pytest.param(DIRECTORY, {**HTTP, "propagation_seconds": 5}, "propagation_seconds applies to dns-01",
                 id="propagation on http-01"),
    pytest.param(DIRECTORY, {"challenge": "dns-01"}, 'needs options.dns_provider = "rfc2136" or "azure"',
                 id="no provider"),
    pytest.param(DIRECTORY, {"challenge": "dns-01", "dns_provider": "route53"}, "dns_provider must be",
                 id="unknown provider"),
    pytest.param(DIRECTORY, {**RFC, "rfc2136_server": None}, "needs options.rfc2136_server", id="no server"),
    pytest.param(DIRECTORY, {**RFC, "rfc2136_tsig_secret": None}, "needs options.rfc2136_tsig_secret",
                 id="no secret"),
    pytest.param(DIRECTORY, {**RFC, "rfc2136_tsig_key_name": None}, "needs options.rfc2136_tsig_key_name",
                 id="no key name"),
    pytest.param(DIRECTORY, {**RFC, "rfc2136_tsig_algorithm": "hmac-sha3"}, "rfc2136_tsig_algorithm must be one of",
                 id="bad algorithm"),
    pytest.param(DIRECTORY, {**RFC, "rfc2136_tsig_secret": "not base64!"}, "TSIG secret (rfc2136_tsig_secret) is "
                 "not base64", id="bad secret"),
    pytest.param(DIRECTORY, {**RFC, "azure_zone": "x"}, "do not apply to dns_provider rfc2136", id="azure on rfc"),
    pytest.param(DIRECTORY, {**RFC, "propagation_seconds": -1}, "propagation_seconds must be a number",
                 id="negative propagation"),
    pytest.param(DIRECTORY, {"challenge": "dns-01", "dns_provider": "azure", "azure_subscription_id": "s",
                             "azure_resource_group": "rg"}, "needs options.azure_zone", id="azure no zone"),
    pytest.param(DIRECTORY, {**HTTP, "eab_kid": "kid-1"}, "needs both eab_kid and eab_hmac_key", id="eab kid only"),
    pytest.param(DIRECTORY, {**HTTP, "eab_hmac_key": EAB_HMAC}, "needs both eab_kid and eab_hmac_key",
                 id="eab key only"),
    pytest.param(DIRECTORY, {**HTTP, "eab_kid": "k", "eab_hmac_key": "a+b/c"}, "EAB HMAC key (eab_hmac_key) is "
                 "not base64url", id="eab not base64url"),
    pytest.param(DIRECTORY, {**HTTP, "email": "not-an-address"}, "is not an e-mail address", id="bad email"),
    pytest.param(DIRECTORY, {**HTTP, "timeout_seconds": 0}, "timeout_seconds must be a positive", id="bad timeout"),
    pytest.param(DIRECTORY, {**HTTP, "ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle '/nonexistent/ca.pem' cannot be "
                 "read", id="missing bundle"),
    pytest.param(DIRECTORY, {**HTTP, "account_key": "/nonexistent/key.pem"}, "account_key '/nonexistent/key.pem' "
                 "cannot be read", id="missing account key"),
])
def test_bad_options_are_one_plain_config_error(tmp_path: Path, endpoint: str | None, options: dict[str, Any],
                                                fragment: str) -> None:
    options = {k: v for k, v in options.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        connector_for("le", _settings(tmp_path, endpoint, **options))
    assert fragment in str(caught.value)
    for secret in (EAB_HMAC, TSIG_SECRET, "a+b/c", "not base64!"):
        assert secret not in str(caught.value)


def test_a_generated_account_key_is_private_and_reused(tmp_path: Path) -> None:
    first = connector_for("le", _settings(tmp_path, **HTTP))
    path = tmp_path / "state" / "acme" / "le" / "account-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    second = connector_for("le", _settings(tmp_path, **HTTP))
    assert first._thumbprint == second._thumbprint  # same key, so the same ACME account
    assert not [p for p in path.parent.iterdir() if p.name != "account-key.pem"]  # no temp file left


def test_concurrent_first_runs_agree_on_one_account_key(tmp_path: Path) -> None:
    path = tmp_path / "acme" / "le" / "account-key.pem"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(acme_module.load_or_create_account_key(path)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and results[0] == path.read_bytes()


def test_an_rsa_account_key_is_accepted_and_a_weak_or_garbage_one_refused(tmp_path: Path) -> None:
    pem = serialization.PrivateFormat.PKCS8
    strong = tmp_path / "rsa.pem"
    strong.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(serialization.Encoding.PEM, pem,
                                                                           serialization.NoEncryption()))
    connector = connector_for("le", _settings(tmp_path, **HTTP, account_key=str(strong)))
    assert connector._alg.name == "RS256"  # type: ignore[attr-defined]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nsecretsecret\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as caught:
        connector_for("le", _settings(tmp_path, **HTTP, account_key=str(garbage)))
    assert "is not a PEM private key" in str(caught.value) and "secretsecret" not in str(caught.value)


def test_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    secret_file = tmp_path / "tsig.key"
    secret_file.write_text(f'key "certlc" {{\n\talgorithm hmac-sha512;\n\tsecret "{TSIG_SECRET}";\n}};\n')
    connector = connector_for("le", _settings(
        tmp_path, challenge="dns-01", dns_provider="rfc2136", rfc2136_server="ns1.example.test",
        rfc2136_tsig_secret_file=str(secret_file), eab_kid="kid-1", eab_hmac_key=EAB_HMAC))
    assert isinstance(connector, AcmeConnector)
    assert connector.uses_templates is False
    solver = connector.solver
    assert isinstance(solver, Rfc2136Solver)
    # A BIND key file (tsig-keygen's output) gives the key name, algorithm and secret.
    assert (solver.server, solver.port, solver.key_name) == ("ns1.example.test", 53, "certlc.")
    assert solver._key.algorithm == dns.name.from_text("hmac-sha512")
    key_pem = connector._key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()).decode()
    for text in (repr(connector), repr(solver), repr(connector._eab), str(vars(connector).get("_eab"))):
        assert TSIG_SECRET not in text and EAB_HMAC not in text and key_pem not in text
        assert "BEGIN" not in text


# --- submit: the happy path, chains and pending ------------------------------------------------------
def test_submit_answers_each_pending_authorization_and_returns_leaf_then_chain() -> None:
    chains = _chains("www.example.test", "api.example.test")
    client = FakeClient(chains, names=("www.example.test", "api.example.test"))
    solver = RecordingSolver()
    connector = _connector(client, solver=solver)
    result = _submit(connector, chains.csr_pem)
    assert result.status is DispositionStatus.ISSUED, result
    assert result.request_id == ORDER_URL
    assert x509.load_pem_x509_certificate(result.certificate_pem.encode()) == chains.leaf
    assert [x509.load_pem_x509_certificate(p.encode()).subject for p in result.chain_pem] == [_name("Issuing CA")]
    assert [c.identifier for c in solver.presented] == ["www.example.test", "api.example.test"]
    assert solver.cleaned == solver.presented
    # The key authorization is token.thumbprint(account key), as RFC 8555 §8.1 defines it.
    thumb = connector._thumbprint
    assert all(c.key_authorization == f"{c.token}.{thumb}" for c in solver.presented)
    assert client.calls == ["new_account", "new_order", "answer_challenge", "answer_challenge",
                            "poll_authorizations", "finalize_order"]
    registration = client.registrations[0]
    assert registration.terms_of_service_agreed is True


def test_already_valid_authorizations_are_not_answered_again() -> None:
    chains = _chains()
    client = FakeClient(chains, on_new_order=lambda csr: _order(_authz("www.example.test",
                                                                       status=messages.STATUS_VALID)))
    solver = RecordingSolver()
    assert _submit(_connector(client, solver=solver), chains.csr_pem).issued
    assert solver.presented == [] and "answer_challenge" not in client.calls


def test_preferred_chain_picks_the_chain_to_that_root_and_falls_back_to_the_default() -> None:
    chains = _chains()
    both = [chains.default, chains.alternate]
    assert select_chain(both, "Legacy Root") == chains.alternate
    assert select_chain(both, "Root X1") == chains.default
    assert select_chain(both, "Root X2") == chains.default  # the top certificate's issuer, not any in the chain
    assert select_chain(both, "No Such Root") == chains.default
    assert select_chain(both, None) == chains.default
    client = FakeClient(chains, alternatives=True)
    result = _submit(_connector(client, preferred_chain="Legacy Root"), chains.csr_pem)
    assert [x509.load_pem_x509_certificate(p.encode()).issuer for p in result.chain_pem] == [
        _name("Root X2"), _name("Legacy Root")]
    assert result.certificate_pem == split_pem(chains.alternate)[0]


def test_a_certificate_for_another_key_is_refused() -> None:
    chains = _chains()
    other_csr, _ = _csr("www.example.test")
    with pytest.raises(TerminalError) as caught:
        _submit(_connector(FakeClient(chains)), other_csr)
    assert caught.value.reason == "CaResponseInvalid"


def test_an_order_still_processing_at_the_deadline_is_pending_and_retrieve_fetches_it() -> None:
    chains = _chains()
    client = FakeClient(chains, on_finalize=_raise(acme_errors.TimeoutError()))
    connector = _connector(client)
    result = _submit(connector, chains.csr_pem)
    assert result.status is DispositionStatus.PENDING and result.request_id == ORDER_URL

    fetched: list[tuple[str, Any]] = []

    def order_body(status: str, **extra: Any) -> Callable[..., Any]:
        def post(url: str, obj: Any, **kwargs: Any) -> Any:
            fetched.append((url, obj))
            response = requests.Response()
            response._content = json.dumps({"status": status, **extra}).encode()
            return response
        return post

    client.on_post = order_body("processing")
    client.on_poll_finalization = _raise(acme_errors.TimeoutError())
    again = connector.retrieve(ORDER_URL)
    assert again.status is DispositionStatus.PENDING
    assert fetched == [(ORDER_URL, None)]  # POST-as-GET: a signed POST with no payload

    client.on_poll_finalization = None
    client.on_post = order_body("valid", certificate="https://acme.example.test/cert/1")
    done = connector.retrieve(ORDER_URL)
    assert done.issued and x509.load_pem_x509_certificate(done.certificate_pem.encode()) == chains.leaf

    client.on_post = order_body("invalid", error={"type": "urn:ietf:params:acme:error:badCSR", "detail": "weak key"})
    denied = connector.retrieve(ORDER_URL)
    assert denied.status is DispositionStatus.DENIED and "weak key" in denied.message

    with pytest.raises(TerminalError) as caught:
        connector.retrieve("12345")
    assert caught.value.reason == "RequestUnknown"


# --- submit: what the CSR asks for ------------------------------------------------------------------
UPN = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x0fsvc@contoso.com")


@pytest.mark.parametrize(("names", "cn", "extra", "fragment"), [
    pytest.param(("www.example.test",), None, [x509.RFC822Name("ops@example.test")], "e-mail address ops@example.test",
                 id="e-mail SAN"),
    pytest.param(("www.example.test",), None, [UPN], "UPN", id="UPN SAN"),
    pytest.param(("www.example.test",), None, [x509.UniformResourceIdentifier("spiffe://x/y")], "URI spiffe://x/y",
                 id="URI SAN"),
    pytest.param(("www.example.test",), "Contoso Web Service", None,
                 "subject CN 'Contoso Web Service' is neither a DNS name an ACME CA can validate nor an IP address",
                 id="CN words"),
    pytest.param((), "192.0.2.7", [x509.IPAddress(ipaddress.ip_address("192.0.2.8"))],
                 "subject CN '192.0.2.7' is an IP address the CSR's subject alternative names do not include",
                 id="IP CN not among the IP SANs"),
    pytest.param(("bad_name.example.test",), None, None, "bad_name.example.test", id="invalid DNS name"),
])
def test_a_csr_acme_cannot_validate_is_denied_before_any_order(names: tuple[str, ...], cn: str | None,
                                                                extra: list[Any] | None, fragment: str) -> None:
    csr_pem, _ = _csr(*names, cn=cn, extra=extra)
    client = FakeClient(_chains())
    result = _submit(_connector(client), csr_pem)
    assert result.status is DispositionStatus.DENIED
    assert result.reason == "IdentifierUnsupported" and fragment in result.message
    assert client.calls == []


@pytest.mark.parametrize(("cn", "fragments"), [
    pytest.param("www.example.test", ["only the subject CN 'www.example.test'", "ACME CAs certify the names in the SANs",
                                      "add 'www.example.test' as a DNS name to the Key Vault certificate policy's SANs "
                                      "(subject_alternative_names.dns_names), then renew"], id="DNS name CN"),
    pytest.param("Contoso Web Service", ["(the subject CN 'Contoso Web Service' is not a DNS name either)",
                                         "subject_alternative_names.dns_names"], id="words CN"),
    pytest.param("192.0.2.7", ["only the subject CN '192.0.2.7'", "IP address SANs"], id="IP CN"),
])
def test_a_csr_without_dns_or_ip_sans_is_denied_before_any_order(cn: str, fragments: list[str]) -> None:
    """A Key Vault policy with a subject CN and no SANs makes a CSR with no SAN extension; ACME CAs
    certify the SANs (Pebble refuses it at finalize as "unauthorized"): say so before any order."""
    csr_pem, _ = _csr(cn=cn)
    assert b"Subject Alternative" not in repr(x509.load_pem_x509_csr(csr_pem.encode()).extensions).encode()
    client = FakeClient(_chains())
    result = _submit(_connector(client), csr_pem)
    assert result.status is DispositionStatus.DENIED and result.reason == "CsrNamesMissing", result
    for fragment in fragments:
        assert fragment in result.message
    assert "account" not in result.message.lower()
    assert client.calls == []  # the CA is not contacted


def test_a_cn_that_is_an_ip_address_among_the_ip_sans_is_ordered_as_that_ip_address() -> None:
    """RFC 8738: CN=127.0.0.1 with SAN IP:127.0.0.1 is an IP certificate, not a CN that is no DNS
    name. certlc orders the IP identifier only (the acme library would order the CN as a DNS name)."""
    csr_pem, _ = _csr(cn="127.0.0.1", extra=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    connector = _connector(FakeClient(_chains()))
    csr = connector._csr(csr_pem)  # not refused
    assert acme_module._identifiers(csr) == ([], ["127.0.0.1"])

    sent: list[Any] = []

    def post(url: str, obj: Any, **kwargs: Any) -> requests.Response:
        sent.append((url, obj))
        response = requests.Response()
        response.status_code = 201
        response.headers["Location"] = ORDER_URL
        response._content = json.dumps({"status": "pending", "identifiers": json.loads(obj.json_dumps())["identifiers"],
                                        "authorizations": [], "finalize": ORDER_URL + "/finalize"}).encode()
        return response

    client = acme_module._Client.__new__(acme_module._Client)  # the real new_order, no network
    client.directory = {"newOrder": "https://acme.example.test/new-order"}  # type: ignore[assignment]
    client._post = post  # type: ignore[method-assign]
    order = client.new_order(csr_pem.encode())
    [(url, new_order)] = sent
    assert url == "https://acme.example.test/new-order"
    assert [(i.typ.name, i.value) for i in new_order.identifiers] == [("ip", "127.0.0.1")]
    assert order.uri == ORDER_URL and order.csr_pem == csr_pem.encode()

    # A DNS name CN still leads the order (as certbot orders it), once whatever its case.
    mixed, _ = _csr("api.example.test", "WWW.example.test", cn="www.example.test",
                    extra=[x509.IPAddress(ipaddress.ip_address("192.0.2.7"))])
    assert acme_module._identifiers(x509.load_pem_x509_csr(mixed.encode())) == (
        ["www.example.test", "api.example.test"], ["192.0.2.7"])


def test_wildcards_need_dns01_and_ip_addresses_http01() -> None:
    wildcard, _ = _csr("*.example.test")
    with pytest.raises(TerminalError) as caught:
        _submit(_connector(FakeClient(_chains())), wildcard)
    assert caught.value.reason == "ChallengeUnsupported" and "dns-01" in str(caught.value)
    ip_csr, _ = _csr("www.example.test", extra=[x509.IPAddress(ipaddress.ip_address("192.0.2.7"))])
    with pytest.raises(TerminalError) as caught:
        _submit(_connector(FakeClient(_chains()), solver=RecordingSolver("dns-01")), ip_csr)
    assert caught.value.reason == "ChallengeUnsupported" and "192.0.2.7" in str(caught.value)


def test_a_wildcard_authorization_is_answered_at_the_base_name_with_dns01() -> None:
    chains = _chains("*.example.test")
    client = FakeClient(chains, on_new_order=lambda csr: _order(_authz("example.test", "dns-01", wildcard=True)))
    solver = RecordingSolver("dns-01")
    assert _submit(_connector(client, solver=solver), chains.csr_pem).issued
    [presented] = solver.presented
    assert presented.dns_name == "_acme-challenge.example.test."
    digest = base64.urlsafe_b64encode(
        __import__("hashlib").sha256(presented.key_authorization.encode()).digest()).decode().rstrip("=")
    assert presented.validation == digest  # RFC 8555 §8.4: the TXT value


def test_a_ca_offering_no_challenge_of_the_configured_type_is_a_configuration_error() -> None:
    chains = _chains()
    client = FakeClient(chains, on_new_order=lambda csr: _order(_authz("www.example.test", "dns-01")))
    with pytest.raises(TerminalError) as caught:
        _submit(_connector(client), chains.csr_pem)
    assert caught.value.reason == "ChallengeUnsupported" and "offered: dns-01" in str(caught.value)


# --- error mapping -----------------------------------------------------------------------------------
def _failed_authz(name: str, code: str, detail: str) -> messages.AuthorizationResource:
    authz = _authz(name)
    challb = authz.body.challenges[0].update(status=messages.STATUS_INVALID, error=_problem(code, detail))
    return authz.update(body=authz.body.update(status=messages.STATUS_INVALID, challenges=[challb]))


SSL_UNTRUSTED = requests.exceptions.SSLError(
    "HTTPSConnectionPool(host='127.0.0.1'): Max retries exceeded (Caused by SSLError(SSLCertVerificationError(1, "
    "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate')))")


@pytest.mark.parametrize(("stage", "exc", "status", "reason", "fragments"), [
    pytest.param("order", _problem("rejectedIdentifier", "policy forbids www.example.test"), "denied",
                 "IdentifierRejected", ["policy forbids www.example.test"], id="rejectedIdentifier is denied"),
    pytest.param("order", _problem("unsupportedIdentifier", "no IPs here"), "denied", "IdentifierUnsupported",
                 ["no IPs here"], id="unsupportedIdentifier is denied"),
    pytest.param("order", _problem("caa", "CAA record forbids"), "denied", "CaaForbidden", ["CAA record forbids"],
                 id="caa is denied"),
    pytest.param("finalize", _problem("badCSR", "key too small"), "denied", "CsrRejected", ["key too small"],
                 id="badCSR at finalize is denied"),
    pytest.param("order", messages.Error.with_code("compound", detail="several", subproblems=(
        _problem("rejectedIdentifier", "blocked name", "a.example.test"), _problem("malformed", "x"))),
        "denied", "IdentifierRejected", ["a.example.test: blocked name"], id="compound with a rejected identifier"),
    pytest.param("poll", acme_errors.ValidationError([_failed_authz("www.example.test", "unauthorized",
                                                                    "Invalid response from http://www/...: 404")]),
                 TerminalError, "ChallengeFailed", ["www.example.test", "http-01", "404"],
                 id="failed validation is terminal ChallengeFailed"),
    pytest.param("poll", acme_errors.ValidationError([_failed_authz("www.example.test", "dns", "NXDOMAIN")]),
                 TerminalError, "ChallengeFailed", ["www.example.test", "NXDOMAIN"], id="dns problem on a challenge"),
    pytest.param("poll", acme_errors.ValidationError([_failed_authz("www.example.test", "caa", "CAA forbids")]),
                 "denied", "CaaForbidden", ["CAA forbids"], id="CAA found during validation is denied"),
    pytest.param("finalize", acme_errors.IssuanceError(_problem("incorrectResponse", "wrong key auth")),
                 TerminalError, "ChallengeFailed", ["wrong key auth"], id="invalid order from a failed validation"),
    pytest.param("order", _problem("rateLimited", "too many certificates"), TransientError, "RateLimited",
                 ["too many certificates", "Retry-After: 3600"], id="rateLimited is transient with Retry-After"),
    pytest.param("order", _problem("serverInternal", "oops"), TransientError, "CAUnavailable", ["oops"],
                 id="serverInternal is transient"),
    pytest.param("order", requests.exceptions.ConnectionError("Connection refused"), TransientError, "CAUnavailable",
                 ["cannot be reached"], id="no connection is transient"),
    pytest.param("order", requests.exceptions.ReadTimeout("read timed out"), TransientError, "CAUnavailable",
                 ["did not answer in time"], id="timeout is transient"),
    pytest.param("order", SSL_UNTRUSTED, TerminalError, "CaTlsUntrusted", ["ca_bundle", "not trusted"],
                 id="untrusted TLS is terminal and names ca_bundle"),
    pytest.param("account", _problem("externalAccountRequired", "EAB required"), TerminalError, "CaAuthFailed",
                 ["eab_kid"], id="externalAccountRequired is CaAuthFailed"),
    pytest.param("account", _problem("unauthorized", "bad EAB signature"), TerminalError, "CaAuthFailed",
                 ["bad EAB signature"], id="unauthorized account is CaAuthFailed"),
    pytest.param("finalize", _problem("unauthorized", "Order includes different number of DNSnames identifiers than "
                                                      "CSR specifies"), "denied", "RequestRefused",
                 ["refused to finalize the order with this CSR", "different number of DNSnames",
                  "every name belongs in the SANs"], id="unauthorized at finalize refuses the request"),
    pytest.param("order", _problem("unauthorized", "Cannot issue for this name"), "denied", "RequestRefused",
                 ["the ACME CA refused the request", "Cannot issue for this name"],
                 id="unauthorized at new order refuses the request"),
    pytest.param("order", _problem("unauthorized", "policy forbids", "www.example.test"), "denied", "RequestRefused",
                 ["www.example.test: policy forbids"], id="unauthorized naming an identifier, no challenge failed"),
    pytest.param("order", _problem("unauthorized", 'Account is not valid, has status "deactivated"'), TerminalError,
                 "CaAuthFailed", ["refused the ACME account", "deactivated"],
                 id="unauthorized naming the account is CaAuthFailed"),
    pytest.param("account", _problem("malformed", "EAB kid unknown"), TerminalError, "CaAuthFailed",
                 ["EAB kid unknown"], id="malformed EAB is CaAuthFailed"),
    pytest.param("account", _problem("serverInternal", "db down"), TransientError, "CAUnavailable", ["db down"],
                 id="a CA outage while registering stays transient"),
    pytest.param("order", _problem("malformed", "bad JWS"), TerminalError, "CaError", ["bad JWS"],
                 id="other problems are terminal"),
    pytest.param("poll", acme_errors.TimeoutError(), TransientError, "ValidationTimeout", ["timeout_seconds"],
                 id="validation not finished in time is transient"),
])
def test_acme_problems_map_to_dispositions_and_error_classes(stage: str, exc: BaseException, status: Any,
                                                             reason: str, fragments: list[str]) -> None:
    chains = _chains()
    client = FakeClient(chains)
    client.net.retry_after = "3600"
    if stage == "account":
        client.on_new_account = _raise(exc)
    elif stage == "order":
        client.on_new_order = _raise(exc)
    elif stage == "poll":
        client.on_poll = _raise(exc)
    else:
        client.on_finalize = _raise(exc)
    solver = RecordingSolver()
    connector = _connector(client, solver=solver, eab=ExternalAccount("kid-1", EAB_HMAC))
    if status == "denied":
        result = _submit(connector, chains.csr_pem)
        assert result.status is DispositionStatus.DENIED and result.reason == reason
        message = result.message
    else:
        with pytest.raises(status) as caught:
            _submit(connector, chains.csr_pem)
        assert caught.value.reason == reason
        message = str(caught.value)
        if reason == "RateLimited":
            assert caught.value.retry_after == 3600  # type: ignore[attr-defined]
    for fragment in fragments:
        assert fragment in message
    assert EAB_HMAC not in message
    assert solver.cleaned == solver.presented  # cleanup ran whatever happened


def test_a_non_acme_endpoint_is_terminal_and_5xx_transient() -> None:
    def answer(status: int) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        return response

    chains = _chains()
    with pytest.raises(TerminalError) as caught:
        _submit(_connector(FakeClient(chains, on_new_order=_raise(acme_errors.ClientError(answer(404))))),
                chains.csr_pem)
    assert caught.value.reason == "CaResponseInvalid" and "HTTP 404" in str(caught.value)
    with pytest.raises(TransientError):
        _submit(_connector(FakeClient(chains, on_new_order=_raise(acme_errors.ClientError(answer(502))))),
                chains.csr_pem)


def test_an_existing_account_is_found_and_a_forgotten_one_registered_again() -> None:
    chains = _chains()
    client = FakeClient(chains, on_new_account=_raise(acme_errors.ConflictError("https://acme.example.test/acct/9")))
    connector = _connector(client)
    assert _submit(connector, chains.csr_pem).issued
    assert client.net.account.uri == "https://acme.example.test/acct/9"
    # The CA forgot the account (restarted): one new registration, then the order goes through.
    orders = iter([_raise(_problem("accountDoesNotExist", "no such account")), None])
    client.on_new_account = None

    def new_order(csr: bytes) -> Any:
        step = next(orders)
        return step(csr) if step else _order(_authz("www.example.test"))

    client.on_new_order = new_order
    client.calls.clear()
    assert _submit(connector, chains.csr_pem).issued
    assert client.calls[:3] == ["new_order", "new_account", "new_order"]
    assert client.net.account.uri == "https://acme.example.test/acct/1"


def test_the_account_is_registered_once_for_concurrent_submits() -> None:
    chains = _chains()
    clients: list[FakeClient] = []
    barrier = threading.Barrier(6)

    def factory() -> FakeClient:
        client = FakeClient(chains)
        clients.append(client)
        return client

    key = _key_pem()
    connectors = [AcmeConnector("le", DIRECTORY, key, RecordingSolver(), client_factory=factory) for _ in range(6)]
    results: list[Any] = []

    def run(connector: AcmeConnector) -> None:
        barrier.wait()
        results.append(_submit(connector, chains.csr_pem))

    threads = [threading.Thread(target=run, args=(c,)) for c in connectors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(r.issued for r in results)
    assert sum(c.calls.count("new_account") for c in clients) == 1
    assert {c.net.account.uri for c in clients} == {"https://acme.example.test/acct/1"}


def test_check_reports_the_ca_and_the_solver_in_plain_words(tmp_path: Path) -> None:
    chains = _chains()
    client = FakeClient(chains, on_new_account=_raise(_problem("externalAccountRequired", "")))
    missing = WebrootSolver(tmp_path / "nowhere")
    health = _connector(client, solver=missing).check()
    assert not health.ok
    assert "requires external account binding" in health.problems[0]
    assert "is not a directory" in health.problems[1]
    assert _connector(FakeClient(chains)).check().ok


# --- solvers -----------------------------------------------------------------------------------------
def _challenge(name: str = "www.example.test", token: str = "tok-" + "A" * 20) -> Challenge:
    return Challenge("http-01", name, token, f"{token}.thumb", "txt-value-" + token[-6:])


def _webroot(tmp_path: Path) -> Path:
    webroot = tmp_path / "www"  # tmp_path itself is 0700 (pytest's choice): a webroot is 0755
    webroot.mkdir()
    webroot.chmod(0o755)
    return webroot


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_webroot_writes_the_answer_and_removes_it(tmp_path: Path) -> None:
    webroot = _webroot(tmp_path)
    solver = WebrootSolver(webroot)
    assert solver.check() == []
    item = _challenge()
    solver.present([item])
    path = webroot / ".well-known" / "acme-challenge" / item.token
    assert path.read_text() == item.key_authorization
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the web server must read it
    solver.cleanup([item])
    assert not path.exists()
    solver.cleanup([item])  # cleanup after cleanup (or a failed present) is harmless


@pytest.fixture
def umask_077() -> Iterator[None]:
    """certlc's CLI and systemd units (UMask=0077) run with umask 0077."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_077")
def test_under_umask_077_the_webroot_directories_are_0755_and_the_answers_0644(tmp_path: Path) -> None:
    """mkdir(mode=0o755) is reduced by the umask to 0700: nginx as www-data would answer 404 and the
    CA's validation fail. certlc sets the mode of what it creates explicitly."""
    webroot = _webroot(tmp_path)
    solver = WebrootSolver(webroot)
    item = _challenge()
    solver.present([item])
    assert _mode(webroot / ".well-known") == 0o755
    assert _mode(webroot / ".well-known" / "acme-challenge") == 0o755
    assert _mode(webroot / ".well-known" / "acme-challenge" / item.token) == 0o644
    assert solver.check() == []
    solver.cleanup([item])
    # check() creates them too (certlc ca check before the first order), the same way.
    (tmp_path / "fresh").mkdir()
    fresh = _webroot(tmp_path / "fresh")
    assert WebrootSolver(fresh).check() == []
    assert _mode(fresh / ".well-known") == _mode(fresh / ".well-known" / "acme-challenge") == 0o755
    # A missing webroot is created on the way, 0755 as well.
    deep = WebrootSolver(fresh / "site" / "htdocs")
    deep.present([item])
    assert [_mode(p) for p in (fresh / "site", fresh / "site" / "htdocs")] == [0o755, 0o755]


def test_webroot_keeps_a_directory_the_admin_made_stricter_and_check_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    webroot = _webroot(tmp_path)
    directory = webroot / ".well-known" / "acme-challenge"
    directory.mkdir(parents=True)
    (webroot / ".well-known").chmod(0o755)
    directory.chmod(0o700)
    solver = WebrootSolver(webroot)
    [problem] = solver.check()
    assert f"other users cannot traverse {str(directory)!r} (mode 0700)" in problem
    assert "nginx as www-data" in problem and "404" in problem and "chmod o+rx" in problem
    with caplog.at_level(logging.WARNING, logger="certlc.ca.acme_solvers"):
        solver.present([_challenge()])
    assert _mode(directory) == 0o700  # not loosened: certlc did not create it
    assert "other users cannot traverse" in caplog.text
    # The webroot itself counts too.
    directory.chmod(0o755)
    webroot.chmod(0o700)
    [problem] = solver.check()
    assert f"{str(webroot)!r} (mode 0700)" in problem
    webroot.chmod(0o755)
    assert solver.check() == []
    if os.geteuid() == 0:
        # 0750 with the group given to the web server on purpose (chgrp www-data) is open to it.
        os.chown(directory, -1, os.getegid() + 4242)
        directory.chmod(0o750)
        assert solver.check() == []
        os.chown(directory, -1, os.getegid())  # 0750 in certlc's own group: others are shut out
        assert "(mode 0750)" in solver.check()[0]


def test_webroot_refuses_a_token_that_would_escape_it(tmp_path: Path) -> None:
    solver = WebrootSolver(tmp_path / "root")
    (tmp_path / "root").mkdir()
    with pytest.raises(TerminalError):
        solver.present([_challenge(token="../../evil")])
    assert not (tmp_path / "evil").exists()


def test_the_builtin_responder_serves_current_tokens_of_concurrent_orders_from_one_server() -> None:
    port = free_port()
    first, second = HttpResponderSolver("127.0.0.1", port), HttpResponderSolver("127.0.0.1", port)
    a, b = _challenge(token="a" * 22), _challenge("api.example.test", token="b" * 22)

    def get(token: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}", timeout=5)

    first.present([a])
    try:
        response = get(a.token)
        assert (response.status_code, response.text) == (200, a.key_authorization)
        assert get(b.token).status_code == 404  # only the tokens of orders in progress
        second.present([b])  # a second order shares the running server
        assert get(b.token).text == b.key_authorization
        first.cleanup([a])
        assert get(a.token).status_code == 404 and get(b.token).text == b.key_authorization
        assert second.serving()
    finally:
        first.cleanup([a])
        second.cleanup([b])
    assert not second.serving()
    with pytest.raises(httpx.ConnectError):
        get(b.token)  # stopped after the last order's cleanup
    assert first.check() == []


def test_the_builtin_responder_reports_a_taken_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        solver = HttpResponderSolver("127.0.0.1", port)
        assert "cannot be bound" in solver.check()[0]
        with pytest.raises(TerminalError) as caught:
            solver.present([_challenge()])
        assert caught.value.reason == "ChallengeSetupFailed"
        solver.cleanup([_challenge()])  # after a failed present: harmless
        assert not solver.serving()


def test_the_rfc2136_update_adds_and_deletes_exactly_our_signed_txt_value() -> None:
    key = dns.tsig.Key("certlc-acme.", TSIG_SECRET, "hmac-sha256")
    keyring = dns.tsigkeyring.from_text({"certlc-acme.": ("hmac-sha256", TSIG_SECRET)})
    value = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
    for delete in (False, True):
        wire = txt_update("acme.test", "_acme-challenge.www.acme.test.", value, key=key, delete=delete).to_wire()
        parsed = dns.message.from_wire(wire, keyring=keyring)  # verifies the TSIG signature
        assert parsed.opcode() == dns.opcode.UPDATE
        assert parsed.keyname == dns.name.from_text("certlc-acme.")
        assert parsed.keyalgorithm == dns.name.from_text("hmac-sha256")
        [zone] = parsed.question  # the zone section
        assert (zone.name, zone.rdtype) == (dns.name.from_text("acme.test."), dns.rdatatype.SOA)
        [rrset] = parsed.authority  # the update section
        assert rrset.name == dns.name.from_text("_acme-challenge.www.acme.test.")
        assert rrset.rdtype == dns.rdatatype.TXT
        [rdata] = rrset
        assert rdata.strings == (value.encode(),)
        # RFC 2136 §2.5: add is class IN with a TTL; "delete an RR from an RRset" is class NONE, TTL 0.
        # (dnspython keeps the zone's class in rdclass and the update's class in deleting.)
        assert (rrset.deleting, rrset.ttl) == ((dns.rdataclass.NONE, 0) if delete else (None, 60))
    with pytest.raises(dns.tsig.BadSignature):
        wrong = dns.tsigkeyring.from_text({"certlc-acme.": ("hmac-sha256", base64.b64encode(b"x" * 32).decode())})
        dns.message.from_wire(txt_update("acme.test", "_acme-challenge.acme.test.", value, key=key).to_wire(),
                              keyring=wrong)


# What tsig-keygen -a accepts, and dnspython's name for each (hmac-md5's is not "hmac-md5.").
DNSPYTHON_TSIG = {"hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha384": dns.tsig.HMAC_SHA384,
                  "hmac-sha512": dns.tsig.HMAC_SHA512, "hmac-sha224": dns.tsig.HMAC_SHA224,
                  "hmac-sha1": dns.tsig.HMAC_SHA1, "hmac-md5": dns.tsig.HMAC_MD5,
                  "HMAC-MD5": dns.tsig.HMAC_MD5, "hmac-md5.sig-alg.reg.int.": dns.tsig.HMAC_MD5}


def test_the_accepted_tsig_algorithms_are_bind_s() -> None:
    assert sorted(TSIG_ALGORITHMS) == sorted(k for k in DNSPYTHON_TSIG if k.islower() and k.count(".") == 0)


@pytest.mark.parametrize("spelling", list(DNSPYTHON_TSIG))
@pytest.mark.parametrize("where", ["option", "key file"])
def test_each_accepted_tsig_algorithm_signs_an_update_dnspython_verifies(tmp_path: Path, spelling: str,
                                                                          where: str) -> None:
    """hmac-md5 used to pass validation and then crash (KeyError: hmac-md5. in dnspython's use_tsig):
    dnspython's name for it is hmac-md5.sig-alg.reg.int. Each name certlc accepts, from the option
    or from a tsig-keygen key file, must sign a message that dnspython can verify."""
    expected = DNSPYTHON_TSIG[spelling]
    if where == "option":
        options = {**RFC, "rfc2136_tsig_algorithm": spelling}
    else:
        key_file = tmp_path / "tsig.key"
        key_file.write_text(f'key "certlc" {{\n\talgorithm {spelling};\n\tsecret "{TSIG_SECRET}";\n}};\n')
        options = {**{k: v for k, v in RFC.items() if k not in ("rfc2136_tsig_secret", "rfc2136_tsig_key_name")},
                   "rfc2136_tsig_secret_file": str(key_file)}
    solver = connector_for("le", _settings(tmp_path, **options)).solver
    assert isinstance(solver, Rfc2136Solver)
    key = solver._key
    assert key.algorithm == expected
    keyring = {dns.name.from_text("certlc."): dns.tsig.Key("certlc.", TSIG_SECRET, expected)}
    update = txt_update("acme.test", "_acme-challenge.www.acme.test.", "value", key=key)
    parsed = dns.message.from_wire(update.to_wire(), keyring=keyring)  # verifies the signature
    assert parsed.had_tsig and parsed.keyalgorithm == expected
    probe = dns.message.make_query(".", dns.rdatatype.SOA)  # check()'s signed probe
    probe.use_tsig(key, keyname=key.name, algorithm=key.algorithm)
    assert dns.message.from_wire(probe.to_wire(), keyring=keyring).had_tsig


def test_an_unknown_tsig_algorithm_is_a_config_error_wherever_it_comes_from(tmp_path: Path) -> None:
    key_file = tmp_path / "tsig.key"
    key_file.write_text(f'key "certlc" {{\n\talgorithm hmac-sha3-256;\n\tsecret "{TSIG_SECRET}";\n}};\n')
    options = {k: v for k, v in RFC.items() if k != "rfc2136_tsig_secret"}
    with pytest.raises(ConfigError) as caught:
        connector_for("le", _settings(tmp_path, **options, rfc2136_tsig_secret_file=str(key_file)))
    assert "the key file's algorithm" in str(caught.value) and "'hmac-sha3-256'" in str(caught.value)
    assert "hmac-md5" in str(caught.value) and TSIG_SECRET not in str(caught.value)
    # A key made elsewhere with BIND's spelling is signed under dnspython's name.
    solver = Rfc2136Solver("127.0.0.1", 53, dns.tsig.Key("certlc.", TSIG_SECRET, "hmac-md5"))
    assert solver._key.algorithm == dns.tsig.HMAC_MD5
    with pytest.raises(ConfigError):
        Rfc2136Solver("127.0.0.1", 53, dns.tsig.Key("certlc.", TSIG_SECRET, "hmac-sha3"))


# --- Azure DNS through a recording transport ---------------------------------------------------------
class AzureRecorder:
    """An azure.core transport: a dict of record sets behind the ARM REST contract, every request kept."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.record_sets: dict[str, dict[str, Any]] = {}
        self.etag = 0

    def handle(self, method: str, url: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append((method, url, headers, body))
        path = httpx.URL(url).path
        if path.endswith("/dnsZones/example.test"):
            return 200, {"name": "example.test", "properties": {"nameServers": ["ns1-01.azure-dns.com."]}}
        current = self.record_sets.get(path)
        if method == "GET":
            return (200, current) if current else (404, {"error": {"code": "NotFound", "message": "not found"}})
        if method == "PUT":
            if headers.get("If-None-Match") == "*" and current:
                return 412, {"error": {"code": "PreconditionFailed", "message": "exists"}}
            if "If-Match" in headers and (not current or current["etag"] != headers["If-Match"]):
                return 412, {"error": {"code": "PreconditionFailed", "message": "changed"}}
            self.etag += 1
            self.record_sets[path] = {"name": path.rsplit("/", 1)[1], "etag": f"etag-{self.etag}", **body}
            return (201 if current is None else 200), self.record_sets[path]
        if method == "DELETE":
            assert current and headers.get("If-Match") == current["etag"]
            del self.record_sets[path]
            return 200, None
        return 405, None


def _azure_client(recorder: AzureRecorder) -> Any:
    from azure.core.credentials import AccessToken
    from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
    from azure.mgmt.dns import DnsManagementClient

    class Transport(HttpTransport):  # type: ignore[misc]
        def send(self, request: Any, **kwargs: Any) -> Any:
            body = json.loads(request.content) if request.content else None
            status, answer = recorder.handle(request.method, request.url, dict(request.headers), body)
            response = requests.Response()
            response.status_code = status
            response.headers["Content-Type"] = "application/json"
            response._content = json.dumps(answer).encode() if answer is not None else b""
            return RequestsTransportResponse(request, response)

        def open(self) -> None:
            pass

        def close(self) -> None:
            pass

        def __exit__(self, *args: Any) -> None:
            pass

    class Credential:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("token", 2**31)

    return DnsManagementClient(Credential(), "sub-1", transport=Transport())  # type: ignore[arg-type]


def test_azure_dns_adds_our_value_to_the_record_set_and_removes_only_it() -> None:
    recorder = AzureRecorder()
    solver = AzureDnsSolver(_azure_client(recorder), "rg-dns", "example.test", propagation_seconds=0)
    assert solver.check() == []
    path = ("/subscriptions/sub-1/resourceGroups/rg-dns/providers/Microsoft.Network/dnsZones/example.test/"
            "TXT/_acme-challenge.www")
    # example.com and *.example.com are validated at the same name with two values.
    first = Challenge("dns-01", "www.example.test", "t1", "t1.k", "value-one")
    second = Challenge("dns-01", "www.example.test", "t2", "t2.k", "value-two")
    recorder.requests.clear()
    solver.present([first, second])
    seen = [(m, httpx.URL(u).path, httpx.URL(u).params.get("api-version")) for m, u, _, _ in recorder.requests]
    assert seen == [("GET", path, "2018-05-01"), ("PUT", path, "2018-05-01"), ("GET", path, "2018-05-01"),
                    ("PUT", path, "2018-05-01")]
    create, add = recorder.requests[1], recorder.requests[3]
    assert create[2].get("If-None-Match") == "*"
    assert create[3] == {"properties": {"TTL": 60, "TXTRecords": [{"value": ["value-one"]}]}}
    assert add[2].get("If-Match") == "etag-1"
    assert add[3] == {"properties": {"TTL": 60, "TXTRecords": [{"value": ["value-one"]}, {"value": ["value-two"]}]}}
    assert all(h.get("Authorization") == "Bearer token" for _, _, h, _ in recorder.requests)

    recorder.requests.clear()
    solver.cleanup([first])
    assert [(m, httpx.URL(u).path) for m, u, _, _ in recorder.requests] == [("GET", path), ("PUT", path)]
    assert recorder.requests[1][3]["properties"]["TXTRecords"] == [{"value": ["value-two"]}]
    recorder.requests.clear()
    solver.cleanup([second])
    assert [(m, httpx.URL(u).path) for m, u, _, _ in recorder.requests] == [("GET", path), ("DELETE", path)]
    assert recorder.requests[1][2].get("If-Match") == "etag-3"
    assert recorder.record_sets == {}


def test_azure_dns_refusals_are_plain_words() -> None:
    recorder = AzureRecorder()
    original = recorder.handle

    def forbidden(method: str, url: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "PUT":
            recorder.requests.append((method, url, headers, body))
            return 403, {"error": {"code": "AuthorizationFailed", "message": "no access"}}
        return original(method, url, headers, body)

    recorder.handle = forbidden  # type: ignore[method-assign]
    solver = AzureDnsSolver(_azure_client(recorder), "rg-dns", "example.test", propagation_seconds=0)
    with pytest.raises(TerminalError) as caught:
        solver.present([Challenge("dns-01", "www.example.test", "t", "t.k", "v")])
    assert caught.value.reason == "DnsAuthFailed" and "DNS Zone Contributor" in str(caught.value)
    with pytest.raises(TerminalError) as caught:
        solver.present([Challenge("dns-01", "www.other.test", "t", "t.k", "v")])
    assert caught.value.reason == "DnsZoneUnknown"


def test_a_challenge_left_pending_with_an_error_is_a_failed_validation_not_a_timeout() -> None:
    """step-ca 0.19 never marks a failed challenge invalid: at the deadline the error on the
    still-pending challenge decides ChallengeFailed (terminal) over ValidationTimeout (retried)."""
    chains = _chains()
    client = FakeClient(chains, on_poll=_raise(acme_errors.TimeoutError()))

    def poll(authz: messages.AuthorizationResource) -> tuple[messages.AuthorizationResource, None]:
        failed = authz.body.challenges[0].update(error=messages.Error(
            typ="urn:ietf:params:acme:error:connection", detail="dial tcp 127.0.0.1:80: connection refused"))
        return authz.update(body=authz.body.update(challenges=[failed])), None

    client.poll = poll  # type: ignore[attr-defined]
    solver = RecordingSolver()
    with pytest.raises(TerminalError) as caught:
        _submit(_connector(client, solver=solver), chains.csr_pem)
    assert caught.value.reason == "ChallengeFailed"
    assert "www.example.test (http-01)" in caught.value.message and "connection refused" in caught.value.message
    assert solver.cleaned == solver.presented
