"""The main job end to end on the real local stack: the Key Vault emulator and a Prefect server,
each in its own process, flows run through the ``certlc`` command as a user runs them.

These tests share one stack (module scope): starting Prefect costs 10-20 s.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.keyvault.certificates import CertificateClient, CertificatePolicy
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certlc.ca.devca import DevCA
from certlc.config import TemplateSpec, load_settings
from certlc.demo import DEMO_TEMPLATES, write_config
from certlc.stack import CLI, LocalStack, free_port, start_emulator, start_prefect_server
from certlc.x509 import san_strings, template_of

pytestmark = pytest.mark.e2e

WORKER = "00000000-0000-0000-0000-00000000a001"
AGENT = "00000000-0000-0000-0000-00000000a002"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class Stack:
    def __init__(self, state: Path, config: Path, env: dict[str, str], api: str):
        self.state, self.config, self.env, self.api = state, config, env, api
        self.settings = load_settings(config)
        self.ca = DevCA(self.settings.devca_path, self.settings.devca.templates)
        self.outputs: list[str] = []  # everything the commands printed, for the secret scan

    def client(self, principal: str = WORKER) -> CertificateClient:
        cred = DefaultAzureCredential(managed_identity_client_id=principal)
        return CertificateClient(self.settings.vaults[0].url, cred, connection_verify=str(self.settings.azure.ca_bundle),
                                 verify_challenge_resource=False)

    def secrets(self, principal: str = AGENT) -> SecretClient:
        cred = DefaultAzureCredential(managed_identity_client_id=principal)
        return SecretClient(self.settings.vaults[0].url, cred, connection_verify=str(self.settings.azure.ca_bundle),
                            verify_challenge_resource=False)

    def certlc(self, *args: str, config: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [*CLI, *args]
        if config is not None or args[0] in ("renew", "sweep"):
            cmd += ["--config", str(config or self.config)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=timeout,
                              check=False)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def seed(self, name: str, *, template: str, remaining_days: float, lifetime_days: int, key: str = "EC",
             dns: list[str] | None = None, ips: list[str] | None = None, tags: dict[str, str] | None = None) -> None:
        client = self.client()
        policy = CertificatePolicy(
            issuer_name="Unknown", subject=f"CN={(dns or [name])[0]}", san_dns_names=dns, san_ip_addresses=ips,
            key_type=key, key_size=2048 if key == "RSA" else None, key_curve_name="P-256" if key == "EC" else None,
            content_type="application/x-pkcs12",
        )
        operation = client.begin_create_certificate(name, policy=policy, tags=tags).result()
        csr = x509.load_der_x509_csr(bytes(operation.csr))
        not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=remaining_days)
        cert = self.ca.sign(csr, self.ca.template(template), not_before=not_after - dt.timedelta(days=lifetime_days),
                            not_after=not_after)
        client.merge_certificate(name, [c.public_bytes(serialization.Encoding.DER) for c in [cert, *self.ca.chain]],
                                 tags=tags)

    def versions(self, name: str) -> int:
        # Issued versions only: a pending operation shows as a disabled version without a thumbprint.
        return sum(1 for v in self.client().list_properties_of_certificate_versions(name) if v.x509_thumbprint)

    def audit(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for path in sorted(self.settings.emulator_path.rglob("audit*.jsonl")):
            lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return lines


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    state = tmp_path_factory.mktemp("stack")
    held = [TemplateSpec(name="NeedsApproval", approval="manager", validity_days=60),
            TemplateSpec(name="Refused", approval="deny")]
    # The shortest lock lease Prefect allows: the crash test waits for the killed run's lease to run out.
    config = write_config(state, free_port(), free_port(), [*DEMO_TEMPLATES, *held], lease=60)
    settings = load_settings(config)
    procs = LocalStack()
    saved = dict(os.environ)
    try:
        emu, endpoints = start_emulator(config, settings.emulator_path, state / "logs" / "emulator.log")
        procs.processes.append(emu)
        server, api = start_prefect_server(state / "prefect", state / "logs" / "prefect.log")
        procs.processes.append(server)
        env = {"IDENTITY_ENDPOINT": endpoints["identity_endpoint"], "IDENTITY_HEADER": endpoints["identity_header"],
               "PREFECT_API_URL": api, "PREFECT_HOME": str(state / "prefect")}
        os.environ.update(env)
        yield Stack(state, config, env, api)
    finally:
        procs.stop()
        os.environ.clear()
        os.environ.update(saved)


def test_sweep_renews_due_certificates_once_and_leaves_the_rest(stack: Stack) -> None:
    stack.seed("due-ec", template="WebServerShort", remaining_days=10, lifetime_days=90, dns=["due.example", "b.example"],
               tags={"Recipient": "owner@contoso.com"})
    stack.seed("due-rsa-ip", template="WebServer", remaining_days=-2, lifetime_days=730, key="RSA",
               dns=["ip.example"], ips=["10.1.2.3", "2001:db8::7"])
    stack.seed("fresh", template="WebServer", remaining_days=600, lifetime_days=730)
    before = {n: stack.client().get_certificate(n) for n in ("due-ec", "due-rsa-ip", "fresh")}
    versions = {n: stack.versions(n) for n in before}

    proc = stack.certlc("sweep", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    outcomes = {r["name"]: r["outcome"] for r in result["certificates"]}
    assert outcomes["due-ec"] == "Renewed" and outcomes["due-rsa-ip"] == "Renewed" and outcomes["fresh"] == "NotDue"

    for name in ("due-ec", "due-rsa-ip"):
        old = x509.load_der_x509_certificate(bytes(before[name].cer))
        bundle = stack.client().get_certificate(name)
        new = x509.load_der_x509_certificate(bytes(bundle.cer))
        assert stack.versions(name) == versions[name] + 1
        assert new.subject == old.subject
        assert san_strings(new) == san_strings(old)
        assert type(new.public_key()) is type(old.public_key()) and new.public_key().key_size == old.public_key().key_size
        assert template_of(new) == template_of(old)
        validity = stack.ca.template(template_of(new).identifier).validity_days
        assert abs(new.not_valid_after_utc - dt.datetime.now(dt.UTC) - dt.timedelta(days=validity)) < dt.timedelta(hours=1)
        assert bundle.properties.tags == before[name].properties.tags  # tags re-applied

        # The new version's secret holds a private key matching the new certificate.
        secret = stack.secrets().get_secret(name)
        key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
        assert cert == new
        assert key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            == new.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert stack.client().get_certificate("fresh").properties.version == before["fresh"].properties.version
    assert stack.versions("fresh") == versions["fresh"]

    # The key was made inside the vault: the worker never imported anything or read a secret.
    worker_calls = [a for a in stack.audit() if a.get("principal") == "worker"]
    assert worker_calls and not [a for a in worker_calls if "/import" in a["path"] or a["path"].startswith("/secrets")]

    again = stack.certlc("sweep", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r for r in json.loads(again.stdout)["results"]] == []
    assert {n: stack.versions(n) for n in before} == {"due-ec": versions["due-ec"] + 1,
                                                      "due-rsa-ip": versions["due-rsa-ip"] + 1, "fresh": versions["fresh"]}


CRASH_AFTER_CSR = textwrap.dedent("""
    import os, signal, sys
    from prefect import task
    import flows.renew as renew

    @task(name="submit-to-ca")
    def killed(snapshot, pending, template, ca_profile):
        # The process dies here, after the CSR step completed and before the CA saw anything.
        os.kill(os.getpid(), signal.SIGKILL)

    renew.submit_to_ca = killed
    renew.renew_certificate(vault=sys.argv[1], name=sys.argv[2])
""")


def test_a_renewal_killed_after_the_csr_step_reuses_the_pending_operation(stack: Stack) -> None:
    stack.seed("crashy", template="WebServerShort", remaining_days=5, lifetime_days=90)
    versions = stack.versions("crashy")
    seen = len(stack.audit())
    env = {**os.environ, **stack.env, "CERTLC_CONFIG": str(stack.config),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(stack.settings.results_path)}
    proc = subprocess.run([sys.executable, "-c", CRASH_AFTER_CSR, "demo", "crashy"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[2], timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    pending = stack.client().get_certificate_operation("crashy")
    assert pending.status.lower() == "inprogress"
    csr_key = x509.load_der_x509_csr(bytes(pending.csr)).public_key()

    rerun = stack.certlc("renew", "demo", "crashy", "--json")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reusing the pending version" in rerun.stderr
    new = x509.load_der_x509_certificate(bytes(stack.client().get_certificate("crashy").cer))
    assert new.public_key() == csr_key  # the CSR made before the crash is the one that was signed
    assert stack.versions("crashy") == versions + 1
    creates = [a for a in stack.audit()[seen:] if a["method"] == "POST"
               and a["path"].endswith("/certificates/crashy/create")]
    assert len(creates) == 1  # one CSR across the crashed run and the re-run


def test_a_request_held_for_approval_is_merged_once_after_the_ca_manager_approves(stack: Stack) -> None:
    stack.seed("held", template="NeedsApproval", remaining_days=3, lifetime_days=60)
    versions = stack.versions("held")
    first = stack.certlc("renew", "demo", "held", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    outcome = json.loads(first.stdout)
    assert outcome["outcome"] == "Pending" and outcome["ca_request_id"]
    assert stack.versions("held") == versions  # nothing merged while the CA holds it
    again = stack.certlc("renew", "demo", "held", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["ca_request_id"] == outcome["ca_request_id"]  # not submitted twice

    stack.ca.set_decision(outcome["ca_request_id"], "approve")
    done = stack.certlc("sweep", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = {r["name"]: r for r in json.loads(done.stdout)["results"]}
    assert result["held"]["outcome"] == "Renewed" and result["held"]["ca_request_id"] == outcome["ca_request_id"]
    assert stack.versions("held") == versions + 1


def test_a_denied_request_is_reported_and_changes_nothing(stack: Stack) -> None:
    # Issued once from a template the CA now refuses (its seeding bypasses the CA's policy).
    stack.seed("refused", template="Refused", remaining_days=3, lifetime_days=365)
    versions = stack.versions("refused")
    proc = stack.certlc("renew", "demo", "refused", "--json")
    assert proc.returncode == 1
    outcome = json.loads(proc.stdout)
    assert outcome["outcome"] == "Denied" and "CERTSRV_E_TEMPLATE_DENIED" in outcome["message"]
    assert stack.versions("refused") == versions
    # The vault is left as it was: no pending operation waits for a CA that said no.
    with pytest.raises(ResourceNotFoundError):
        stack.client().get_certificate_operation("refused")

    # Told once: the next triggers (a sweep, another event) neither ask the CA again nor tell the
    # owners again until renewal.denied_retry_hours has passed; --force asks at once.
    requests = len(list((stack.settings.devca_path / "requests").glob("*.json")))
    swept = stack.certlc("sweep", "--json")
    assert swept.returncode == 1, swept.stderr[-3000:]  # a denial still counts: the certificate is not renewed
    result = {r["name"]: r for r in json.loads(swept.stdout)["results"]}["refused"]
    assert result["outcome"] == "Denied" and result["reason"] == "DeniedBefore"
    assert outcome["ca_request_id"] in result["message"] and "certlc renew --force" in result["message"]
    assert len(list((stack.settings.devca_path / "requests").glob("*.json"))) == requests  # the CA was not asked
    with pytest.raises(ResourceNotFoundError):  # and no CSR was made for it
        stack.client().get_certificate_operation("refused")
    forced = stack.certlc("renew", "demo", "refused", "--force", "--json")
    assert forced.returncode == 1 and json.loads(forced.stdout)["reason"] != "DeniedBefore"
    assert len(list((stack.settings.devca_path / "requests").glob("*.json"))) == requests + 1
    assert stack.versions("refused") == versions


def test_a_wrong_answer_from_the_ca_is_refused_told_once_and_its_pending_operation_kept(stack: Stack) -> None:
    stack.seed("lossy", template="WebServer", remaining_days=3, lifetime_days=365,
               dns=["lossy.example", "www.lossy.example"])
    versions = stack.versions("lossy")
    requests = stack.settings.devca_path / "requests"
    switch = stack.settings.devca_path / "DROP_SANS"  # the CA ignores the request's SANs
    switch.touch()
    try:
        first = stack.certlc("renew", "demo", "lossy", "--json")
        assert first.returncode == 1 and "lacks SANs of the old one" in first.stderr, first.stderr[-3000:]
        operation = stack.client().get_certificate_operation("lossy")  # kept for a correct certificate
        asked = len(list(requests.glob("*.json")))
        again = stack.certlc("renew", "demo", "lossy", "--json")
        assert again.returncode == 1, again.stderr[-3000:]
        outcome = json.loads(again.stdout)
        assert outcome["outcome"] == "Failed" and outcome["reason"] == "ResponseRefusedBefore", outcome
        assert "certlc renew --force" in outcome["message"]
        assert len(list(requests.glob("*.json"))) == asked  # neither the CA asked again ...
        assert stack.client().get_certificate_operation("lossy").request_id == operation.request_id  # ... nor a new CSR
        assert stack.versions("lossy") == versions  # and nothing merged
    finally:
        switch.unlink()
    forced = stack.certlc("renew", "demo", "lossy", "--force", "--json")  # start over with a new CSR
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert json.loads(forced.stdout)["outcome"] == "Renewed"
    assert stack.versions("lossy") == versions + 1
    assert len(list(requests.glob("*.json"))) == asked + 1


def test_duplicate_and_concurrent_renewals_make_exactly_one_new_version(stack: Stack) -> None:
    stack.seed("dup", template="WebServerShort", remaining_days=4, lifetime_days=90)
    versions = stack.versions("dup")
    requests = len(list((stack.settings.devca_path / "requests").glob("*.json")))
    env = {**os.environ, **stack.env}
    # Three runs at once, as an event, a queue message and a sweep might start them; one in a
    # different spelling (Key Vault names are case-insensitive).
    runs = [subprocess.Popen([*CLI, "renew", "demo", spelling, "--json", "--config", str(stack.config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for spelling in ("dup", "dup", "DUP")]
    results = [proc.communicate(timeout=600) for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0, 0], [err[-2000:] for _, err in results]
    outcomes = sorted(json.loads(out)["outcome"] for out, _ in results)
    assert outcomes.count("Renewed") == 1 and set(outcomes) <= {"Renewed", "NotDue", "AlreadyRenewed"}, outcomes
    assert stack.versions("dup") == versions + 1
    assert len(list((stack.settings.devca_path / "requests").glob("*.json"))) == requests + 1  # one CA request

    again = stack.certlc("renew", "demo", "dup", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["outcome"] == "NotDue"
    assert stack.versions("dup") == versions + 1
    forced = stack.certlc("renew", "demo", "dup", "--force", "--json")
    assert forced.returncode == 0 and json.loads(forced.stdout)["outcome"] == "Renewed"
    assert stack.versions("dup") == versions + 2


def test_a_pending_operation_made_for_other_names_is_replaced_not_signed(stack: Stack) -> None:
    stack.seed("hijack", template="WebServerShort", remaining_days=4, lifetime_days=90, dns=["hijack.example"])
    # Someone else starts a new version asking for an extra name.
    policy = stack.client().get_certificate_policy("hijack")
    evil = CertificatePolicy(issuer_name="Unknown", subject=policy.subject,
                             san_dns_names=["hijack.example", "evil.attacker.example"], key_type="EC",
                             key_curve_name="P-256")
    stack.client().begin_create_certificate("hijack", policy=evil).result()
    proc = stack.certlc("renew", "demo", "hijack", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deleted a pending operation that did not match this renewal" in proc.stderr
    assert "evil.attacker.example" in proc.stderr  # the warning says what was wrong with it
    new = x509.load_der_x509_certificate(bytes(stack.client().get_certificate("hijack").cer))
    assert san_strings(new) == ["DNS:hijack.example"]


def test_an_unknown_ca_connector_kind_is_refused_before_anything_is_written(stack: Stack, tmp_path: Path) -> None:
    stack.seed("kindless", template="WebServerShort", remaining_days=4, lifetime_days=90)
    bad = tmp_path / "certlc.toml"
    bad.write_text(stack.config.read_text().replace('kind = "devca"', 'kind = "nosuchca"'))
    writes = _writes(stack)
    proc = stack.certlc("renew", "demo", "kindless", config=bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "'nosuchca', which is not a known connector" in proc.stderr
    assert _writes(stack) == writes
    # Through the sweep the renewal flow itself refuses, at its read step, before any write.
    swept = stack.certlc("sweep", "--json", config=bad)
    assert swept.returncode == 1
    failed = {r["name"]: r for r in json.loads(swept.stdout)["results"]}
    assert failed["kindless"]["outcome"] == "Failed" and failed["kindless"]["reason"] == "CaKindUnknown"
    assert "Traceback" not in swept.stderr  # an expected refusal is a line, not a stack dump
    assert _writes(stack) == writes


def _writes(stack: Stack) -> int:
    return sum(1 for a in stack.audit() if a["method"] in ("POST", "PATCH", "PUT", "DELETE") and a["status"] < 400)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["renew", "demo", "does-not-exist"], "does not exist in vault 'demo'", id="missing certificate"),
        pytest.param(["renew", "elsewhere", "web"], "vault 'elsewhere' is not in the configuration", id="unknown vault"),
        pytest.param(["renew", "demo", "no-template"], "no template extension and no 'Template' tag", id="no template"),
        pytest.param(["renew", "demo", "bad name!"], "", id="invalid certificate name"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(stack: Stack, args: list[str], fragment: str) -> None:
    if "no-template" in args:
        # A self-signed certificate: no template extension, and no Template tag.
        stack.client().begin_create_certificate("no-template", policy=CertificatePolicy.get_default()).result()
    writes = _writes(stack)
    proc = stack.certlc(*args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("certlc: error:"), proc.stderr
    assert fragment in lines[0]
    assert _writes(stack) == writes


def test_an_unreadable_config_file_is_one_clear_line(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[vaults]\nname = ")
    for args in (["renew", "demo", "x"], ["sweep"]):
        proc = stack.certlc(*args, config=bad)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and "not valid TOML" in proc.stderr
    proc = stack.certlc("sweep", config=tmp_path / "missing.toml")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


# `make demo CA=...`: one value picks the CA; each run starts that CA's real server (the AD CS
# web-enrollment simulator over HTTPS, cfssl serve, Pebble) and renews through its connector.
@pytest.mark.parametrize(("ca", "least"), [("devca", 9), ("adcs-web", 9), ("cfssl", 7), ("acme", 3)])
def test_demo_renews_every_due_certificate_and_nothing_else(stack: Stack, tmp_path: Path, ca: str,
                                                            least: int) -> None:
    proc = stack.certlc("demo", "--json", "--state-dir", str(tmp_path / "demo"), "--ca", ca, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["ca"] == ca and report["ok"] is True
    rows = report["certificates"]
    assert len(rows) >= least and any(r["due"] for r in rows) and any(not r["due"] for r in rows)
    for row in rows:
        if row["due"]:
            assert row["renewed"] and row["sans_kept"] and row["template_kept"] and row["key_kept"], row
            assert row["new_thumbprint"] != row["old_thumbprint"]
        else:
            assert not row["renewed"] and row["new_thumbprint"] == row["old_thumbprint"], row
    assert report["second_sweep_renewed"] == []
    # The agent on the stack watched three certificates and installed each renewed version within
    # one polling interval (plus the demo's observation lag) and reported it to the rollout state.
    agent = report["agent"]
    assert agent["ok"] is True and len(agent["certificates"]) == 3
    renewed = {r["name"]: r["new_thumbprint"] for r in rows if r["renewed"]}
    for row in agent["certificates"]:
        assert row["installed_version"] == row["vault_version"] == row["reported_version"], row
        if row["name"] in renewed:
            assert row["installed_after_merge_s"] <= agent["interval_seconds"] + 2, row
    assert sum(r["name"] in renewed for r in agent["certificates"]) >= 2
    # The owners of each renewed certificate (its Recipient tag) got exactly one e-mail through the
    # stack's SMTP sink, and nobody got one for a certificate that was not renewed.
    mail = report["mail"]
    assert mail["ok"] is True, mail
    assert {c["name"] for c in mail["certificates"] if c["renewed_mails"] == 1} == set(renewed)


def test_status_shows_every_certificate_the_vault_holds_with_its_last_renewal(stack: Stack) -> None:
    proc = stack.certlc("status", "--json", config=stack.config)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    listed = list(stack.client().list_properties_of_certificates())
    assert sorted(c["name"] for c in data["certificates"]) == sorted(p.name for p in listed)
    now = dt.datetime.now(dt.UTC)
    expected = {"Expired": 0, "ExpiringSoon": 0, "NotExpired": 0}
    for prop in listed:  # the vault's own expiries, against the default 30-day threshold
        left = prop.expires_on - now if prop.expires_on else dt.timedelta(0)
        expected["Expired" if left <= dt.timedelta(0) else
                 "ExpiringSoon" if left < dt.timedelta(days=30) else "NotExpired"] += 1
    assert data["counts"] == expected and data["vault_errors"] == {}
    by = {c["name"]: c for c in data["certificates"]}
    renewed = stack.client().get_certificate("due-ec")
    assert by["due-ec"]["last_outcome"] == "Renewed" and by["due-ec"]["recipients"] == ["owner@contoso.com"]
    assert by["due-ec"]["version"] == renewed.properties.version
    assert by["due-ec"]["thumbprint"] == bytes(renewed.properties.x509_thumbprint).hex().upper()
    assert by["due-ec"]["subject"] == "CN=due.example" and by["due-ec"]["template"]
    assert by["fresh"]["last_outcome"] is None and by["fresh"]["status"] == "NotExpired"
    table = stack.certlc("status", config=stack.config)
    assert table.returncode == 0 and "due-ec" in table.stdout and "Renewed" in table.stdout
    unknown = stack.certlc("status", "--vault", "nope", config=stack.config)
    assert unknown.returncode == 2 and "no vault named nope" in unknown.stderr

    # Recorded, the same inventory is what /metrics serves: parsed with prometheus_client's parser,
    # every certificate's expiry and status match the vault.
    assert stack.certlc("status", "--json", "--record", config=stack.config).returncode == 0
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    from certlc.config import WebhookSettings
    from certlc.webhook import create_app

    settings = stack.settings.model_copy(update={"webhook": WebhookSettings(shared_key="metrics-key-0123")})
    scrape = TestClient(create_app(settings, sink=None)).get(  # type: ignore[arg-type]
        "/metrics", headers={"Authorization": "Bearer metrics-key-0123"})
    assert scrape.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    expiry = {s.labels["name"]: s.value for s in families["certlc_certificate_expiration_timestamp_seconds"].samples}
    assert expiry == {p.name: p.expires_on.timestamp() for p in listed}
    totals = {s.labels["status"]: s.value for s in families["certlc_certificates"].samples}
    assert totals == expected
    attempts = {s.labels["name"]: s.value for s in families["certlc_certificate_renewal_attempts"].samples
                if s.name.endswith("_total")}
    assert attempts["due-ec"] >= 1 and attempts["fresh"] == 0


def test_the_inventory_flow_records_every_certificate_for_metrics_and_the_dashboard(stack: Stack) -> None:
    code = "import json; from flows.inventory import inventory; print(json.dumps(inventory()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **stack.env, "CERTLC_CONFIG": str(stack.config),
                               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(stack.settings.results_path)},
                          cwd=Path(__file__).resolve().parents[2])
    stack.outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    listed = sorted(p.name for p in stack.client().list_properties_of_certificates())
    assert result["certificates"] == len(listed) and result["vault_errors"] == {}
    from certlc.history import History

    taken_at, rows = History(stack.settings.history_path).latest_inventory()
    assert taken_at is not None and sorted(r["name"] for r in rows) == listed
    assert sum(result["counts"].values()) == len(listed)


def _secret_needles(stack: Stack) -> dict[str, str]:
    """Values that must never appear anywhere: key material, PFX bytes, tokens, the identity header."""
    needles = {"PEM private key": "PRIVATE KEY-----", "identity header": stack.env["IDENTITY_HEADER"]}
    token = DefaultAzureCredential(managed_identity_client_id=WORKER).get_token("https://vault.azure.net/.default").token
    needles["worker token"] = token
    for key_file in stack.settings.devca_path.glob("*.key"):  # the CA's own keys
        der = serialization.load_pem_private_key(key_file.read_bytes(), None).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        needles[f"dev CA key {key_file.name}"] = base64.b64encode(der).decode()[60:120]
    for prop in stack.client().list_properties_of_certificates():
        secret = stack.secrets().get_secret(prop.name)
        needles[f"PFX of {prop.name}"] = secret.value[100:160]
        key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        needles[f"private key of {prop.name} (base64)"] = base64.b64encode(der).decode()[60:120]
        needles[f"private key of {prop.name} (hex)"] = der.hex()[120:200]
    return needles


def test_no_secret_reaches_results_logs_or_output(stack: Stack) -> None:
    """Runs last in this module: scans everything the other tests produced."""
    needles = _secret_needles(stack)
    haystacks: dict[str, str] = {"command output": "\n".join(stack.outputs)}
    results = stack.settings.results_path
    files = [p for p in results.rglob("*") if p.is_file()] if results.exists() else []
    assert files, "the flows persisted no results"
    for path in files:
        raw = path.read_text(errors="replace")
        json.loads(raw)  # results are JSON, never pickles (a pickle would also run code when loaded)
        haystacks[str(path)] = raw
        # Prefect wraps results in JSON; decode any base64 payloads so nothing hides inside them.
        try:
            data = json.loads(raw)
            haystacks[str(path)] += json.dumps(data)
            if isinstance(data.get("result"), str):
                haystacks[str(path)] += base64.b64decode(data["result"] + "==", validate=False).decode(errors="replace")
        except (ValueError, AttributeError):
            pass
    logs = httpx.post(f"{stack.api}/logs/filter", json={"limit": 200}, timeout=30).json()
    offset = 200
    while True:
        page = httpx.post(f"{stack.api}/logs/filter", json={"limit": 200, "offset": offset}, timeout=30).json()
        if not page:
            break
        logs += page
        offset += 200
    haystacks["Prefect logs"] = "\n".join(entry["message"] for entry in logs)
    artifacts = httpx.post(f"{stack.api}/artifacts/filter", json={"limit": 200}, timeout=30).json()
    haystacks["Prefect artifacts"] = json.dumps(artifacts)
    for log in (stack.state / "logs").glob("*.log"):
        haystacks[str(log)] = log.read_text(errors="replace")
    assert len(logs) > 20 and artifacts
    leaks = [(what, where) for what, needle in needles.items() for where, text in haystacks.items() if needle in text]
    assert leaks == []
