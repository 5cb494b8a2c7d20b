"""The worker's service recipe, run for real: the ExecStart line and environment of
deployments/systemd/certlc-worker.service, started as a service manager would start it (clean
environment, no TTY, stdin from /dev/null, stdout and stderr into a file), against a real
Prefect server.

This is the failure mode seen with Windows service wrappers ("the worker stopped after ~10 s"
because of rich console output without a console): the worker must still be running and
polling after 20 s, with plain output, and stop cleanly on SIGTERM (systemd's KillSignal) and
on SIGINT (what WinSW's Ctrl+C becomes).
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from certlc.stack import free_port, start_prefect_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deployments" / "systemd" / "certlc-worker.service"
WEBHOOK_UNIT = ROOT / "deployments" / "systemd" / "certlc-webhook.service"
PREFECT = Path(sys.executable).with_name("prefect")
POOL = "certlc-hybrid"
RUN_FOR = 20  # seconds the worker must stay up (the wrapped worker died after ~10 s)


class _MultiDict(dict):
    """Keep every value of a repeated key (systemd allows several Environment= lines)."""

    def __setitem__(self, key, value):
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _unit_service_section(unit: Path = UNIT) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_MultiDict)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(unit)
    return parser["Service"]


def _recipe(api: str, home: Path, health_port: int, unit: Path = UNIT) -> tuple[list[str], dict[str, str]]:
    """The unit's command line and environment, with this machine's paths in place of /opt/certlc."""
    service = _unit_service_section(unit)
    argv = shlex.split(service["ExecStart"].replace("%H", socket.gethostname()))
    assert argv[0].startswith("/opt/certlc/.venv/bin/")
    argv[0] = str(PREFECT.with_name(Path(argv[0]).name))
    argv = [str(home / "certlc.toml") if arg == "/etc/certlc/certlc.toml" else arg for arg in argv]
    # What systemd gives a service with User=: a fixed PATH, HOME/USER/LOGNAME/SHELL, nothing else.
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "USER": os.environ.get("USER", "certlc"),
        "LOGNAME": os.environ.get("USER", "certlc"),
        "SHELL": "/usr/sbin/nologin",
    }
    for line in service["Environment"].splitlines():
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            env[key] = value
    # EnvironmentFile= (/etc/certlc/certlc.env) would supply this:
    env["PREFECT_API_URL"] = api
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # Paths of the host, redirected into the test's directory.
    env["PREFECT_HOME"] = str(home / "prefect")
    env["CERTLC_CONFIG"] = str(home / "certlc.toml")
    env["PREFECT_WORKER_WEBSERVER_PORT"] = str(health_port)
    env["PYTHONFAULTHANDLER"] = "1"  # a stack dump on SIGABRT, should it ever hang
    return argv, env


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("prefect-server")
    proc, api = start_prefect_server(base / "home", base / "server.log")
    try:
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _workers(api: str) -> list[dict]:
    response = httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}, timeout=10)
    response.raise_for_status()
    return response.json()


def test_unit_environment_is_what_the_recipe_promises() -> None:
    argv, env = _recipe("http://127.0.0.1:1/api", Path("/nonexistent"), 1)
    assert argv[1:5] == ["worker", "start", "--pool", POOL]
    for key, value in {"PREFECT_CLI_COLORS": "false", "PREFECT_CLI_WRAP_LINES": "false",
                       "NO_COLOR": "1", "TERM": "dumb"}.items():
        assert env[key] == value


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_runs_as_a_service_and_stops_cleanly(prefect_api: str, tmp_path: Path, stop_signal: int) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "certlc.toml").write_text(f'state_dir = "{tmp_path / "state"}"\n')
    health_port = free_port()
    argv, env = _recipe(prefect_api, home, health_port)

    # The pool as the README creates it (the worker would also create it: --type process).
    created = subprocess.run([str(PREFECT), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                             env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        # start_new_session: no controlling terminal, like a service.
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        healthy = registered = False
        while time.monotonic() - started < RUN_FOR:
            assert proc.poll() is None, (
                f"the worker exited with {proc.returncode} after {time.monotonic() - started:.1f} s:\n"
                + log.read_text(errors="replace"))
            if not healthy:
                with contextlib.suppress(httpx.HTTPError):
                    healthy = httpx.get(f"http://127.0.0.1:{health_port}/health", timeout=2).status_code == 200
            if not registered:
                registered = any(w["name"] == f"certlc-{socket.gethostname()}" for w in _workers(prefect_api))
            time.sleep(1)
        assert proc.poll() is None, log.read_text(errors="replace")
        assert healthy, "the worker's /health (--with-healthcheck) never answered 200"
        assert registered, f"no worker named certlc-{socket.gethostname()} in pool {POOL}: {_workers(prefect_api)}"

        proc.send_signal(stop_signal)
        stop_started = time.monotonic()
        try:
            returncode = proc.wait(timeout=60)  # the unit allows TimeoutStopSec=90
        except subprocess.TimeoutExpired:
            # Where is it stuck? PYTHONFAULTHANDLER makes SIGABRT dump every thread's stack to the log.
            proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            output = log.read_text(errors="replace")
            if "Sending SIGINT to the process worker" in output and "stopped!" not in output \
                    and "in _run_maybe_async_command" in output:
                # Seen only inside the full suite, never alone: Prefect 3.9's worker forwarded the
                # signal to itself, its main task was cancelled, and the cancellation never finished
                # (every thread idle, the main loop waiting). That is Prefect's to fix; the unit's
                # TimeoutStopSec=90 then SIGKILLs it, so the host still stops. Any other hang fails.
                pytest.xfail("Prefect's worker lost its own shutdown (main loop idle after cancelling); "
                             "systemd's TimeoutStopSec kills it:\n" + output[-3000:])
            raise AssertionError(f"the worker did not stop within 60 s of {stop_signal!r}:\n"
                                 + output[-12000:]) from None
        stopped_in = time.monotonic() - stop_started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    output = log.read_text(errors="replace")
    assert returncode == 0, f"exit code {returncode} after {stop_signal!r}:\n{output}"
    assert stopped_in < 30, f"took {stopped_in:.1f} s to stop"
    assert "\x1b[" not in output, "colour/escape sequences in the service log despite NO_COLOR"
    assert "Traceback" not in output, output
    name = f"certlc-{socket.gethostname()}"
    assert f"Worker '{name}' started!" in output, output
    assert f"Worker '{name}' stopped!" in output, output


def _webhook_config(home: Path, port: int, state: Path) -> None:
    (home / "certlc.toml").write_text(
        f'state_dir = "{state}"\n'
        '[[vaults]]\nname = "prod"\nurl = "https://contoso-certs.vault.azure.net"\nca_profile = "adcs"\n'
        '[ca_profiles.adcs]\nkind = "adcs-web"\nendpoint = "https://ca01.contoso.com/certsrv"\n'
        f'[webhook]\nhost = "127.0.0.1"\nport = {port}\nshared_key = "not-a-secret"\nenqueue = false\n')


def test_webhook_runs_as_a_service_and_stops_cleanly(prefect_api: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    _webhook_config(home, port, tmp_path / "state")
    argv, env = _recipe(prefect_api, home, free_port(), unit=WEBHOOK_UNIT)
    assert argv[1:] == ["webhook", "--config", str(home / "certlc.toml")]

    log = tmp_path / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        healthy = False
        while time.monotonic() - started < RUN_FOR:
            assert proc.poll() is None, f"the webhook exited with {proc.returncode}:\n" + log.read_text(errors="replace")
            if not healthy:
                with contextlib.suppress(httpx.HTTPError):
                    healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            time.sleep(1)
        assert healthy, log.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=30)  # the unit allows TimeoutStopSec=30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = log.read_text(errors="replace")
    # uvicorn shuts down gracefully, then re-raises SIGTERM: systemd counts death by SIGTERM as a clean stop.
    assert returncode in (0, -signal.SIGTERM), f"exit code {returncode}:\n{output}"
    assert "Finished server process" in output, output
    assert "\x1b[" not in output, output
    assert "Traceback" not in output, output


def test_webhook_exits_non_zero_on_bad_configuration(tmp_path: Path) -> None:
    """Restart=always / onfailure restart only help if a broken configuration is an error, not a hang."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "certlc.toml").write_text('[webhook]\nport = "not a port"\n')
    argv, env = _recipe("http://127.0.0.1:1/api", home, 1, unit=WEBHOOK_UNIT)
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "webhook.port" in result.stdout + result.stderr
