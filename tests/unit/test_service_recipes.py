"""The service recipes in deployments/ (systemd units, WinSW definitions, install.ps1) are
well-formed, say what the README says, and run commands and flags that exist.

Running the worker recipe for real is tests/e2e/test_worker_service.py.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deployments" / "systemd"
WINDOWS = ROOT / "deployments" / "windows"
BIN = Path(sys.executable).parent
WORKER_ARGS = "worker start --pool certlc-hybrid --type process"
PLAIN_OUTPUT = {"PREFECT_CLI_COLORS": "false", "PREFECT_CLI_WRAP_LINES": "false", "NO_COLOR": "1", "TERM": "dumb"}
UNITS = ["certlc-worker.service", "certlc-webhook.service"]
HARDENING = ["NoNewPrivileges", "ProtectSystem", "ReadWritePaths", "ProtectHome", "PrivateTmp", "UMask",
             "CapabilityBoundingSet", "KillSignal", "TimeoutStopSec"]


# --- systemd ----------------------------------------------------------------------------------
class _MultiDict(dict):
    """Keep every value of a repeated key (systemd allows several Environment= lines)."""

    def __setitem__(self, key, value):
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_MultiDict)
    parser.optionxform = str  # systemd keys are case-sensitive
    assert parser.read(SYSTEMD / name), name
    return parser


def _environment(service: configparser.SectionProxy) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in service["Environment"].splitlines():
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            env[key] = value
    return env


def _flags(argv: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_as_certlc_with_restart_and_hardening(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    assert service["User"] == "certlc"
    assert service["Group"] == "certlc"
    assert service["EnvironmentFile"] == "/etc/certlc/certlc.env"
    assert service["Restart"] == "always"
    assert 1 <= int(service["RestartSec"]) <= 60
    for key in HARDENING:
        assert key in service, f"{name}: {key}= missing"
    assert service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/certlc" in service["ReadWritePaths"].split()
    assert service["ProtectHome"] == "true"
    assert service["PrivateTmp"] == "true"
    assert service["UMask"] == "0077"
    assert service["CapabilityBoundingSet"] == ""  # nothing; ports >= 1024
    assert "AmbientCapabilities" not in service
    assert service["KillSignal"] == "SIGTERM"
    env = _environment(service)
    assert env["CERTLC_CONFIG"] == "/etc/certlc/certlc.toml"
    for key, value in PLAIN_OUTPUT.items():
        assert env[key] == value
    assert "network-online.target" in unit["Unit"]["After"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_worker_unit_command() -> None:
    service = _unit("certlc-worker.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/certlc/.venv/bin/prefect"
    assert " ".join(argv[1:]).startswith(WORKER_ARGS)
    assert argv[argv.index("--name") + 1] == "certlc-%H"
    assert "--with-healthcheck" in argv
    assert service["WorkingDirectory"] == "/opt/certlc"  # prefect.yaml's pull step
    env = _environment(service)
    assert env["PREFECT_WORKER_WEBSERVER_PORT"] == "8081"  # the webhook defaults to 8080
    assert "certs-ad" not in (SYSTEMD / "certlc-worker.service").read_text()


def test_webhook_unit_command() -> None:
    service = _unit("certlc-webhook.service")["Service"]
    assert shlex.split(service["ExecStart"]) == [
        "/opt/certlc/.venv/bin/certlc", "webhook", "--config", "/etc/certlc/certlc.toml"]


AGENT_UNITS = ["certlc-agent.service", "certlc-agent-once.service"]
AGENT_ARGV = ["/opt/certlc/.venv/bin/certlc", "agent", "--config", "/etc/certlc/agent.json"]


@pytest.mark.parametrize("name", AGENT_UNITS)
def test_agent_units_are_sandboxed_with_only_chown_and_fowner(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    for key in HARDENING:
        assert key in service, f"{name}: {key}= missing"
    # root reduced to chown (owner/group of key files) and fowner (their mode after the chown).
    assert service["User"] == "root"
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_CHOWN", "CAP_FOWNER"}
    assert "AmbientCapabilities" not in service
    assert service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict"
    assert service["UMask"] == "0077"
    assert service["ProtectHome"] == "true"
    assert service["PrivateTmp"] == "true"
    assert service["KillSignal"] == "SIGTERM"
    # The store locations are the writable paths; '-' so a host without the extension's dir starts.
    writable = service["ReadWritePaths"].split()
    assert "-/var/lib/waagent/Microsoft.Azure.KeyVault" in writable
    assert all(p.startswith(("-/", "/")) for p in writable)
    assert service["StateDirectory"] == "certlc-agent"  # the rollout state file's directory
    assert "AF_UNIX" in service["RestrictAddressFamilies"].split()  # `systemctl reload` as a reload command
    assert service["EnvironmentFile"] == "-/etc/certlc/agent.env"  # optional
    env = _environment(service)
    assert env["CERTLC_AGENT_CONFIG"] == "/etc/certlc/agent.json"
    assert "network-online.target" in unit["Unit"]["After"]
    assert re.search(r"^#\s+ReadWritePaths=/", (SYSTEMD / name).read_text(), re.MULTILINE)  # the drop-in example


def test_agent_unit_polls_until_stopped() -> None:
    unit = _unit("certlc-agent.service")
    service = unit["Service"]
    assert shlex.split(service["ExecStart"]) == AGENT_ARGV
    assert service["Type"] == "simple"
    assert service["Restart"] == "always"
    assert 1 <= int(service["RestartSec"]) <= 60
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "certlc-agent-once.timer" in unit["Unit"]["Conflicts"].split()


def test_agent_once_unit_and_timer() -> None:
    unit = _unit("certlc-agent-once.service")
    service = unit["Service"]
    assert shlex.split(service["ExecStart"]) == [*AGENT_ARGV, "--once"]
    assert service["Type"] == "oneshot"
    assert "Restart" not in service
    assert "Install" not in unit  # started by the timer only
    assert "certlc-agent.service" in unit["Unit"]["Conflicts"].split()
    timer = _unit("certlc-agent-once.timer")
    assert timer["Timer"]["Unit"] == "certlc-agent-once.service"
    assert timer["Timer"]["OnCalendar"]
    assert timer["Timer"]["Persistent"] == "true"
    assert int(timer["Timer"]["RandomizedDelaySec"]) > 0
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_agent_units(tmp_path: Path) -> None:
    for name in [*AGENT_UNITS, "certlc-agent-once.timer"]:
        text = (SYSTEMD / name).read_text().replace("/opt/certlc/.venv/bin/", f"{BIN}/")
        (tmp_path / name).write_text(text)
    for name in [*AGENT_UNITS, "certlc-agent-once.timer"]:
        result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Unknown" not in output and "ignoring" not in output, output


def test_agent_command_and_flags_exist_in_certlc() -> None:
    help_text = _help(str(BIN / "certlc"), "agent", "--help")
    assert "--config" in help_text and "--once" in help_text


def test_env_example_holds_only_assignments_and_comments() -> None:
    keys = set()
    for line in (SYSTEMD / "certlc.env.example").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            if stripped.startswith("#") and re.match(r"#[A-Z_]+=", stripped):
                keys.add(stripped[1:].split("=", 1)[0])
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S.*", stripped), line
        keys.add(stripped.split("=", 1)[0])
    assert {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "CERTLC_WEBHOOK__SHARED_KEY",
            "CERTLC_QUEUE__CONNECTION_STRING"} <= keys


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this checkout's venv.
    text = (SYSTEMD / name).read_text().replace("/opt/certlc/.venv/bin/", f"{BIN}/")
    unit = tmp_path / name
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown" not in output and "ignoring" not in output, output


# --- WinSW -----------------------------------------------------------------------------------
def _winsw(name: str) -> ET.Element:
    return ET.parse(WINDOWS / name).getroot()  # noqa: S314 - our own files


@pytest.mark.parametrize("name", ["certlc-worker.xml", "certlc-webhook.xml"])
def test_winsw_definition(name: str) -> None:
    root = _winsw(name)
    assert root.tag == "service"
    assert root.findtext("id") == name.removesuffix(".xml")
    env = {e.get("name"): e.get("value") for e in root.findall("env")}
    assert env["CERTLC_CONFIG"] == r"C:\ProgramData\certlc\certlc.toml"
    assert env["PREFECT_API_URL"].endswith("/api")
    for key, value in PLAIN_OUTPUT.items():
        assert env[key] == value, key
    failures = root.findall("onfailure")
    assert len(failures) >= 2
    assert all(f.get("action") == "restart" for f in failures)
    assert failures[0].get("delay") == "10 sec"
    assert root.findtext("resetfailure")
    assert root.findtext("stoptimeout")
    log = root.find("log")
    assert log is not None
    assert log.get("mode") == "roll-by-size"
    assert int(log.findtext("sizeThreshold")) > 0
    assert int(log.findtext("keepFiles")) > 0
    assert root.findtext("logpath") == r"C:\ProgramData\certlc\logs"
    account = root.find("serviceaccount")
    assert account is not None
    assert account.findtext("user").endswith("$")  # a gMSA: no password
    assert account.find("password") is None
    assert account.findtext("allowservicelogon") == "true"
    assert root.findtext("workingdirectory") == r"D:\certlc"


def test_winsw_worker() -> None:
    root = _winsw("certlc-worker.xml")
    account = root.find("serviceaccount")
    assert f"{account.findtext('domain')}\\{account.findtext('user')}" == r"DOMAIN\certlc-worker$"
    assert root.findtext("executable") == r"D:\certlc\.venv\Scripts\prefect.exe"
    arguments = root.findtext("arguments")
    assert arguments.startswith(WORKER_ARGS)
    assert "--name certlc-%COMPUTERNAME%" in arguments
    env = {e.get("name"): e.get("value") for e in root.findall("env")}
    assert env["PREFECT_WORKER_WEBSERVER_PORT"] == "8081"


def test_winsw_webhook() -> None:
    root = _winsw("certlc-webhook.xml")
    assert root.findtext("executable") == r"D:\certlc\.venv\Scripts\certlc.exe"
    assert shlex.split(root.findtext("arguments"), posix=False) == [
        "webhook", "--config", r'"C:\ProgramData\certlc\certlc.toml"']


def test_winsw_agent() -> None:
    root = _winsw("certlc-agent.xml")
    assert root.tag == "service" and root.findtext("id") == "certlc-agent"
    assert root.findtext("executable") == r"D:\certlc\.venv\Scripts\certlc.exe"
    assert shlex.split(root.findtext("arguments"), posix=False) == [
        "agent", "--config", r'"C:\ProgramData\certlc\agent.json"']
    env = {e.get("name"): e.get("value") for e in root.findall("env")}
    assert env["CERTLC_AGENT_CONFIG"] == r"C:\ProgramData\certlc\agent.json"
    assert env["PYTHONUTF8"] == "1" and env["NO_COLOR"] == "1"
    failures = root.findall("onfailure")
    assert len(failures) >= 2 and all(f.get("action") == "restart" for f in failures)
    assert root.findtext("resetfailure") and root.findtext("stoptimeout")
    assert root.findtext("stopparentprocessfirst") == "true"  # Ctrl+C: the agent's SIGINT handler stops it
    assert root.findtext("logpath") == r"C:\ProgramData\certlc\logs"
    assert root.find("log").get("mode") == "roll-by-size"
    # LocalSystem (no service account): importing into LocalMachine\My needs an administrator.
    assert root.find("serviceaccount") is None


def test_install_script_mentions_what_the_readme_promises() -> None:
    script = (WINDOWS / "install.ps1").read_text()
    for needle in ("Invoke-WebRequest", "/health", "sc.exe failure", "reset= 86400",
                   "actions= restart/10000/restart/10000/restart/60000", "certlc-worker", "certlc-webhook",
                   ".venv", "Start-Service"):
        assert needle in script, needle
    assert "uninstall" in (WINDOWS / "uninstall.ps1").read_text()


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="PowerShell (pwsh) not installed")
@pytest.mark.parametrize("name", ["install.ps1", "uninstall.ps1"])
def test_powershell_scripts_parse(name: str) -> None:
    command = (
        "$tokens = $null; $errors = $null; "
        f"[void][System.Management.Automation.Language.Parser]::ParseFile('{WINDOWS / name}', [ref]$tokens, [ref]$errors); "
        "$errors | ForEach-Object { $_.ToString() }; exit $errors.Count"
    )
    result = subprocess.run(["pwsh", "-NoProfile", "-NonInteractive", "-Command", command],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- The commands exist ------------------------------------------------------------------------
def _help(*argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PLAIN_OUTPUT)
    env["COLUMNS"] = "200"
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_worker_flags_exist_in_prefect() -> None:
    help_text = _help(str(BIN / "prefect"), "worker", "start", "--help")
    used = _flags(shlex.split(_unit("certlc-worker.service")["Service"]["ExecStart"]))
    used |= _flags(_winsw("certlc-worker.xml").findtext("arguments").split())
    assert {"--pool", "--type", "--name", "--with-healthcheck"} <= used
    for flag in sorted(used):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"{flag} not in prefect worker start --help"
    assert re.search(r"never", help_text)  # --install-policy never


def test_webhook_command_exists_in_certlc() -> None:
    certlc = str(BIN / "certlc")
    if not re.search(r"^\W*webhook\b", _help(certlc, "--help"), re.MULTILINE):
        pytest.skip("`certlc webhook` is not in this checkout yet")
    help_text = _help(certlc, "webhook", "--help")
    assert "--config" in help_text
