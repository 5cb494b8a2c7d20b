"""``certlc agent`` against the local Key Vault emulator, as the agent principal (Key Vault Secrets User).

Three certificates are issued through the dev CA and merged, the agent installs them, one is
renewed (a new version merged), and the next ``--once`` pass installs exactly that one with one
GET per observed certificate, counted in the emulator's audit log. The SDK's behaviour on 429 is
checked on the wire against a small HTTPS server.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.certificates import CertificateClient, CertificatePolicy
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certlc.agent.poll import Throttled, sdk_secret_getter
from certlc.agent.settings import parse_agent_settings
from certlc.ca.devca import DevCA
from certlc.clients import reset_clients
from certlc.config import DevCASettings
from certlc.emulator import EmulatorHandle, read_audit_log
from certlc.localca.tls import localhost_tls
from certlc.x509 import load_any, sha1_thumbprint

pytestmark = pytest.mark.e2e

ClientsFactory = Callable[..., tuple[CertificateClient, SecretClient]]
CLI = [sys.executable, "-c", "from certlc.cli import main; main()"]
NAMES = ("agent-web", "agent-api", "agent-mail")
AZURE_VARIABLES = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                   "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TOKEN_CREDENTIALS",
                   "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET")


class Vault:
    """The emulator's vault 'demo' seen by the renewing worker, plus a dev CA to sign its CSRs."""

    def __init__(self, emulator: EmulatorHandle, clients: ClientsFactory, ca_dir: Path) -> None:
        self.emulator = emulator
        self.certificates, _ = clients(principal="worker")
        self.ca = DevCA(ca_dir, DevCASettings().templates)
        self.url = emulator.endpoints.vault_urls["demo"]

    def issue(self, name: str, content_type: str = "application/x-pkcs12") -> str:
        """A new version of ``name``: Key Vault makes the key and CSR, the dev CA signs, the worker merges."""
        policy = CertificatePolicy(issuer_name="Unknown", subject=f"CN={name}.contoso.com",
                                   san_dns_names=[f"{name}.contoso.com"], key_type="EC", key_curve_name="P-256",
                                   content_type=content_type)
        operation = self.certificates.begin_create_certificate(name, policy=policy, _polling_interval=0).result()
        csr = x509.load_der_x509_csr(bytes(operation.csr))
        template = self.ca.template("WebServer")
        assert template is not None
        cert = self.ca.sign(csr, template)
        merged = self.certificates.merge_certificate(
            name, [c.public_bytes(serialization.Encoding.DER) for c in [cert, *self.ca.chain]])
        assert merged.properties.version is not None
        return merged.properties.version

    def thumbprint(self, name: str) -> str:
        return bytes(self.certificates.get_certificate(name).properties.x509_thumbprint).hex().upper()


@pytest.fixture(scope="module")
def agent_env(emulator: EmulatorHandle) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AZURE_VARIABLES}
    return {**env, **emulator.endpoints.environment()}


@pytest.fixture
def vault(emulator: EmulatorHandle, emulator_clients: ClientsFactory, tmp_path: Path) -> Vault:
    return Vault(emulator, emulator_clients, tmp_path / "devca")


def write_settings(tmp_path: Path, emulator: EmulatorHandle, vault_url: str, interval: int = 3600) -> Path:
    """The Key Vault VM extension's settings, as an ARM template would carry them, plus certlc's keys."""
    settings = {
        "secretsManagementSettings": {
            "pollingIntervalInS": str(interval),
            "certificateStoreLocation": str(tmp_path / "store"),
            "requireInitialSync": True,
            "observedCertificates": [
                f"{vault_url}/secrets/agent-web",
                {"url": f"{vault_url}/secrets/agent-api", "customSymbolicLinkName": "api.pem",
                 "certlc": {"outputs": ["pem", "fullchain", "key"], "mode": "0640",
                            "link": str(tmp_path / "etc" / "api")}},
                {"url": f"{vault_url}/secrets/agent-mail", "certlc": {"outputs": ["pfx"], "pfx": {
                    "password_env": "AGENT_E2E_PFX_PASSWORD", "legacy": True}}},
            ],
        },
        "authenticationSettings": {"msiClientId": emulator.endpoints.principals["agent"]},
        # The agent's state (its rollout report) in the test's folder, not /var/lib/certlc-agent.
        "certlc": {"ca_bundle": emulator.endpoints.ca_bundle, "state_dir": str(tmp_path / "agent-state")},
    }
    path = tmp_path / "keyvault-extension.json"
    path.write_text(json.dumps(settings, indent=2))
    return path


def run_agent(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "agent", "--config", str(config), *args], capture_output=True, text=True,
                          env={**env, "AGENT_E2E_PFX_PASSWORD": "pfx-e2e-pw"}, timeout=120, check=False)


def outcomes(stdout: str) -> dict[str, str]:
    return {line.split(": ")[0].split("/")[-1]: line.split(": ")[1].split()[0]
            for line in stdout.splitlines() if ": " in line}


def agent_requests(emulator: EmulatorHandle, since: int) -> list[Any]:
    return [r for r in read_audit_log(emulator.state_dir)[since:] if "/secrets/agent-" in r.path or r.principal == "agent"]


def installed_leaf(path: Path) -> x509.Certificate:
    return load_any(path.read_bytes()).certificates[0]


def test_once_installs_three_then_exactly_the_renewed_one_with_one_get_each(
        emulator: EmulatorHandle, vault: Vault, agent_env: dict[str, str], tmp_path: Path) -> None:
    for name in NAMES:
        vault.issue(name, "application/x-pem-file" if name == "agent-api" else "application/x-pkcs12")
    config = write_settings(tmp_path, emulator, vault.url)
    store = tmp_path / "store"

    start = len(read_audit_log(emulator.state_dir))
    first = run_agent(config, agent_env, "--once")
    assert first.returncode == 0, first.stderr
    assert outcomes(first.stdout) == {"agent-web": "Installed", "agent-api": "Installed", "agent-mail": "Installed"}
    assert sha1_thumbprint(installed_leaf(store / "localhost.agent-web")) == vault.thumbprint("agent-web")
    assert sha1_thumbprint(installed_leaf(tmp_path / "etc" / "api" / "fullchain.pem")) == vault.thumbprint("agent-api")
    first_requests = agent_requests(emulator, start)
    # Each observed secret read once by the agent principal; the only other request is Key Vault's
    # unauthenticated challenge, once per vault per process.
    assert sorted((r.principal, r.method, r.path, r.status) for r in first_requests if r.principal) == sorted(
        ("agent", "GET", f"/secrets/{n}/", 200) for n in NAMES)
    assert [r.status for r in first_requests if not r.principal] == [401]

    # One certificate renewed: a new version merged by the worker.
    old_api = vault.thumbprint("agent-api")
    new_version = vault.issue("agent-api", "application/x-pem-file")
    assert vault.thumbprint("agent-api") != old_api

    start = len(read_audit_log(emulator.state_dir))
    second = run_agent(config, agent_env, "--once")
    assert second.returncode == 0, second.stderr
    assert outcomes(second.stdout) == {"agent-web": "Unchanged", "agent-api": "Installed", "agent-mail": "Unchanged"}
    assert f"agent-api: Installed version {new_version}" in second.stdout
    requests = agent_requests(emulator, start)
    gets = [r for r in requests if r.principal == "agent"]
    assert len(gets) == len(NAMES) and all(r.method == "GET" and r.status == 200 for r in gets)
    assert len([r for r in requests if not r.principal]) == 1  # the challenge, once per vault

    # The renewed version is what every stable path now serves; the others did not move.
    assert sha1_thumbprint(installed_leaf(store / "localhost.agent-api")) == vault.thumbprint("agent-api")
    assert sha1_thumbprint(installed_leaf(store / "api.pem")) == vault.thumbprint("agent-api")
    assert sha1_thumbprint(installed_leaf(tmp_path / "etc" / "api" / "fullchain.pem")) == vault.thumbprint("agent-api")
    assert os.readlink(store / "localhost.agent-api.current") == f"localhost.agent-api.versions/{new_version}"
    assert len([p for p in (store / "localhost.agent-api.versions").iterdir() if p.is_dir()]) == 2
    assert sha1_thumbprint(installed_leaf(store / "localhost.agent-web")) == vault.thumbprint("agent-web")
    # The rollout report says what this host now has: the renewed version of one, the others kept.
    rollout = json.loads((tmp_path / "agent-state" / "rollout.json").read_text())
    by_name = {c["name"]: c for c in rollout["certificates"]}
    assert by_name["agent-api"]["installed_version"] == new_version
    assert by_name["agent-api"]["last_result"] == "Installed" and by_name["agent-web"]["last_result"] == "Unchanged"
    assert {n: (c["thumbprint"] or "").upper() for n, c in by_name.items()} == {
        n: vault.thumbprint(n).upper() for n in NAMES}
    key_file = store / "localhost.agent-api.current" / "key.pem"
    assert os.stat(key_file).st_mode & 0o777 == 0o640

    # The PFX form opens with its password and holds the vault's certificate and the dev CA chain.
    from cryptography.hazmat.primitives.serialization import pkcs12

    pfx = (store / "localhost.agent-mail.current" / "cert.pfx").read_bytes()
    key, cert, extra = pkcs12.load_key_and_certificates(pfx, b"pfx-e2e-pw")
    assert key is not None and cert is not None and sha1_thumbprint(cert) == vault.thumbprint("agent-mail")
    assert extra == vault.ca.chain

    # Nothing secret in what the agent printed.
    key_pem = key_file.read_text()
    body = [line for line in key_pem.splitlines() if line and not line.startswith("-----")]
    output = first.stdout + first.stderr + second.stdout + second.stderr
    assert not any(line in output for line in body) and "pfx-e2e-pw" not in output


def test_the_loop_installs_a_renewed_version_within_one_interval_and_stops_on_sigterm(
        emulator: EmulatorHandle, vault: Vault, agent_env: dict[str, str], tmp_path: Path) -> None:
    for name in NAMES:
        vault.issue(name)
    config = write_settings(tmp_path, emulator, vault.url, interval=3)
    store = tmp_path / "store"
    proc = subprocess.Popen([*CLI, "agent", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**agent_env, "AGENT_E2E_PFX_PASSWORD": "pw"})
    try:
        wait_for(lambda: all((store / f"localhost.{n}.current").exists() for n in NAMES), 60)
        merged_at = time.monotonic()
        version = vault.issue("agent-web")
        wait_for(lambda: os.readlink(store / "localhost.agent-web.current").endswith(version), 30)
        took = time.monotonic() - merged_at
        assert took < 3 + 3, f"installed {took:.1f} s after the merge; the interval is 3 s"
        assert sha1_thumbprint(installed_leaf(store / "localhost.agent-web")) == vault.thumbprint("agent-web")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "installed version" in stderr and "stopping on SIGTERM" in stderr


def test_bad_settings_exit_2_naming_the_field(tmp_path: Path, agent_env: dict[str, str]) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"secretsManagementSettings": {
        "pollingIntervalInS": "soon", "observedCertificates": ["https://x.vault.azure.net/secrets/a"]}}))
    proc = run_agent(config, agent_env, "--once")
    assert proc.returncode == 2
    assert "secretsManagementSettings.pollingIntervalInS" in proc.stderr


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {seconds} s")


# The SDK on the wire: 429 with Retry-After is one request, then certlc's own backoff -----------------------------
class _Throttling(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        self.send_response(429)
        self.send_header("Retry-After", "17")
        self.send_header("Content-Type", "application/json")
        body = b'{"error":{"code":"Throttled","message":"Rate limit exceeded"}}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def throttling_vault(tmp_path: Path) -> Iterator[tuple[str, str]]:
    tls = localhost_tls(tmp_path / "tls", "throttling-vault")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_pem, tls.key_pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Throttling.requests = []
    yield f"https://localhost:{server.server_address[1]}", str(tls.ca_pem)
    server.shutdown()
    server.server_close()


def test_a_429_from_the_vault_is_one_request_and_carries_retry_after(throttling_vault: tuple[str, str]) -> None:
    url, ca_bundle = throttling_vault
    settings = parse_agent_settings({"secretsManagementSettings": {"observedCertificates": [f"{url}/secrets/web"]},
                                     "certlc": {"ca_bundle": ca_bundle}})
    reset_clients()
    get = sdk_secret_getter(settings)
    started = time.monotonic()
    with pytest.raises(Throttled) as info:
        get(url, "web")
    assert info.value.retry_after == 17
    assert len(_Throttling.requests) == 1  # the SDK did not retry on its own
    assert time.monotonic() - started < 10


# Reload + verify against a real TLS server that reloads its certificate on SIGHUP ---------------------------------
TLS_SERVER = """
import signal, socket, ssl, sys
cert, key, port_file = sys.argv[1:4]
context = [None]
def load(*_):
    fresh = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    fresh.load_cert_chain(cert, key)
    context[0] = fresh
load()
signal.signal(signal.SIGHUP, load)
server = socket.create_server(("127.0.0.1", 0))
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.getsockname()[1]))
import os; os.replace(port_file + ".tmp", port_file)
while True:
    conn, _ = server.accept()
    try:
        with context[0].wrap_socket(conn, server_side=True):
            pass
    except (OSError, ssl.SSLError):
        conn.close()
"""


def served_sha1(port: int) -> str:
    from certlc.agent.deploy import served_certificate
    from certlc.agent.settings import VerifyTarget

    return sha1_thumbprint(served_certificate(VerifyTarget(address=f"127.0.0.1:{port}", server_name="tls.contoso.com")))


def test_reload_makes_a_real_tls_server_serve_the_new_version_and_a_broken_reload_rolls_back(
        emulator: EmulatorHandle, vault: Vault, agent_env: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = vault.issue("agent-tls")

    def settings(**certlc: Any) -> Path:
        path = tmp_path / "agent.json"
        path.write_text(json.dumps({
            "secretsManagementSettings": {"certificateStoreLocation": str(store), "observedCertificates": [
                {"url": f"{vault.url}/secrets/agent-tls", "certlc": {"outputs": ["fullchain", "key"], **certlc}}]},
            "authenticationSettings": {"msiClientId": emulator.endpoints.principals["agent"]},
            "certlc": {"ca_bundle": emulator.endpoints.ca_bundle, "state_dir": str(tmp_path / "agent-state")}}))
        return path

    assert run_agent(settings(), agent_env, "--once").returncode == 0
    current = store / "localhost.agent-tls.current"
    port_file = tmp_path / "port"
    server = subprocess.Popen([sys.executable, "-c", TLS_SERVER, str(current / "fullchain.pem"),
                               str(current / "key.pem"), str(port_file)])
    try:
        wait_for(port_file.exists, 30)
        port = int(port_file.read_text())
        assert served_sha1(port) == vault.thumbprint("agent-tls")
        verify = {"address": f"127.0.0.1:{port}", "server_name": "tls.contoso.com"}

        # Renewed: installed, the server reloaded by the hook, the new thumbprint served.
        second = vault.issue("agent-tls")
        proc = run_agent(settings(reload=["kill", "-HUP", str(server.pid)], verify=verify), agent_env, "--once")
        assert proc.returncode == 0, proc.stderr
        assert outcomes(proc.stdout) == {"agent-tls": "Installed"}
        assert served_sha1(port) == vault.thumbprint("agent-tls")
        assert f"serves SHA-1 {vault.thumbprint('agent-tls')}" in proc.stderr

        # Renewed again, but the reload command is broken: rolled back, reloaded, alerted; the old one is served.
        served_before = served_sha1(port)
        third = vault.issue("agent-tls")
        proc = run_agent(settings(reload=["sh", "-c", "echo 'reload: config test failed' >&2; exit 1"],
                                  verify=verify), agent_env, "--once")
        assert proc.returncode == 1
        assert outcomes(proc.stdout) == {"agent-tls": "RolledBack"}
        assert "ALERT" in proc.stderr and "reload: config test failed" in proc.stderr
        assert f"rolled back to version {second}" in proc.stderr
        assert os.readlink(current) == f"localhost.agent-tls.versions/{second}"
        assert served_sha1(port) == served_before != vault.thumbprint("agent-tls")

        # A reload that "succeeds" without the server picking the certificate up fails verification: rolled back.
        proc = run_agent(settings(reload=["true"], verify=verify), agent_env, "--once")
        assert proc.returncode == 1 and outcomes(proc.stdout) == {"agent-tls": "RolledBack"}
        assert "VerifyFailed" in proc.stderr and os.readlink(current).endswith(second)
        assert served_sha1(port) == served_before
        assert first != second != third
    finally:
        server.terminate()
        server.wait(timeout=10)
