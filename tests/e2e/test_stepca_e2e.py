"""ACME against a real step-ca (0.19.0, built from Debian's Go sources by
deployments/dev/build-step-ca.sh, which .ci/run runs) with real challenge validation.

step-ca has no always-valid switch: it looks dns-01 TXT records (and http-01 addresses) up through
``--resolver``: pebble-challtestsrv (apt pebble), whose TXT records the raw-ACME tests set over its
management API, or BIND (apt bind9), which certlc's ACME connector updates over RFC 2136.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import josepy as jose
import pytest
from acme import challenges, client, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certlc.ca import CAConnector, Disposition, DispositionStatus, SigningRequest, connector_for
from certlc.config import load_settings
from certlc.errors import TerminalError
from certlc.localca.bind import BindNotFound, Named, start_named
from certlc.localca.pebble import ChallTestSrv, start_challtestsrv
from certlc.localca.stepca import StepCA, StepCANotFound, find_step_ca, start_step_ca
from certlc.stack import free_port


def _have_step_ca() -> bool:
    try:
        find_step_ca()
    except StepCANotFound:
        return False
    return True


pytestmark = [
    pytest.mark.e2e,
    # CI runs as root and .ci/run builds step-ca and installs pebble, so there a missing binary
    # must fail, not skip.
    pytest.mark.skipif(not _have_step_ca() and os.geteuid() != 0,
                       reason="no step-ca binary (run deployments/dev/build-step-ca.sh as root)"),
    pytest.mark.skipif(shutil.which("pebble-challtestsrv") is None and os.geteuid() != 0,
                       reason="pebble-challtestsrv is not installed (apt-get install pebble)"),
]

VALIDITY_HOURS = 720  # not step-ca's 24 h default: proves the configured claims are applied


@pytest.fixture(scope="module")
def challtestsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallTestSrv]:
    """pebble-challtestsrv as step-ca's DNS: every A query answers 127.0.0.1, TXT records as set."""
    server = start_challtestsrv(tmp_path_factory.mktemp("challtestsrv"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def step_ca(tmp_path_factory: pytest.TempPathFactory, challtestsrv: ChallTestSrv) -> Iterator[StepCA]:
    ca = start_step_ca(tmp_path_factory.mktemp("step-ca"), resolver=challtestsrv.dns_server,
                       validity_hours=VALIDITY_HOURS)
    yield ca
    ca.stop()


def _csr(names: list[str]) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def _split_pem(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def _verify_chain(ca: StepCA, leaf: x509.Certificate, intermediates: list[x509.Certificate],
                  name: str) -> None:
    verifier = PolicyBuilder().store(Store([ca.root])).build_server_verifier(x509.DNSName(name))
    built = verifier.verify(leaf, intermediates)
    assert built[-1] == ca.root


def _acme_client(ca: StepCA) -> tuple[client.ClientV2, jose.JWKRSA]:
    account_key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    net = client.ClientNetwork(account_key, verify_ssl=str(ca.root_pem), user_agent="certlc-tests")
    acme = client.ClientV2(client.ClientV2.get_directory(ca.directory_url, net), net=net)
    acme.new_account(messages.NewRegistration.from_data(email="ops@example.test", terms_of_service_agreed=True))
    return acme, account_key


def _dns01(authz: messages.AuthorizationResource) -> messages.ChallengeBody:
    return next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))


def test_raw_acme_dns01_is_validated_for_real_and_issues(step_ca: StepCA, challtestsrv: ChallTestSrv) -> None:
    """certbot's acme library against step-ca: a wrong TXT record is not accepted, the right one
    is, and the certificate chains leaf-first to step-ca's intermediate and root."""
    names = ["app.stepca.test", "www.stepca.test"]
    csr_pem, key = _csr(names)
    acme, account_key = _acme_client(step_ca)
    order = acme.new_order(csr_pem.encode())
    assert sorted(a.body.identifier.value for a in order.authorizations) == sorted(names)
    try:
        for authz in order.authorizations:
            chall = _dns01(authz)
            name = authz.body.identifier.value
            # Wrong value first: step-ca 0.19 looks it up at once, records the error and leaves
            # the challenge pending (it may be answered again), so the order cannot be finalized.
            challtestsrv.set_txt(f"_acme-challenge.{name}.", "not-the-key-authorization-digest")
            answered = acme.answer_challenge(chall, chall.response(account_key))
            assert answered.body.status == messages.STATUS_PENDING
            assert answered.body.error is not None and "rejectedIdentifier" in answered.body.error.typ
            challtestsrv.clear_txt(f"_acme-challenge.{name}.")
            challtestsrv.set_txt(f"_acme-challenge.{name}.", chall.validation(account_key))
            answered = acme.answer_challenge(chall, chall.response(account_key))
            assert answered.body.status == messages.STATUS_VALID, answered.body.error
        order = acme.poll_and_finalize(order, deadline=dt.datetime.now() + dt.timedelta(seconds=30))
    finally:
        for name in names:
            challtestsrv.clear_txt(f"_acme-challenge.{name}.")

    leaf, *chain = _split_pem(order.fullchain_pem)
    assert chain == [step_ca.intermediate]
    assert leaf.public_key() == key.public_key()
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == names
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(lifetime - dt.timedelta(hours=VALIDITY_HOURS)) < dt.timedelta(minutes=5)
    _verify_chain(step_ca, leaf, chain, names[1])


def test_raw_acme_order_for_a_name_without_its_record_never_becomes_ready(
        step_ca: StepCA, challtestsrv: ChallTestSrv) -> None:
    """No TXT record at all: the challenge stays unvalidated and finalizing is refused."""
    csr_pem, _ = _csr(["missing.stepca.test"])
    acme, account_key = _acme_client(step_ca)
    order = acme.new_order(csr_pem.encode())
    chall = _dns01(order.authorizations[0])
    answered = acme.answer_challenge(chall, chall.response(account_key))
    assert answered.body.status != messages.STATUS_VALID
    assert answered.body.error is not None
    with pytest.raises(messages.Error) as raised:
        acme.begin_finalization(order)  # (finalize_order would wait for "ready" instead)
    assert raised.value.code == "orderNotReady", raised.value


def test_jwk_provisioner_signs_with_a_one_time_token(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``start_step_ca(jwk=True)``: ``POST /1.0/sign`` with an OTT from the provisioner's key; a
    replayed token is refused."""
    with start_step_ca(tmp_path_factory.mktemp("step-ca-jwk"), acme=False, jwk=True, validity_hours=48) as ca:
        assert ca.jwk is not None
        name = "jwk.stepca.test"
        csr_pem, key = _csr([name])
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {"iss": ca.jwk.name, "aud": f"{ca.url}/1.0/sign", "sub": name, "sans": [name],
                  "iat": now, "nbf": now, "exp": now + 300, "jti": os.urandom(16).hex()}
        # Compact JWS with only alg and kid protected (josepy refuses a non-"application/" typ).
        ott = jose.JWS.sign(json.dumps(claims).encode(), key=jose.JWKEC(key=ca.jwk.key), alg=jose.ES256,
                            protect=frozenset(["alg", "kid"]), kid=ca.jwk.kid).to_compact().decode()
        trust = ssl.create_default_context(cafile=str(ca.root_pem))
        response = httpx.post(f"{ca.url}/1.0/sign", json={"csr": csr_pem, "ott": ott}, verify=trust, timeout=10)
        assert response.status_code == 201, response.text
        body = response.json()
        leaf = x509.load_pem_x509_certificate(body["crt"].encode())
        assert leaf.public_key() == key.public_key()
        assert _split_pem(body["ca"]) == [ca.intermediate]
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert abs(lifetime - dt.timedelta(hours=48)) < dt.timedelta(minutes=5)
        _verify_chain(ca, leaf, [ca.intermediate], name)
        replay = httpx.post(f"{ca.url}/1.0/sign", json={"csr": csr_pem, "ott": ott}, verify=trust, timeout=10)
        assert replay.status_code == 401


# --- certlc's ACME connector (kind "acme") against step-ca ---------------------------------------
#
# How step-ca 0.19 validates, and what the tests therefore use:
# * http-01: step-ca always fetches http://<name>:80/.well-known/acme-challenge/<token>; 0.19 has
#   no setting for another port (not in the ACME provisioner, not in the authority config) and its
#   HTTP client ignores proxy variables. challtestsrv (its resolver) answers 127.0.0.1 for every
#   name, so the connector's built-in responder must listen on 127.0.0.1:80: root (CI) or a lowered
#   net.ipv4.ip_unprivileged_port_start; otherwise that test skips.
# * dns-01: the connector's RFC 2136 solver updates a BIND primary (apt bind9, installed by
#   .ci/run) with a TSIG key, and a second step-ca resolves through that BIND. No port 80 needed.
# * A failed validation in step-ca 0.19 leaves the challenge *pending* with an error (it is never
#   marked invalid): the connector's poll runs to timeout_seconds, then finds the error on the
#   challenge and reports ChallengeFailed with step-ca's detail (not a retryable timeout).

CONNECTOR_NAMES = ["api.stepca.test", "portal.stepca.test"]


def _can_bind_port_80() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80
    except (OSError, ValueError):
        return False


def _acme_connector(tmp_path: Path, ca: StepCA, name: str = "stepca", **options: object) -> CAConnector:
    settings = load_settings(state_dir=str(tmp_path / "state"), ca_profiles={
        name: {"kind": "acme", "endpoint": ca.directory_url,
               "options": {"email": "ops@example.test", "ca_bundle": str(ca.root_pem), **options}},
    })
    return connector_for(name, settings)


def _assert_issued_by_step_ca(result: Disposition, ca: StepCA, key: ec.EllipticCurvePrivateKey,
                              names: list[str]) -> None:
    assert result.status is DispositionStatus.ISSUED, result
    assert result.certificate_pem is not None
    leaf = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in result.chain_pem]
    assert leaf.public_key() == key.public_key()  # the key Key Vault holds, nothing else
    assert chain == [ca.intermediate]  # leaf first (separately), then step-ca's intermediate
    assert sorted(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)) == sorted(names)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(lifetime - ca.validity) < dt.timedelta(minutes=5), lifetime
    assert result.request_id.startswith(f"{ca.url}/acme/acme/order/")
    _verify_chain(ca, leaf, chain, names[0])


@pytest.mark.skipif(not _can_bind_port_80(), reason="http-01 against step-ca needs 127.0.0.1:80 (root)")
def test_connector_http01_with_the_built_in_responder_on_port_80(step_ca: StepCA, tmp_path: Path) -> None:
    connector = _acme_connector(tmp_path, step_ca, challenge="http-01", http_listen="127.0.0.1:80",
                                timeout_seconds=30)
    assert connector.check().ok
    csr_pem, key = _csr(CONNECTOR_NAMES)
    result = connector.submit(SigningRequest(csr_pem, "", vault="demo", certificate="api"))
    _assert_issued_by_step_ca(result, step_ca, key, CONNECTOR_NAMES)


def test_connector_http01_answered_elsewhere_than_port_80_fails_validation(step_ca: StepCA, tmp_path: Path) -> None:
    """The responder on another port: step-ca 0.19 dials port 80, records the failure on the
    challenge and leaves it pending; after timeout_seconds the connector finds that error and
    reports a failed validation with step-ca's detail, not a timeout to retry."""
    connector = _acme_connector(tmp_path, step_ca, challenge="http-01", http_listen=f"127.0.0.1:{free_port()}",
                                timeout_seconds=3)
    csr_pem, _ = _csr(["elsewhere.stepca.test"])
    with pytest.raises(TerminalError) as raised:
        connector.submit(SigningRequest(csr_pem, "", vault="demo", certificate="elsewhere"))
    assert raised.value.reason == "ChallengeFailed", raised.value
    assert "elsewhere.stepca.test (http-01)" in raised.value.message


ZONE = "stepca.test"


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Named]:
    """BIND as the primary for stepca.test (every name A 127.0.0.1), TXT updates with a TSIG key."""
    try:
        named = start_named(tmp_path_factory.mktemp("bind"), zone=ZONE, key_name="certlc-stepca")
    except BindNotFound:
        if os.geteuid() != 0:
            pytest.skip("BIND is not installed (apt-get install bind9 bind9-utils)")
        raise  # CI: .ci/run installs bind9
    yield named
    named.stop()


@pytest.fixture(scope="module")
def step_ca_on_bind(tmp_path_factory: pytest.TempPathFactory, bind: Named) -> Iterator[StepCA]:
    ca = start_step_ca(tmp_path_factory.mktemp("step-ca-bind"), resolver=bind.server, validity_hours=VALIDITY_HOURS)
    yield ca
    ca.stop()


def test_connector_dns01_through_rfc2136_to_bind(step_ca_on_bind: StepCA, bind: Named, tmp_path: Path) -> None:
    names = [f"db.{ZONE}", f"*.apps.{ZONE}"]  # dns-01 also validates a wildcard
    connector = _acme_connector(tmp_path, step_ca_on_bind, challenge="dns-01", dns_provider="rfc2136",
                                rfc2136_server=bind.server, rfc2136_tsig_secret_file=str(bind.key_file),
                                timeout_seconds=30)
    assert connector.check().ok
    csr_pem, key = _csr(names)
    result = connector.submit(SigningRequest(csr_pem, "", vault="demo", certificate="db"))
    _assert_issued_by_step_ca(result, step_ca_on_bind, key, names)
