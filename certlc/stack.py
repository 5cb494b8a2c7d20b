"""The local stack on loopback: the Key Vault emulator and a Prefect server, as child processes.

Used by ``certlc demo`` and the end-to-end tests. Each part runs as its own process, exactly as
a user would start it (``certlc emulator``, ``prefect server start``), and is stopped cleanly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from certlc.errors import CertlcError

__all__ = [
    "LocalStack",
    "azurite_connection_string",
    "free_port",
    "start_azurite",
    "start_emulator",
    "start_prefect_server",
]

CLI = [sys.executable, "-c", "from certlc.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class LocalStack:
    """Processes started for a run; ``stop()`` ends them in reverse order."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            _stop(proc)
        self.processes.clear()


def start_emulator(config: Path, state_dir: Path, log: Path, timeout: float = 60) -> tuple[subprocess.Popen[bytes], dict]:
    """Start ``certlc emulator --config config`` and wait for its endpoints file."""
    from certlc.emulator import read_endpoints

    endpoints_file = state_dir / "endpoints.json"
    endpoints_file.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([*CLI, "emulator", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CertlcError(f"the Key Vault emulator exited with code {proc.returncode}; see {log}",
                              reason="EmulatorFailed")
        if endpoints_file.exists():
            with contextlib.suppress(ValueError, OSError, KeyError):
                endpoints = read_endpoints(state_dir)
                return proc, endpoints.__dict__
        time.sleep(0.2)
    _stop(proc)
    raise CertlcError(f"the Key Vault emulator did not start within {timeout:.0f} s; see {log}",
                      reason="EmulatorFailed")


def start_prefect_server(home: Path, log: Path, timeout: float = 180) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``prefect server start`` on SQLite in ``home`` and wait until its API is healthy."""
    port = free_port()
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    })
    home.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
    with log.open("ab") as out:
        proc = subprocess.Popen([*cmd, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CertlcError(f"the Prefect server exited with code {proc.returncode}; see {log}",
                              reason="PrefectFailed")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return proc, api
        time.sleep(0.5)
    _stop(proc)
    raise CertlcError(f"the Prefect server did not answer within {timeout:.0f} s; see {log}", reason="PrefectFailed")


# The well-known development account every Azurite instance serves (public, not a secret).
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection_string(port: int) -> str:
    return ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_ACCOUNT_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


def start_azurite(root: Path, log: Path, timeout: float = 30) -> tuple[subprocess.Popen[bytes], int]:
    """Start Azurite's queue service (installed by `npm ci` into ``root``/node_modules) in memory."""
    binary = root / "node_modules" / ".bin" / "azurite-queue"
    if not binary.exists():
        raise CertlcError(f"Azurite is not installed ({binary} missing); run `npm ci` (make does it)",
                          reason="AzuriteMissing")
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # --skipApiVersionCheck: the Python SDK speaks a newer storage API version than Azurite knows.
        proc = subprocess.Popen([str(binary), "--queueHost", "127.0.0.1", "--queuePort", str(port),
                                 "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--silent"],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CertlcError(f"Azurite exited with code {proc.returncode}; see {log}", reason="AzuriteFailed")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.2)
    _stop(proc)
    raise CertlcError(f"Azurite did not start within {timeout:.0f} s; see {log}", reason="AzuriteFailed")
