"""The local stack's parts on loopback, each a child process started as a user would start it.

The Key Vault emulator (``certlc emulator``), a Prefect server, Azurite, the Prefect worker, the
webhook receiver (``certlc webhook``) and an SMTP sink; ``deploy`` runs ``prefect deploy --all``
on the repository's ``prefect.yaml``. Each starter returns once its part answers, or raises a
CertlcError naming the log to read. Used by ``certlc up``, ``certlc demo`` and the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from certlc.errors import CertlcError

__all__ = [
    "LocalStack",
    "azurite_connection_string",
    "deploy",
    "free_port",
    "local_prefect_yaml",
    "prefect_command",
    "process_start_time",
    "repository_root",
    "start_azurite",
    "start_emulator",
    "start_prefect_server",
    "start_smtp_sink",
    "start_webhook",
    "start_worker",
    "stop_process",
    "wait_until",
]

CLI = [sys.executable, "-c", "from certlc.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    # Whatever the part started in its own process group goes with it. (A Prefect worker starts
    # each flow run in a new session and stops those itself on SIGTERM.)
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (every part is started as a group leader); a
    process that leads no group is left alone (not one of ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def process_start_time(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (Linux /proc), to tell a part from a
    later process that got the same pid; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


_stop = stop_process


def repository_root() -> Path:
    """Where prefect.yaml, flows/ and tasks/ live (the checkout certlc is installed from)."""
    return Path(__file__).resolve().parent.parent


def prefect_command() -> list[str]:
    prefect = Path(sys.executable).with_name("prefect")
    return [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]


def wait_until(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, log: Path,
               timeout: float) -> None:
    """Poll ``ready`` until it is true; CertlcError naming ``log`` if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CertlcError(f"{what} exited with code {proc.returncode}; see {log}", reason="StackFailed")
            with contextlib.suppress(OSError, httpx.HTTPError):
                if ready():
                    return
            time.sleep(0.3)
    except BaseException:  # Ctrl-C while waiting: the part must not outlive its starter
        stop_process(proc)
        raise
    stop_process(proc)
    raise CertlcError(f"{what} did not become ready within {timeout:.0f} s; see {log}", reason="StackFailed")


def _http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


def _tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", port)) == 0
    return check


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
           detach: bool = False) -> subprocess.Popen[bytes]:
    """Start one part in its own session: Ctrl-C in the terminal reaches only ``certlc up``, which
    stops the parts in order, and stopping a part's group also stops what it started. ``detach``
    is kept for callers' clarity: a detached part simply is not stopped when its starter exits."""
    del detach
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def start_worker(pool: str, env: dict[str, str], log: Path, *, detach: bool = False,
                 timeout: float = 120) -> tuple[subprocess.Popen[bytes], int]:
    """``prefect worker start --pool POOL --type process --with-healthcheck``; waits for /health."""
    port = free_port()
    worker_env = {**env, "PREFECT_WORKER_WEBSERVER_PORT": str(port), "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
                  # Poll often: a local renewal should start seconds after its event, not ten.
                  "PREFECT_WORKER_QUERY_SECONDS": env.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
                  "PREFECT_CLI_COLORS": "false", "NO_COLOR": "1"}
    proc = _spawn([*prefect_command(), "worker", "start", "--pool", pool, "--type", "process", "--name",
                   f"certlc-local-{os.getpid()}", "--with-healthcheck"], log, worker_env, detach=detach)
    wait_until(proc, _http_ok(f"http://127.0.0.1:{port}/health"), "the Prefect worker", log, timeout)
    return proc, port


def start_webhook(config: Path, env: dict[str, str], port: int, log: Path, *, detach: bool = False,
                  timeout: float = 60) -> subprocess.Popen[bytes]:
    """``certlc webhook --config CONFIG --port PORT``; waits for /healthz."""
    proc = _spawn([*CLI, "webhook", "--config", str(config), "--port", str(port)], log, env, detach=detach)
    wait_until(proc, _http_ok(f"http://127.0.0.1:{port}/healthz"), "the webhook receiver", log, timeout)
    return proc


def start_agent(settings: Path, env: dict[str, str], report: Path, log: Path, *, detach: bool = False,
                timeout: float = 60) -> subprocess.Popen[bytes]:
    """``certlc agent --config SETTINGS``; waits for its first pass (the rollout report written)."""
    report.unlink(missing_ok=True)
    proc = _spawn([*CLI, "agent", "--config", str(settings)], log, env, detach=detach)
    wait_until(proc, report.exists, "the certlc agent", log, timeout)
    return proc


def start_smtp_sink(maildir: Path, port: int, log: Path, *, detach: bool = False,
                    timeout: float = 30) -> subprocess.Popen[bytes]:
    """aiosmtpd on loopback, keeping every message in the Maildir ``maildir``."""
    maildir.parent.mkdir(parents=True, exist_ok=True)
    proc = _spawn([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
                   "-c", "aiosmtpd.handlers.Mailbox", str(maildir)], log, detach=detach)
    wait_until(proc, _tcp_open(port), "the SMTP sink", log, timeout)
    return proc


def local_prefect_yaml(target: Path, *, working_directory: Path, drain_interval_seconds: int | None = None,
                       source: Path | None = None) -> Path:
    """A copy of the repository's prefect.yaml for this machine: the pull step points at this
    checkout and, for demos, the drain runs every ``drain_interval_seconds``."""
    import yaml

    source = source or repository_root() / "prefect.yaml"
    spec = yaml.safe_load(source.read_text())
    spec["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(working_directory)}}]
    for deployment in spec["deployments"]:
        if deployment["name"] == "drain-queue" and drain_interval_seconds:
            deployment["schedules"] = [{"interval": drain_interval_seconds}]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# Written by certlc from the repository's prefect.yaml for the local stack.\n"
                      + yaml.safe_dump(spec, sort_keys=False))
    return target


def deploy(prefect_file: Path, env: dict[str, str], log: Path, timeout: float = 300) -> None:
    """``prefect --no-prompt deploy --all --prefect-file FILE`` from the repository root."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.run([*prefect_command(), "--no-prompt", "deploy", "--all", "--prefect-file",
                               str(prefect_file)], stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, **env, "PREFECT_CLI_COLORS": "false"}, cwd=repository_root(),
                              check=False)
    if proc.returncode != 0:
        raise CertlcError(f"prefect deploy failed (exit {proc.returncode}); see {log}", reason="DeployFailed")


@dataclass
class LocalStack:
    """Processes started for a run; ``stop()`` ends them in reverse order."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            _stop(proc)
        self.processes.clear()


def start_emulator(config: Path, state_dir: Path, log: Path, timeout: float = 60, *,
                   detach: bool = False) -> tuple[subprocess.Popen[bytes], dict]:
    """Start ``certlc emulator --config config`` and wait for its endpoints file."""
    from certlc.emulator import read_endpoints

    endpoints_file = state_dir / "endpoints.json"
    endpoints_file.unlink(missing_ok=True)
    proc = _spawn([*CLI, "emulator", "--config", str(config)], log, detach=detach)
    found: dict = {}

    def ready() -> bool:
        if not endpoints_file.exists():
            return False
        try:
            found.update(read_endpoints(state_dir).__dict__)
        except (ValueError, KeyError):
            return False
        return True

    wait_until(proc, ready, "the Key Vault emulator", log, timeout)
    return proc, found


def start_prefect_server(home: Path, log: Path, timeout: float = 180, *,
                         detach: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``prefect server start`` on SQLite in ``home`` and wait until its API is healthy."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api}
    home.mkdir(parents=True, exist_ok=True)
    proc = _spawn([*prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, env,
                  detach=detach)
    wait_until(proc, _http_ok(f"{api}/health"), "the Prefect server", log, timeout)
    return proc, api


# The well-known development account every Azurite instance serves (public, not a secret).
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection_string(port: int) -> str:
    return ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_ACCOUNT_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


def start_azurite(root: Path, log: Path, timeout: float = 30, *,
                  detach: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """Start Azurite's queue service (installed by `npm ci` into ``root``/node_modules) in memory."""
    binary = root / "node_modules" / ".bin" / "azurite-queue"
    if not binary.exists():
        raise CertlcError(f"Azurite is not installed ({binary} missing); run `npm ci` (make does it)",
                          reason="AzuriteMissing")
    port = free_port()
    # --skipApiVersionCheck: the Python SDK speaks a newer storage API version than Azurite knows.
    proc = _spawn([str(binary), "--queueHost", "127.0.0.1", "--queuePort", str(port), "--inMemoryPersistence",
                   "--disableTelemetry", "--skipApiVersionCheck", "--silent"], log, detach=detach)
    wait_until(proc, _tcp_open(port), "Azurite", log, timeout)
    return proc, port
