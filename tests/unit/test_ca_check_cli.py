"""`certlc ca check`: usable profiles, an unreachable CA, refused credentials, unknown templates,
templates the account may not enrol on, and bad configuration — each said in plain words."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from certlc.ca.base import Health
from certlc.ca.certsrv_sim import certsrv_app
from certlc.ca.devca import DevCA
from certlc.cli.ca import check
from certlc.config import TemplateSpec, load_settings
from certlc.localca.select import plan_local_ca
from certlc.stack import free_port

USER = "CONTOSO\\svc-certlc"
PASSWORD = "S3cret-Pa55"
WRONG = "Wr0ng-Guess"


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTLC_")}
    env["CFSSL_TEST_KEY"] = "00112233445566778899aabbccddeeff"
    env["CERTSRV_CLI_PW"], env["CERTSRV_CLI_WRONG"] = PASSWORD, WRONG
    return subprocess.run([sys.executable, "-m", "certlc.cli", "ca", "check", *args, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def write(tmp_path: Path, cfssl_port: int, certsrv_port: int = 0, other_port: int = 0) -> Path:
    path = tmp_path / "certlc.toml"
    certsrv = f"http://127.0.0.1:{certsrv_port or free_port()}/certsrv"
    secret = tmp_path / "certsrv-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    path.write_text(f"""
state_dir = "{tmp_path}"
[devca]
templates = [{{ name = "WebServer" }}, {{ name = "Refused", approval = "deny" }}]
[ca_profiles.dev]
kind = "devca"
default_template = "WebServer"
[ca_profiles.signer]
kind = "cfssl"
endpoint = "http://127.0.0.1:{cfssl_port}"
default_template = "WebServer"
options = {{ auth_key_env = "CFSSL_TEST_KEY", timeout_seconds = 2 }}
[ca_profiles.adcs]
kind = "adcs-web"
endpoint = "{certsrv}"
default_template = "WebServer"
options = {{ auth = "basic", username = 'CONTOSO\\svc-certlc', password_env = "CERTSRV_CLI_PW", timeout_seconds = 5 }}
[ca_profiles.adcs-wrong]
kind = "adcs-web"
endpoint = "{certsrv}"
default_template = "WebServer"
options = {{ auth = "basic", username = 'CONTOSO\\svc-certlc', password_env = "CERTSRV_CLI_WRONG", timeout_seconds = 5 }}
[ca_profiles.adcs-file]
kind = "adcs-web"
endpoint = "{certsrv}"
default_template = "WebServer"
options = {{ auth = "basic", username = 'CONTOSO\\svc-certlc', password_file = "{secret}", timeout_seconds = 5 }}
[ca_profiles.not-certsrv]
kind = "adcs-web"
endpoint = "http://127.0.0.1:{other_port or free_port()}/certsrv"
default_template = "WebServer"
options = {{ auth = "basic", username = 'CONTOSO\\svc-certlc', password_env = "CERTSRV_CLI_PW", timeout_seconds = 5 }}
[ca_profiles.cleartext]
kind = "adcs-web"
endpoint = "http://ca01.contoso.com/certsrv"
options = {{ auth = "basic", username = 'CONTOSO\\svc-certlc', password_env = "CERTSRV_CLI_PW" }}
[ca_profiles.broken]
kind = "acme-someday"
""")
    return path


@pytest.fixture(scope="module")
def certsrv_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The certsrv simulator over plain HTTP: WebServer offered, WebServerDenied not (no Enroll)."""
    ca = DevCA(tmp_path_factory.mktemp("certsrv") / "ca",
               [TemplateSpec(name="WebServer"), TemplateSpec(name="WebServerDenied", approval="deny")])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(certsrv_app(ca, users={USER: PASSWORD}), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_usable_profile_passes(tmp_path: Path, certsrv_port: int) -> None:
    config = write(tmp_path, free_port(), certsrv_port)
    proc = run(config, "dev")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["dev (devca): OK", "  template WebServer: OK"]
    proc = run(config, "adcs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"adcs (adcs-web at http://127.0.0.1:{certsrv_port}/certsrv): OK",
                                        "  template WebServer: OK"]


def test_an_unreachable_ca_is_a_problem_in_plain_words(tmp_path: Path) -> None:
    config = write(tmp_path, free_port())
    proc = run(config, "signer", "--json")
    assert proc.returncode == 1, proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["ok"] is False and result["problems"] and result["templates"] == []
    assert result["templates_skipped"]["templates"] == ["WebServer"]
    assert "Traceback" not in proc.stderr
    assert "00112233445566778899aabbccddeeff" not in proc.stdout + proc.stderr
    proc = run(config, "signer", "--template", "WebServer", "--template", "Other")
    assert proc.returncode == 1
    assert "PROBLEM" in proc.stdout.splitlines()[0] and "cannot be reached" in proc.stdout
    # Said once for the CA, not once per template.
    assert "  templates not checked (WebServer, Other): skipped until the CA problem above is fixed" in proc.stdout
    assert "template WebServer:" not in proc.stdout


def test_refused_credentials_are_a_problem_and_skip_the_templates(tmp_path: Path, certsrv_port: int) -> None:
    proc = run(write(tmp_path, free_port(), certsrv_port), "adcs-wrong")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("): PROBLEM")
    assert "refused certlc's credentials (HTTP 401)" in lines[1] and "user name and password" in lines[1]
    assert lines[2:] == ["  templates not checked (WebServer): skipped until the CA problem above is fixed"]
    assert WRONG not in proc.stdout + proc.stderr and PASSWORD not in proc.stdout + proc.stderr


def test_an_unknown_template_is_named_with_what_to_do(tmp_path: Path) -> None:
    proc = run(write(tmp_path, free_port()), "dev", "--template", "WebServer", "--template", "NoSuchTemplate")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        "dev (devca): PROBLEM",
        "  template WebServer: OK",
        "  template NoSuchTemplate: PROBLEM — the dev CA has no template 'NoSuchTemplate' (it has: WebServer, Refused)",
        "    what to do: check the name (and the profile's template_map) against the dev CA's templates in "
        "[devca] templates",
    ]


def test_a_template_the_account_may_not_enrol_on(tmp_path: Path, certsrv_port: int) -> None:
    config = write(tmp_path, free_port(), certsrv_port)
    proc = run(config, "dev", "--template", "Refused")
    assert proc.returncode == 1, proc.stderr
    assert "  template Refused: PROBLEM — the dev CA refuses every request for 'Refused' by policy" in proc.stdout
    proc = run(config, "adcs", "--template", "WebServer", "--template", "WebServerDenied")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        "  template WebServer: OK",
        f"  template WebServerDenied: PROBLEM — not offered to {USER}: it does not exist on this CA or the account "
        "lacks Enroll permission",
        "    what to do: check the name (and template_map) against `certutil -CATemplates` on the CA, and ask the "
        f"CA administrator to grant Enroll on the template to {USER}",
    ]
    [result] = json.loads(run(config, "adcs", "--template", "WebServerDenied", "--json").stdout)
    assert result["ok"] is False and result["problems"] == []
    assert [(t["template"], t["status"]) for t in result["templates"]] == [("WebServerDenied", "not-enrollable")]
    assert "Enroll" in result["templates"][0]["action"]


def test_unknown_profile_or_kind_is_a_configuration_error(tmp_path: Path) -> None:
    config = write(tmp_path, free_port())
    for name in ("nope", "broken"):
        proc = run(config, name)
        assert proc.returncode == 2
        assert proc.stderr.startswith("certlc: error:") and proc.stderr.count("\n") == 1


class _NoTemplateChecks:
    """A connector kind that cannot list templates (check_templates is optional)."""

    profile = "dev"

    def check(self) -> Health:
        return Health(ok=True)


def test_a_kind_without_template_checks_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for name in [k for k in os.environ if k.startswith("CERTLC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("certlc.ca.connector_for", lambda name, settings: _NoTemplateChecks())
    with pytest.raises(SystemExit) as caught:
        check("dev", config=write(tmp_path, free_port()))
    assert caught.value.code == 0  # nothing failed; the output says what was not checked
    assert capsys.readouterr().out.splitlines() == [
        "dev (devca): OK",
        "  templates not checked (WebServer): the devca connector cannot list templates, so they could not be checked",
    ]


class _TemplateLess(_NoTemplateChecks):
    uses_templates = False  # as the ACME connector declares


def test_a_ca_without_templates_checks_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name in [k for k in os.environ if k.startswith("CERTLC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("certlc.ca.connector_for", lambda name, settings: _TemplateLess())
    config = write(tmp_path, free_port())
    with pytest.raises(SystemExit) as caught:
        check("dev", config=config)
    assert caught.value.code == 0 and capsys.readouterr().out.splitlines() == ["dev (devca): OK"]
    with pytest.raises(SystemExit):
        check("dev", template=["X"], config=config)
    assert "templates not checked (X): the devca CA issues without templates" in capsys.readouterr().out


class _Welcome(http.server.BaseHTTPRequestHandler):
    """nginx's welcome page for any path: a web server that answers 200 but is no AD CS."""

    def do_GET(self) -> None:
        body = (b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head>"
                b"<body><h1>Welcome to nginx!</h1></body></html>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def welcome_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Welcome)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join(timeout=10)


def test_a_web_server_that_is_not_ad_cs_is_a_problem(tmp_path: Path, welcome_port: int) -> None:
    proc = run(write(tmp_path, free_port(), other_port=welcome_port), "not-certsrv")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"not-certsrv (adcs-web at http://127.0.0.1:{welcome_port}/certsrv): PROBLEM",
        f"  - the web server at http://127.0.0.1:{welcome_port}/certsrv/ answered, but not with AD CS web "
        "enrollment pages (HTTP 200, a page titled 'Welcome to nginx!'); check the endpoint (it ends in /certsrv)",
        "  templates not checked (WebServer): skipped until the CA problem above is fixed",
    ]


def test_basic_auth_over_plain_http_is_a_configuration_error(tmp_path: Path) -> None:
    proc = run(write(tmp_path, free_port()), "cleartext")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("certlc: error:") and proc.stderr.count("\n") == 1
    assert "auth basic over plain http:// would send the password in clear text" in proc.stderr
    assert "use the site's https:// URL" in proc.stderr and PASSWORD not in proc.stderr


def test_a_password_file_profile_passes(tmp_path: Path, certsrv_port: int) -> None:
    config = write(tmp_path, free_port(), certsrv_port)
    proc = run(config, "adcs-file")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].endswith("): OK")
    (tmp_path / "certsrv-password").chmod(0o644)
    proc = run(config, "adcs-file")
    assert proc.returncode == 2 and "readable by every user on this machine" in proc.stderr


def test_the_local_stacks_adcs_web_profile_works_from_another_shell(tmp_path: Path) -> None:
    """`certlc up --ca adcs-web` then `certlc ca check --config <stack>/certlc.toml` elsewhere: the
    profile finds its password in a file, not in a variable only the worker was given."""
    root = tmp_path / "stack"
    plan = plan_local_ca("adcs-web", root, [TemplateSpec(name="WebServer")])
    assert plan.env == {}  # nothing the worker alone would know
    secret = root / "localca" / "adcs-web" / "certsrv-password"
    assert secret.stat().st_mode & 0o777 == 0o600 and f"password_file = {json.dumps(str(secret))}" in plan.profile_toml
    config = tmp_path / "certlc.toml"
    config.write_text(f'state_dir = "{root}"\n[devca]\ntemplates = [{{ name = "WebServer" }}]\n\n{plan.profile_toml}')
    endpoint = load_settings(config).ca_profiles["adcs-web"].endpoint
    [started] = plan.start(config, tmp_path / "logs")
    try:
        proc = run(config, "adcs-web", "--template", "WebServer")  # CERTLC_* variables stripped: another shell
    finally:
        started.proc.terminate()
        started.proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"adcs-web (adcs-web at {endpoint}): OK", "  template WebServer: OK"]
