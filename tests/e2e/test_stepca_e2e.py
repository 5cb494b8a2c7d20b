"""ACME against a real step-ca (0.19.0, built from Debian's Go sources by
deployments/dev/build-step-ca.sh, which .ci/run runs) with real challenge validation.

step-ca has no always-valid switch: it looks dns-01 TXT records up through ``--resolver``, here
pebble-challtestsrv (apt package pebble), whose records the tests set over its management API.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import josepy as jose
import pytest
from acme import challenges, client, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certlc.localca.stepca import StepCA, StepCANotFound, find_step_ca, start_step_ca
from certlc.stack import free_port, stop_process, wait_until


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


@dataclass
class ChallTestSrv:
    dns: str  # host:port of its DNS server (every A query answers 127.0.0.1)
    management: str  # http://host:port
    proc: subprocess.Popen[bytes]

    def set_txt(self, name: str, value: str) -> None:
        httpx.post(f"{self.management}/set-txt", json={"host": f"_acme-challenge.{name}.", "value": value},
                   timeout=5).raise_for_status()

    def clear_txt(self, name: str) -> None:
        httpx.post(f"{self.management}/clear-txt", json={"host": f"_acme-challenge.{name}."},
                   timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def challtestsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallTestSrv]:
    binary = shutil.which("pebble-challtestsrv")
    assert binary, "pebble-challtestsrv is missing: .ci/run installs it with apt-get install pebble"
    log = tmp_path_factory.mktemp("challtestsrv") / "challtestsrv.log"
    http01, dns01, management = free_port(), free_port(), free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-http01", f"127.0.0.1:{http01}", "-https01", "", "-tlsalpn01", "",
             "-dns01", f"127.0.0.1:{dns01}", "-management", f"127.0.0.1:{management}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = ChallTestSrv(f"127.0.0.1:{dns01}", f"http://127.0.0.1:{management}", proc)
    # The management API answers 404 on "/" once it is up; any answer will do.
    wait_until(proc, lambda: httpx.get(server.management, timeout=1).status_code > 0, "pebble-challtestsrv",
               log, 10)
    yield server
    stop_process(proc)


@pytest.fixture(scope="module")
def step_ca(tmp_path_factory: pytest.TempPathFactory, challtestsrv: ChallTestSrv) -> Iterator[StepCA]:
    ca = start_step_ca(tmp_path_factory.mktemp("step-ca"), resolver=challtestsrv.dns,
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
            challtestsrv.set_txt(name, "not-the-key-authorization-digest")
            answered = acme.answer_challenge(chall, chall.response(account_key))
            assert answered.body.status == messages.STATUS_PENDING
            assert answered.body.error is not None and "rejectedIdentifier" in answered.body.error.typ
            challtestsrv.clear_txt(name)
            challtestsrv.set_txt(name, chall.validation(account_key))
            answered = acme.answer_challenge(chall, chall.response(account_key))
            assert answered.body.status == messages.STATUS_VALID, answered.body.error
        order = acme.poll_and_finalize(order, deadline=dt.datetime.now() + dt.timedelta(seconds=30))
    finally:
        for name in names:
            challtestsrv.clear_txt(name)

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
