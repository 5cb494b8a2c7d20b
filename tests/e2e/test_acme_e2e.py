"""The ACME connector against a real Pebble that validates for real (no PEBBLE_VA_ALWAYS_VALID):
http-01 through the built-in responder (Pebble's DNS: pebble-challtestsrv, every name 127.0.0.1),
dns-01 through RFC 2136 updates to a real BIND, EAB, alternate chains, check(), and one full
renewal of a Key Vault emulator certificate through ``certlc renew``."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certlc.ca import DispositionStatus, SigningRequest, connector_for
from certlc.ca.acme import AcmeConnector
from certlc.ca.acme_solvers import Challenge, HttpResponderSolver, Rfc2136Solver, WebrootSolver
from certlc.config import load_settings
from certlc.errors import TerminalError
from certlc.localca.bind import Named, start_named
from certlc.localca.pebble import ChallTestSrv, Pebble, start_challtestsrv, start_pebble
from certlc.stack import _tcp_open, free_port, stop_process, wait_until

pytestmark = [
    pytest.mark.e2e,
    # CI runs as root and installs pebble and bind9, so there a missing binary must fail, not skip.
    pytest.mark.skipif(shutil.which("pebble") is None and os.geteuid() != 0,
                       reason="pebble is not installed (apt-get install pebble bind9 bind9-utils)"),
]

EAB_KID, EAB_HMAC = "kid-1", "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
WRONG_HMAC = "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH"


@pytest.fixture(scope="module")
def challtestsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallTestSrv]:
    with start_challtestsrv(tmp_path_factory.mktemp("challtestsrv")) as server:
        yield server


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, challtestsrv: ChallTestSrv) -> Iterator[Pebble]:
    """Pebble resolving through challtestsrv, dialling http-01 on a free port, one alternate root."""
    with start_pebble(tmp_path_factory.mktemp("pebble"), dns_server=challtestsrv.dns_server, http_port=free_port(),
                      alternate_roots=1) as server:
        yield server


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Named]:
    with start_named(tmp_path_factory.mktemp("named"), zone="acme.test") as server:
        yield server


@pytest.fixture(scope="module")
def pebble_bind(tmp_path_factory: pytest.TempPathFactory, named: Named) -> Iterator[Pebble]:
    """Pebble whose validation authority asks the BIND that certlc updates."""
    with start_pebble(tmp_path_factory.mktemp("pebble-bind"), dns_server=named.server) as server:
        yield server


def _csr(*names: str, cn: str | None = None, ips: Sequence[str] = ()) -> str:
    """A CSR for ``names`` (DNS SANs) and ``ips`` (IP SANs), CN ``cn`` (default the first name);
    no SAN extension at all when both are empty, as Key Vault makes for a policy without SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0])]))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _connector(tmp_path: Path, endpoint: str, **options: Any) -> AcmeConnector:
    options.setdefault("timeout_seconds", 30)
    settings = load_settings(state_dir=str(tmp_path / "state"),
                             ca_profiles={"acme": {"kind": "acme", "endpoint": endpoint, "options": options}})
    connector = connector_for("acme", settings)
    assert isinstance(connector, AcmeConnector)
    return connector


def _http(tmp_path: Path, pebble: Pebble, **options: Any) -> AcmeConnector:
    return _connector(tmp_path, pebble.directory_url, ca_bundle=str(pebble.ca_bundle), challenge="http-01",
                      http_listen=f"127.0.0.1:{pebble.http_port}", email="ops@example.test", **options)


def _rfc2136(tmp_path: Path, pebble: Pebble, named: Named, **options: Any) -> AcmeConnector:
    options.setdefault("rfc2136_tsig_secret_file", str(named.key_file))  # tsig-keygen's output as it is
    return _connector(tmp_path, pebble.directory_url, ca_bundle=str(pebble.ca_bundle), challenge="dns-01",
                      dns_provider="rfc2136", rfc2136_server=named.server, **options)


def _chain(result: Any) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.encode()) for p in (result.certificate_pem, *result.chain_pem)]


def _verify_to(chain: list[x509.Certificate], root: x509.Certificate) -> None:
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)


def _txt(named: Named, name: str) -> list[str]:
    reply = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.TXT), named.host, port=named.port, timeout=5)
    return [b"".join(r.strings).decode() for rrset in reply.answer for r in rrset]


# (a) http-01 -----------------------------------------------------------------------------------
def test_http01_through_the_builtin_responder_issues_a_chain_to_pebbles_root(pebble: Pebble, tmp_path: Path) -> None:
    connector = _http(tmp_path, pebble)
    assert connector.check().ok, connector.check()
    result = connector.submit(SigningRequest(_csr("www.example.test", "api.example.test"), "", vault="demo",
                                             certificate="www"))
    assert result.status is DispositionStatus.ISSUED, result
    chain = _chain(result)
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["api.example.test", "www.example.test"]
    _verify_to(chain, pebble.roots()[0])
    assert result.request_id.startswith(pebble.directory_url.rsplit("/", 1)[0])  # the order URL
    assert not HttpResponderSolver("127.0.0.1", pebble.http_port).serving()  # stopped after the order


def test_concurrent_orders_share_one_responder_and_one_account(pebble: Pebble, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    connectors = [_http(tmp_path, pebble) for _ in range(3)]  # one state dir: one account key
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: c[1].submit(SigningRequest(_csr(f"c{c[0]}.example.test"), "")),
                                enumerate(connectors)))
    assert [r.status for r in results] == [DispositionStatus.ISSUED] * 3, results


def test_an_ip_certificate_whose_cn_is_the_ip_address(pebble: Pebble, tmp_path: Path) -> None:
    """CN=127.0.0.1 with SAN IP:127.0.0.1 (RFC 8738): ordered as that IP address, validated over
    http-01 at 127.0.0.1, issued with the address in the SANs."""
    result = _http(tmp_path, pebble).submit(SigningRequest(_csr(cn="127.0.0.1", ips=["127.0.0.1"]), ""))
    assert result.status is DispositionStatus.ISSUED, result
    sans = _chain(result)[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == []
    _verify_to(_chain(result), pebble.roots()[0])


def test_a_cn_only_csr_is_denied_with_what_to_change_not_as_an_account_problem(pebble: Pebble,
                                                                                tmp_path: Path) -> None:
    """A Key Vault policy with a subject CN and no SANs: Pebble would refuse it at finalize as
    ``unauthorized`` ("different number of DNSnames identifiers than CSR specifies"). certlc
    denies it before the order, telling the owner to add the CN to the policy's SANs."""
    connector = _http(tmp_path, pebble)
    result = connector.submit(SigningRequest(_csr(cn="legacy.example.test"), ""))
    assert result.status is DispositionStatus.DENIED and result.reason == "CsrNamesMissing", result
    assert "add 'legacy.example.test' as a DNS name" in result.message
    assert "subject_alternative_names.dns_names" in result.message
    # A CSR whose CN is not among its SANs reaches Pebble (RFC 8555 lets a name sit in the CN
    # only; Let's Encrypt and step-ca certify it), which refuses it at finalize: a refusal of the
    # request with Pebble's words, not "refused the ACME account".
    result = connector.submit(SigningRequest(_csr("api.legacy.example.test", cn="legacy.example.test"), ""))
    assert result.status is DispositionStatus.DENIED and result.reason == "RequestRefused", result
    assert "refused to finalize the order with this CSR" in result.message and "unauthorized" in result.message
    assert "account" not in result.message.lower()
    assert result.request_id.startswith(pebble.directory_url.rsplit("/", 1)[0])  # the order URL


def test_http01_from_a_webroot_served_by_another_user_under_umask_077(pebble: Pebble, tmp_path: Path) -> None:
    """certlc runs with umask 0077 (CLI, systemd UMask=0077); the web server as another user.
    The directories certlc creates must let it through, or Pebble gets a 404 (ChallengeFailed)."""
    if os.geteuid() != 0:
        pytest.skip("serving the webroot as another user (nobody) needs root")
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "/usr/bin/python3 serves the webroot as nobody"
    webroot = Path(tempfile.mkdtemp(prefix="certlc-webroot-"))  # not under pytest's 0700 tmp_path
    try:
        webroot.chmod(0o755)
        log = tmp_path / "webroot-server.log"
        with log.open("ab") as out:
            server = subprocess.Popen([python, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(webroot),
                                       str(pebble.http_port)], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, user="nobody", group="nogroup", cwd="/",
                                      start_new_session=True)
        try:
            wait_until(server, _tcp_open(pebble.http_port), "the webroot server", log, 30)
            connector = _connector(tmp_path, pebble.directory_url, ca_bundle=str(pebble.ca_bundle),
                                   challenge="http-01", webroot=str(webroot))
            assert isinstance(connector.solver, WebrootSolver)
            old = os.umask(0o077)
            try:
                assert connector.check().ok, connector.check()
                result = connector.submit(SigningRequest(_csr("webroot.example.test"), ""))
            finally:
                os.umask(old)
            assert result.status is DispositionStatus.ISSUED, (result, log.read_text()[-2000:])
            assert list((webroot / ".well-known" / "acme-challenge").iterdir()) == []  # cleaned up
        finally:
            stop_process(server)
    finally:
        shutil.rmtree(webroot, ignore_errors=True)


# (b) dns-01 through RFC 2136 to BIND --------------------------------------------------------------
def test_dns01_through_rfc2136_to_bind_issues_a_wildcard_and_removes_the_records(
        pebble_bind: Pebble, named: Named, tmp_path: Path) -> None:
    connector = _rfc2136(tmp_path, pebble_bind, named)
    health = connector.check()
    assert health.ok, health
    result = connector.submit(SigningRequest(_csr("acme.test", "*.acme.test", "www.acme.test"), ""))
    assert result.status is DispositionStatus.ISSUED, result
    names = _chain(result)[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == ["*.acme.test", "acme.test", "www.acme.test"]
    _verify_to(_chain(result), pebble_bind.roots()[0])
    assert _txt(named, "_acme-challenge.acme.test.") == [] and _txt(named, "_acme-challenge.www.acme.test.") == []


def test_rfc2136_with_a_configured_zone_and_inline_secret(pebble_bind: Pebble, named: Named, tmp_path: Path) -> None:
    connector = _rfc2136(tmp_path, pebble_bind, named, rfc2136_tsig_secret_file=None,
                         rfc2136_tsig_secret=named.secret, rfc2136_tsig_key_name=named.key_name,
                         rfc2136_zone="acme.test")
    assert connector.check().ok
    assert connector.submit(SigningRequest(_csr("inline.acme.test"), "")).issued


def test_an_hmac_md5_key_file_from_tsig_keygen_signs_what_bind_accepts(tmp_path: Path) -> None:
    """``algorithm hmac-md5;`` (tsig-keygen -a hmac-md5) used to crash in dnspython's use_tsig."""
    with start_named(tmp_path / "named-md5", zone="md5.test", algorithm="hmac-md5") as md5:
        assert "algorithm hmac-md5;" in md5.key_file.read_text()
        connector = _connector(tmp_path, "https://127.0.0.1:1/dir", challenge="dns-01", dns_provider="rfc2136",
                               rfc2136_server=md5.server, rfc2136_tsig_secret_file=str(md5.key_file))
        solver = connector.solver
        assert isinstance(solver, Rfc2136Solver)
        assert solver.check() == []  # a signed SOA probe BIND answers
        solver.zone = "md5.test."
        assert solver.check() == []  # a signed no-op update BIND accepts
        item = Challenge("dns-01", "www.md5.test", "t", "t.k", "md5-signed-value")
        solver.present([item])
        try:
            reply = dns.query.tcp(dns.message.make_query("_acme-challenge.www.md5.test.", dns.rdatatype.TXT),
                                  md5.host, port=md5.port, timeout=5)
            assert [b"".join(r.strings).decode() for rrset in reply.answer for r in rrset] == ["md5-signed-value"]
        finally:
            solver.cleanup([item])


def test_check_reports_a_wrong_tsig_secret(pebble_bind: Pebble, named: Named, tmp_path: Path) -> None:
    connector = _rfc2136(tmp_path, pebble_bind, named, rfc2136_tsig_secret_file=None,
                         rfc2136_tsig_secret="d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE=",
                         rfc2136_tsig_key_name=named.key_name, rfc2136_zone="acme.test")
    health = connector.check()
    assert not health.ok and "refused the signature of TSIG key" in health.problems[0]
    assert named.secret not in " ".join(health.problems)


# (c) failed validation -------------------------------------------------------------------------------
class WrongTxt:
    """The real RFC 2136 solver publishing a value that is not the challenge's."""

    challenge_type = "dns-01"

    def __init__(self, inner: Rfc2136Solver) -> None:
        self.inner = inner

    def _wrong(self, items: Sequence[Challenge]) -> list[Challenge]:
        return [Challenge(c.typ, c.identifier, c.token, c.key_authorization, "wrong-" + c.validation[6:])
                for c in items]

    def present(self, items: Sequence[Challenge]) -> None:
        self.inner.present(self._wrong(items))

    def cleanup(self, items: Sequence[Challenge]) -> None:
        self.inner.cleanup(self._wrong(items))

    def check(self) -> list[str]:
        return self.inner.check()


def test_a_wrong_txt_record_is_challenge_failed_naming_the_identifier(
        pebble_bind: Pebble, named: Named, tmp_path: Path) -> None:
    connector = _rfc2136(tmp_path, pebble_bind, named)
    assert isinstance(connector.solver, Rfc2136Solver)
    connector.solver = WrongTxt(connector.solver)
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(_csr("wrong.acme.test"), ""))
    assert caught.value.reason == "ChallengeFailed"
    assert "wrong.acme.test" in str(caught.value) and "dns-01" in str(caught.value)
    assert _txt(named, "_acme-challenge.wrong.acme.test.") == []  # cleaned up after the failure


def test_a_responder_pebble_cannot_reach_is_challenge_failed(pebble: Pebble, tmp_path: Path) -> None:
    connector = _http(tmp_path, pebble)
    connector.solver = HttpResponderSolver("127.0.0.1", free_port())  # not the port Pebble dials
    with pytest.raises(TerminalError) as caught:
        connector.submit(SigningRequest(_csr("nowhere.example.test"), ""))
    assert caught.value.reason == "ChallengeFailed" and "nowhere.example.test" in str(caught.value)


# (d) external account binding -----------------------------------------------------------------------
def test_external_account_binding(tmp_path: Path, challtestsrv: ChallTestSrv) -> None:
    with start_pebble(tmp_path / "pebble-eab", dns_server=challtestsrv.dns_server, http_port=free_port(),
                      eab_keys={EAB_KID: EAB_HMAC}) as eab_pebble:
        with pytest.raises(TerminalError) as caught:
            _http(tmp_path / "none", eab_pebble).submit(SigningRequest(_csr("eab.example.test"), ""))
        assert caught.value.reason == "CaAuthFailed" and "eab_kid" in str(caught.value)

        wrong = _http(tmp_path / "wrong", eab_pebble, eab_kid=EAB_KID, eab_hmac_key=WRONG_HMAC)
        health = wrong.check()
        assert not health.ok and "refused the ACME account" in health.problems[0]
        with pytest.raises(TerminalError) as caught:
            wrong.submit(SigningRequest(_csr("eab.example.test"), ""))
        assert caught.value.reason == "CaAuthFailed"
        assert WRONG_HMAC not in str(caught.value) and WRONG_HMAC not in repr(wrong)

        key_file = tmp_path / "eab.key"
        key_file.write_text(EAB_HMAC + "\n")
        right = _http(tmp_path / "right", eab_pebble, eab_kid=EAB_KID, eab_hmac_key_file=str(key_file))
        assert right.check().ok
        assert right.submit(SigningRequest(_csr("eab.example.test"), "")).issued


# (e) preferred chain ----------------------------------------------------------------------------------
def test_preferred_chain_picks_pebbles_alternate_root(pebble: Pebble, tmp_path: Path) -> None:
    default_root, alternate_root = pebble.roots()
    assert default_root.subject != alternate_root.subject
    alternate_cn = alternate_root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    result = _http(tmp_path, pebble, preferred_chain=alternate_cn).submit(SigningRequest(_csr("alt.example.test"), ""))
    assert result.issued
    _verify_to(_chain(result), alternate_root)
    unknown = _http(tmp_path, pebble, preferred_chain="No Such Root").submit(
        SigningRequest(_csr("alt.example.test"), ""))
    _verify_to(_chain(unknown), default_root)  # no match: the CA's default chain


# (f) check() ------------------------------------------------------------------------------------------
def test_check_names_a_wrong_directory_and_untrusted_tls(pebble: Pebble, tmp_path: Path) -> None:
    wrong = _http(tmp_path, pebble)
    wrong.directory_url = pebble.directory_url.replace("/dir", "/not-a-directory")
    health = wrong.check()
    assert not health.ok and "check the CA profile's endpoint" in health.problems[0]

    untrusted = _connector(tmp_path, pebble.directory_url, challenge="http-01",
                           http_listen=f"127.0.0.1:{pebble.http_port}")
    health = untrusted.check()
    assert not health.ok and "not trusted" in health.problems[0] and "ca_bundle" in health.problems[0]
    with pytest.raises(TerminalError) as caught:
        untrusted.submit(SigningRequest(_csr("tls.example.test"), ""))
    assert caught.value.reason == "CaTlsUntrusted"

    closed = _connector(tmp_path, f"https://127.0.0.1:{free_port()}/dir", challenge="http-01",
                        http_listen=f"127.0.0.1:{pebble.http_port}")
    health = closed.check()
    assert not health.ok and "cannot be reached" in health.problems[0]


# (g) a full renewal through certlc ---------------------------------------------------------------------
def test_a_key_vault_certificate_is_renewed_through_the_acme_profile(
        pebble: Pebble, tmp_path: Path) -> None:
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.certificates import CertificateClient, CertificatePolicy

    from certlc.demo import local_config_text
    from certlc.stack import CLI, LocalStack, start_emulator, start_prefect_server

    state = tmp_path / "stack"
    state.mkdir()
    profile = (f'[ca_profiles.acme]\nkind = "acme"\nendpoint = {json.dumps(pebble.directory_url)}\n'
               f'options = {{ ca_bundle = {json.dumps(str(pebble.ca_bundle))}, challenge = "http-01", '
               f'http_listen = "127.0.0.1:{pebble.http_port}", email = "ops@example.test", timeout_seconds = 60 }}\n')
    config = state / "certlc.toml"
    config.write_text(local_config_text(state, free_port(), free_port(), ca_profile="acme", ca_profiles=profile,
                                        written_by="test_acme_e2e"))
    settings = load_settings(config)
    procs = LocalStack()
    try:
        emulator, endpoints = start_emulator(config, settings.emulator_path, state / "logs" / "emulator.log")
        procs.processes.append(emulator)
        server, api = start_prefect_server(state / "prefect", state / "logs" / "prefect.log")
        procs.processes.append(server)
        env = {"IDENTITY_ENDPOINT": endpoints["identity_endpoint"], "IDENTITY_HEADER": endpoints["identity_header"],
               "PREFECT_API_URL": api, "PREFECT_HOME": str(state / "prefect")}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            client = CertificateClient(
                settings.vaults[0].url, DefaultAzureCredential(managed_identity_client_id=WORKER),
                connection_verify=str(settings.azure.ca_bundle), verify_challenge_resource=False)
            # The first version comes from Pebble too, through the same connector: no template anywhere.
            names = ["shop.example.test", "cdn.example.test"]
            policy = CertificatePolicy(issuer_name="Unknown", subject=f"CN={names[0]}", san_dns_names=names,
                                       key_type="EC", key_curve_name="P-256", content_type="application/x-pkcs12")
            operation = client.begin_create_certificate("shop", policy=policy).result()
            csr_pem = x509.load_der_x509_csr(bytes(operation.csr)).public_bytes(serialization.Encoding.PEM).decode()
            first = connector_for("acme", settings).submit(SigningRequest(csr_pem, ""))
            assert first.issued, first
            client.merge_certificate("shop", [c.public_bytes(serialization.Encoding.DER) for c in _chain(first)],
                                     tags={"Recipient": "owner@example.test"})
            old = x509.load_der_x509_certificate(bytes(client.get_certificate("shop").cer))

            proc = subprocess.run([*CLI, "renew", "demo", "shop", "--force", "--json", "--config", str(config)],
                                  capture_output=True, text=True, env={**os.environ, **env}, timeout=600, check=False)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
            outcome = json.loads(proc.stdout)
            assert outcome["outcome"] == "Renewed", outcome
            assert outcome["ca_request_id"].startswith(pebble.directory_url.rsplit("/", 1)[0])  # the order URL
            new = x509.load_der_x509_certificate(bytes(client.get_certificate("shop").cer))
            assert new.serial_number != old.serial_number and new.subject == old.subject
            sans = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)
            assert new.issuer == old.issuer  # Pebble's intermediate
            assert new.public_key() != old.public_key()  # a new key, made inside the vault
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        procs.stop()


WORKER = "00000000-0000-0000-0000-00000000a001"
