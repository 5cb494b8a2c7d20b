"""``certlc up`` / ``down`` / ``ps``: the whole local stack on loopback, with event delivery.

Parts, started in this order, each as its own process with its log in ``<root>/logs``:
Azurite (the storage queue), the Key Vault emulator (its Event Grid subscriptions deliver to
the webhook and to the queue), a Prefect server (SQLite), ``prefect deploy --all`` of the
repository's prefect.yaml (pool ``certlc-hybrid``; locally the drain runs every few seconds),
a Prefect worker, the webhook receiver and an SMTP sink. ``<root>/stack.json`` (mode 0600: it
holds the identity header) records what runs where, for ``certlc ps`` and ``certlc down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from certlc.demo import DEMO_TEMPLATES, local_config_text
from certlc.errors import CertlcError
from certlc.files import atomic_write, ensure_private_dir
from certlc.localca.select import LocalCaPlan, plan_local_ca
from certlc.stack import (
    _signal_group,
    azurite_connection_string,
    deploy,
    free_port,
    local_prefect_yaml,
    prefect_command,
    process_start_time,
    repository_root,
    start_azurite,
    start_emulator,
    start_prefect_server,
    start_smtp_sink,
    start_webhook,
    start_worker,
    stop_process,
)

__all__ = ["POOL", "Part", "StackInfo", "add_part", "down", "ps", "read_stack", "up", "write_stack_config"]

POOL = "certlc-hybrid"
STACK_FILE = "stack.json"


@dataclass
class Part:
    name: str
    pid: int
    health: str  # http(s)://... answering 200, tcp://127.0.0.1:port, or file://<path> written lately
    log: str
    started: str | None = None  # the process's start time (see process_start_time): pid reuse check

    @classmethod
    def of(cls, name: str, proc: subprocess.Popen[bytes], health: str, log: Path) -> Part:
        return cls(name, proc.pid, health, str(log), process_start_time(proc.pid))

    def running(self) -> bool:
        """Still this part: the pid is alive and, where /proc tells, started when this one did."""
        if not _alive(self.pid):
            return False
        return self.started is None or process_start_time(self.pid) in (None, self.started)


@dataclass
class StackInfo:
    root: str
    config: str
    api: str
    webhook_url: str  # without the key
    env: dict[str, str]  # what a client of this stack sets (includes the identity header)
    parts: list[Part] = field(default_factory=list)
    rollout_url: str = ""  # where agents POST their rollout reports
    rollout_key_file: str = ""  # the agents' key for it (mode 0600)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackInfo:
        data = json.loads(text)
        return cls(**{**data, "parts": [Part(**p) for p in data["parts"]]})


def read_stack(root: Path) -> StackInfo | None:
    path = root / STACK_FILE
    if not path.exists():
        return None
    return StackInfo.from_json(path.read_text())


def write_stack_config(root: Path, *, vault_port: int, identity_port: int, webhook_port: int,
                       queue_connection_string: str, shared_key: str, lease: int = 60,
                       ca: LocalCaPlan | None = None, rollout_key: str | None = None,
                       smtp_port: int | None = None) -> Path:
    """The local stack's certlc.toml: vault 'demo' on the emulator, the dev CA, the webhook with
    its key, the Azurite queue, and the emulator's two Event Grid subscriptions."""
    conn = json.dumps(queue_connection_string)
    hook = f"http://127.0.0.1:{webhook_port}/api/events?key={shared_key}"
    rollout_line = f"rollout_key = {json.dumps(rollout_key)}" if rollout_key else ""
    # The stack's SMTP sink keeps every owner notification in <root>/mail (a Maildir).
    smtp_section = (f'[notifications.smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n'
                    f'sender = "certlc@certlc.localhost"\n') if smtp_port else ""
    sections = f"""
[webhook]
host = "127.0.0.1"
port = {webhook_port}
shared_key = {json.dumps(shared_key)}
{rollout_line}

{smtp_section}
[queue]
connection_string = {conn}
visibility_timeout_seconds = 300
max_dequeues = 5
"""
    emulator_tail = f"""event_scan_seconds = 2

[[emulator.subscriptions]]
name = "certlc-webhook"
destination = "webhook"
event_schema = "eventgrid"
endpoint = "{hook}"
# Event Grid's retry schedule, 20 times faster: a demo should not wait 10 minutes.
retry_time_scale = 0.05
dead_letter_delay_seconds = 0

# The same webhook in CloudEvents 1.0 (its OPTIONS handshake); copies of an event reach the
# receiver twice and start one run.
[[emulator.subscriptions]]
name = "certlc-webhook-cloudevents"
destination = "webhook"
event_schema = "cloudevents"
endpoint = "{hook}"
event_types = ["Microsoft.KeyVault.CertificateNearExpiry", "Microsoft.KeyVault.CertificateExpired"]
retry_time_scale = 0.05
dead_letter_delay_seconds = 0

[[emulator.subscriptions]]
name = "certlc-queue"
destination = "storage_queue"
queue_connection_string = {conn}
queue_name = "certlc"
"""
    extra = {"ca_profile": ca.profile, "ca_profiles": ca.profile_toml} if ca is not None else {}
    text = local_config_text(root, vault_port, identity_port, lease=lease, sections=sections,
                             emulator_tail=emulator_tail, **extra,
                             written_by="`certlc up` (it holds the webhook key: mode 0600)")
    path = root / "certlc.toml"
    atomic_write(path, text)
    return path


def up(root: Path, *, progress: Callable[[str], None] = print, detach: bool = False,
       drain_interval_seconds: int = 10, prefect_api: str | None = None,
       ca: str = "devca") -> tuple[StackInfo, list[subprocess.Popen[bytes]]]:
    """Start every part, renewing through the local CA ``ca`` (see certlc.localca.select);
    returns the stack description and the processes (stop them with :func:`stop_all`). On any
    failure, what was started is stopped again."""
    root = ensure_private_dir(root.resolve())
    existing = read_stack(root)
    if existing is not None and any(p.running() for p in existing.parts):
        raise CertlcError(f"a local stack is already running from {root}; `certlc down` stops it",
                          reason="StackRunning")
    logs = root / "logs"
    procs: list[subprocess.Popen[bytes]] = []
    parts: list[Part] = []
    try:
        progress("starting Azurite (storage queue) ...")
        azurite, queue_port = start_azurite(repository_root(), logs / "azurite.log", detach=detach)
        procs.append(azurite)
        parts.append(Part.of("azurite", azurite, f"tcp://127.0.0.1:{queue_port}", logs / "azurite.log"))
        _record(root, parts)
        webhook_port = free_port()
        smtp_port = free_port()
        plan = plan_local_ca(ca, root, DEMO_TEMPLATES)
        # The agents' key for POST /api/rollout, in a file an agent's settings can point at.
        rollout_key = secrets.token_urlsafe(24)
        rollout_key_file = root / "rollout.key"
        atomic_write(rollout_key_file, rollout_key + "\n")
        config = write_stack_config(root, vault_port=free_port(), identity_port=free_port(),
                                    webhook_port=webhook_port,
                                    queue_connection_string=azurite_connection_string(queue_port),
                                    shared_key=secrets.token_urlsafe(24), ca=plan, rollout_key=rollout_key,
                                    smtp_port=smtp_port)
        if plan.kind != "devca":
            progress(f"starting the CA ({plan.kind}) ...")
            for started in plan.start(config, logs):
                procs.append(started.proc)
                parts.append(Part.of(started.name, started.proc, started.health, started.log))
            _record(root, parts)
        progress("starting the Key Vault emulator with Event Grid delivery ...")
        emu, endpoints = start_emulator(config, root / "emulator", logs / "emulator.log", detach=detach)
        procs.append(emu)
        identity = endpoints["identity_endpoint"]
        vault_url = next(iter(endpoints["vault_urls"].values()))
        parts.append(Part.of("emulator", emu, "tcp://127.0.0.1:" + vault_url.rsplit(":", 1)[1], logs / "emulator.log"))
        _record(root, parts)
        env = {**plan.env, "IDENTITY_ENDPOINT": identity, "IDENTITY_HEADER": endpoints["identity_header"],
               "CERTLC_CONFIG": str(config), "PREFECT_HOME": str(root / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(root / "results")}
        if prefect_api:
            api = prefect_api
            progress(f"using the Prefect server at {api}")
        else:
            progress("starting the Prefect server (SQLite) ...")
            server, api = start_prefect_server(root / "prefect", logs / "prefect-server.log", detach=detach)
            procs.append(server)
            parts.append(Part.of("prefect-server", server, f"{api}/health", logs / "prefect-server.log"))
            _record(root, parts)
        env["PREFECT_API_URL"] = api
        progress(f"deploying prefect.yaml (pool {POOL}) ...")
        _ensure_pool(env, logs / "deploy.log")
        deploy(local_prefect_yaml(root / "prefect.yaml", working_directory=repository_root(),
                                  drain_interval_seconds=drain_interval_seconds), env, logs / "deploy.log")
        progress("starting the Prefect worker ...")
        worker, worker_port = start_worker(POOL, env, logs / "worker.log", detach=detach)
        procs.append(worker)
        parts.append(Part.of("worker", worker, f"http://127.0.0.1:{worker_port}/health", logs / "worker.log"))
        _record(root, parts)
        progress("starting the webhook receiver ...")
        hook = start_webhook(config, env, webhook_port, logs / "webhook.log", detach=detach)
        procs.append(hook)
        parts.append(Part.of("webhook", hook, f"http://127.0.0.1:{webhook_port}/healthz", logs / "webhook.log"))
        _record(root, parts)
        progress("starting the SMTP sink ...")
        smtp = start_smtp_sink(root / "mail", smtp_port, logs / "smtp.log", detach=detach)
        procs.append(smtp)
        parts.append(Part.of("smtp", smtp, f"tcp://127.0.0.1:{smtp_port}", logs / "smtp.log"))
    except BaseException:
        stop_all(procs)
        (root / STACK_FILE).unlink(missing_ok=True)
        raise
    info = StackInfo(root=str(root), config=str(config), api=api,
                     webhook_url=f"http://127.0.0.1:{webhook_port}/api/events", env=env, parts=parts,
                     rollout_url=f"http://127.0.0.1:{webhook_port}/api/rollout",
                     rollout_key_file=str(rollout_key_file))
    atomic_write(root / STACK_FILE, info.to_json())
    return info, procs


def add_part(root: Path, info: StackInfo, part: Part) -> None:
    """Record a part started after `up` (the demo's agent), so `certlc down` stops it too."""
    info.parts.append(part)
    atomic_write(root / STACK_FILE, info.to_json())


def _record(root: Path, parts: list[Part]) -> None:
    """What runs so far, so `certlc down` can stop it even if `certlc up` dies half-way."""
    partial = StackInfo(root=str(root), config="", api="", webhook_url="", env={}, parts=list(parts))
    atomic_write(root / STACK_FILE, partial.to_json())


def _ensure_pool(env: dict[str, str], log: Path) -> None:
    # `prefect deploy` needs the pool to exist; creating it twice is harmless (--overwrite).
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.run([*prefect_command(), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                       stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, timeout=120, check=False)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        stop_process(proc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is not running; reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _healthy(part: Part) -> bool:
    if part.health.startswith("file://"):  # a part without a port (the agent): its state file is fresh
        try:
            return time.time() - Path(part.health[7:]).stat().st_mtime < 120
        except OSError:
            return False
    if part.health.startswith("tcp://"):
        import socket

        host, _, port = part.health[6:].rpartition(":")
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((host.strip("[]"), int(port))) == 0
    try:
        return httpx.get(part.health, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def ps(root: Path) -> list[dict[str, Any]]:
    """Each part of the stack started from ``root``: pid, running, healthy, log."""
    info = read_stack(root.resolve())
    if info is None:
        return []
    rows = []
    for part in info.parts:
        alive = part.running()
        rows.append({"name": part.name, "pid": part.pid, "running": alive, "healthy": alive and _healthy(part),
                     "health": part.health, "log": part.log})
    return rows


def down(root: Path, timeout: float = 20) -> list[str]:
    """Stop every part started from ``root`` (SIGTERM, then SIGKILL); returns what was stopped."""
    root = root.resolve()
    info = read_stack(root)
    if info is None:
        return []
    stopped = []
    for part in reversed(info.parts):
        if not part.running():  # gone, or its pid now belongs to another process
            continue
        _signal_group(part.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while part.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if part.running():
            _signal_group(part.pid, signal.SIGKILL)
        stopped.append(part.name)
    (root / STACK_FILE).unlink(missing_ok=True)
    return stopped
